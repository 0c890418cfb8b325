"""Tests for mitoseg.datasets.synthetic: determinism, label invariants and a learnable signal."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from mitoseg.datasets.synthetic import (
    ellipsoid_mask,
    make_instance_volume,
    make_volume,
    membrane_profile,
    smooth_noise,
)

FULL = np.ones((3, 3, 3), dtype=bool)
SIX = ndimage.generate_binary_structure(3, 1)


@pytest.fixture(scope="module")
def iso() -> tuple[np.ndarray, np.ndarray]:
    return make_volume(seed=0)


@pytest.fixture(scope="module")
def aniso() -> tuple[np.ndarray, np.ndarray]:
    return make_volume((32, 160, 160), seed=1, voxel_size_nm=(30.0, 8.0, 8.0))


@pytest.fixture(scope="module")
def instance() -> tuple[np.ndarray, np.ndarray]:
    return make_instance_volume(seed=0)  # (32, 256, 256) at (30, 8, 8) nm


@pytest.fixture(scope="module")
def chains_only() -> tuple[np.ndarray, np.ndarray]:
    """Three necked chains and nothing else (n_objects leaves no room for other objects)."""
    return make_volume(
        (32, 192, 192),
        seed=2,
        voxel_size_nm=(30.0, 8.0, 8.0),
        n_objects=3,
        touching_pairs=0,
        necked_chains=3,
    )


def face_touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different non-zero ids with face-adjacent voxels, found with array shifts."""
    pairs: set[tuple[int, int]] = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)[:-1].ravel()
        b = np.moveaxis(labels, axis, 0)[1:].ravel()
        hit = (a > 0) & (b > 0) & (a != b)
        pairs |= {(int(min(p, q)), int(max(p, q))) for p, q in zip(a[hit], b[hit], strict=True)}
    return pairs


def test_same_seed_same_volume_and_different_seed_differs():
    raw, labels = make_volume((24, 80, 80), seed=7)
    raw2, labels2 = make_volume((24, 80, 80), seed=7)
    raw3, labels3 = make_volume((24, 80, 80), seed=8)
    np.testing.assert_array_equal(raw, raw2)
    np.testing.assert_array_equal(labels, labels2)
    assert not np.array_equal(raw, raw3)
    assert not np.array_equal(labels, labels3)


def test_global_random_state_is_neither_used_nor_changed():
    state = np.random.get_state()
    np.random.seed(123)
    a = make_volume((16, 64, 64), seed=3)
    np.random.seed(456)
    b = make_volume((16, 64, 64), seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.random.set_state(state)


@pytest.mark.parametrize("name", ["iso", "aniso"])
def test_dtypes_shapes_and_grey_levels(name, request):
    raw, labels = request.getfixturevalue(name)
    assert raw.dtype == np.uint8 and labels.dtype == np.uint32
    assert raw.shape == labels.shape
    assert 100 < raw.mean() < 200 and raw.std() > 10  # mid grey with structure and noise
    assert np.mean((raw == 0) | (raw == 255)) < 0.01  # hardly any clipping


@pytest.mark.parametrize("name", ["iso", "aniso"])
def test_ids_are_consecutive_and_each_one_26_connected_component(name, request):
    _, labels = request.getfixturevalue(name)
    ids = np.unique(labels)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, labels.max() + 1))
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        assert ndimage.label(labels[box] == i, structure=FULL)[1] == 1, f"id {i} is split"


@pytest.mark.parametrize("name", ["iso", "aniso", "other"])
def test_foreground_fraction(name, request):
    if name == "other":
        labels = make_volume((48, 96, 128), seed=3, voxel_size_nm=(10.0, 6.0, 6.0))[1]
    else:
        labels = request.getfixturevalue(name)[1]
    assert 0.03 <= np.mean(labels > 0) <= 0.25


@pytest.mark.parametrize("name", ["iso", "aniso"])
def test_touching_pairs_exist_and_no_other_objects_touch(name, request):
    _, labels = request.getfixturevalue(name)
    assert len(face_touching_pairs(labels)) == 2  # the default touching_pairs


def test_without_touching_pairs_no_two_objects_are_even_diagonal_neighbours():
    _, labels = make_volume((32, 128, 128), seed=4, voxel_size_nm=(30, 8, 8), touching_pairs=0)
    assert labels.max() > 20
    grown = ndimage.grey_dilation(labels, footprint=FULL)  # max id among the 26 neighbours
    shrunk = -ndimage.grey_dilation(-labels.astype(np.int64), footprint=FULL)
    fg = labels > 0
    assert np.all(grown[fg] == labels[fg])
    assert np.all((shrunk[fg] == labels[fg]) | (shrunk[fg] == 0))


@pytest.mark.parametrize("name", ["iso", "aniso"])
def test_some_object_is_cut_by_the_volume_border(name, request):
    _, labels = request.getfixturevalue(name)
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    assert any(face.any() for face in faces)


def test_n_objects_is_respected():
    _, labels = make_volume((48, 128, 128), seed=5, n_objects=5)
    assert labels.max() == 5
    assert len(face_touching_pairs(labels)) == 2


def test_anisotropic_voxels_give_objects_flat_in_z(iso, aniso):
    def mean_extent(labels):
        boxes = ndimage.find_objects(labels)
        return np.mean([[s.stop - s.start for s in box] for box in boxes], axis=0)

    ext_aniso, ext_iso = mean_extent(aniso[1]), mean_extent(iso[1])
    assert ext_aniso[0] < 0.5 * ext_aniso[1]
    assert 0.6 < ext_iso[0] / ext_iso[1] < 1.6


@pytest.mark.parametrize("name", ["iso", "aniso"])
def test_mitochondria_are_darker_at_the_rim_than_the_surrounding_cytoplasm(name, request):
    raw, labels = request.getfixturevalue(name)
    raw = raw.astype(float)
    fg = labels > 0
    rim = fg & ~ndimage.binary_erosion(fg, SIX)
    shell = ndimage.binary_dilation(fg, SIX, iterations=2) & ~fg
    far = ~ndimage.binary_dilation(fg, SIX, iterations=6)
    inner = ndimage.binary_erosion(fg, SIX, iterations=3)
    assert raw[rim].mean() < raw[shell].mean() - 20
    assert raw[rim].mean() < raw[inner].mean() - 5  # the double membrane
    assert raw[fg].mean() < raw[far].mean() - 20


def test_ellipsoid_mask_matches_a_brute_force_rasterisation():
    rng = np.random.default_rng(0)
    shape, vs = (20, 30, 40), np.array([12.0, 5.0, 5.0])
    rotation = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    center, axes = np.array([100.0, 20.0, 150.0]), np.array([60.0, 35.0, 25.0])  # cut at y = 0
    box, mask = ellipsoid_mask(center, axes, rotation, vs, shape)
    got = np.zeros(shape, dtype=bool)
    got[box] = mask
    d = np.stack(np.indices(shape), axis=-1) * vs - center
    expected = (((d @ rotation) / axes) ** 2).sum(axis=-1) <= 1.0
    assert expected.sum() > 100 and expected[:, 0].any()
    np.testing.assert_array_equal(got, expected)


def test_smooth_noise_has_unit_scale_and_is_smooth():
    field = smooth_noise((32, 64, 64), 40.0, (5.0, 5.0, 5.0), np.random.default_rng(0))
    assert field.dtype == np.float32 and field.shape == (32, 64, 64)
    assert abs(field.mean()) < 0.5 and 0.5 < field.std() < 1.5
    assert np.corrcoef(field[:, :, 1:].ravel(), field[:, :, :-1].ravel())[0, 1] > 0.9


def test_membranes_are_thin_sheets_in_unit_range():
    sheets = membrane_profile((32, 128, 128), (5.0, 5.0, 5.0), np.random.default_rng(0))
    assert sheets.dtype == np.float32 and 0.0 <= sheets.min() and sheets.max() <= 1.0
    assert sheets.max() > 0.7 and np.mean(sheets > 0.5) < 0.1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (8, 8)},
        {"voxel_size_nm": (0.0, 5.0, 5.0)},
        {"n_objects": -1},
        {"noise": -0.1},
        {"necked_chains": -1},
    ],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        make_volume(**kwargs)


def test_make_instance_volume_rejects_bad_shapes():
    with pytest.raises(ValueError):
        make_instance_volume((8, 8))  # type: ignore[arg-type]


def test_defaults_without_chains_give_the_volumes_recorded_before_chains_existed():
    # sha256 prefixes of the labels, recorded before ``necked_chains`` existed.
    labels = make_volume((24, 80, 80), seed=7)[1]
    assert hashlib.sha256(labels.tobytes()).hexdigest()[:16] == "71dcd4abae135d7f"
    labels = make_volume((32, 128, 128), seed=1, voxel_size_nm=(30.0, 8.0, 8.0))[1]
    assert hashlib.sha256(labels.tobytes()).hexdigest()[:16] == "4f0063e18dcebe45"


def in_plane_distance_nm(mask: np.ndarray, vs: tuple[float, float, float]) -> np.ndarray:
    """Per z-slice Euclidean distance in nm from each voxel of ``mask`` to the background."""
    return np.stack([ndimage.distance_transform_edt(m, sampling=vs[1:]) for m in mask])


def objects(labels: np.ndarray):
    """Per id: (id, its box, its mask on the box padded by one voxel, whether it is cut by the
    volume border)."""
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            cut = any(s.start == 0 or s.stop == n for s, n in zip(box, labels.shape, strict=True))
            yield i, box, np.pad(labels[box] == i, 1), cut


def is_chain(mask: np.ndarray) -> bool:
    """Whether keeping voxels more than 44 nm in-plane from the background (at (30, 8, 8) nm)
    splits ``mask``: that removes the necks (radius <= 32 nm), not the bodies (short semi-axes
    >= 59 nm)."""
    core = mask & (in_plane_distance_nm(mask, (30.0, 8.0, 8.0)) > 44.0)
    return ndimage.label(core, structure=FULL)[1] >= 2


def test_necked_chains_are_one_component_whose_necks_are_narrower_than_the_bodies(chains_only):
    _, labels = chains_only
    assert labels.max() == 3
    inner = 0
    for _, _, mask, cut in objects(labels):
        assert ndimage.label(mask, structure=FULL)[1] == 1
        if not cut:
            inner += 1
            core = mask & (in_plane_distance_nm(mask, (30.0, 8.0, 8.0)) > 44.0)
            assert 2 <= ndimage.label(core, structure=FULL)[1] <= 3  # the 2 or 3 bodies
    assert inner >= 2


def test_a_four_voxel_contour_band_does_not_sever_a_chain(chains_only, instance):
    checked = 0
    for _, labels in (chains_only, instance):
        high = ndimage.maximum_filter(labels, (1, 5, 5), mode="nearest")
        low = ndimage.minimum_filter(labels, (1, 5, 5), mode="nearest")
        band = high != low  # Chebyshev radius 2 in-plane: 2 voxels each side of every border
        for i, box, mask, cut in objects(labels):
            if not cut and is_chain(mask):
                checked += 1
                pieces = ndimage.label(mask & ~np.pad(band[box], 1), structure=FULL)[1]
                assert pieces == 1, f"id {i} severed into {pieces}"
    assert checked >= 4


def test_chains_are_deterministic_and_seed_dependent():
    kwargs = dict(voxel_size_nm=(30.0, 8.0, 8.0), necked_chains=2, n_objects=6)
    a = make_volume((16, 128, 128), seed=11, **kwargs)
    b = make_volume((16, 128, 128), seed=11, **kwargs)
    c = make_volume((16, 128, 128), seed=12, **kwargs)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_instance_volume_has_pairs_chains_and_border_objects(instance):
    raw, labels = instance
    assert raw.shape == labels.shape == (32, 256, 256)
    assert raw.dtype == np.uint8 and labels.dtype == np.uint32
    ids = np.unique(labels)
    assert np.array_equal(ids[1:], np.arange(1, labels.max() + 1))
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        assert ndimage.label(labels[box] == i, structure=FULL)[1] == 1, f"id {i} is split"
    assert len(face_touching_pairs(labels)) == 3  # 0.75 per um**3 of about 4 um**3
    assert sum(not cut and is_chain(mask) for _, _, mask, cut in objects(labels)) >= 2
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    assert sum(len(np.unique(face)) - 1 for face in faces) >= 3
    assert 0.05 <= np.mean(labels > 0) <= 0.2
    assert 100 < raw.mean() < 200


def test_instance_volume_is_deterministic_and_takes_its_arguments():
    a = make_instance_volume((16, 96, 96), seed=3)
    b = make_instance_volume((16, 96, 96), seed=3)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    c = make_instance_volume((16, 96, 96), seed=3, noise=0.0)
    np.testing.assert_array_equal(c[1], a[1])
    assert c[0].std() < a[0].std()
    assert len(face_touching_pairs(a[1])) == 1  # at least one pair in a small volume


def test_anisotropic_objects_have_their_physical_z_extent(aniso, instance):
    # Randomly oriented objects are as long in z as in y and x when measured in nm.
    for _, labels in (aniso, instance):
        extents = np.array(
            [[s.stop - s.start for s in box] for _, box, _, cut in objects(labels) if not cut]
        )
        nm = extents * np.array([30.0, 8.0, 8.0])
        assert len(nm) > 20
        assert 0.7 < nm[:, 0].mean() / nm[:, 1:].mean() < 1.4
        assert nm[:, 0].min() >= 60.0  # no object thinner than two sections
