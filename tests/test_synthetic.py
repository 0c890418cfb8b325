"""Tests for mitoseg.synthetic: determinism, label invariants and a learnable signal."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mitoseg.synthetic import ellipsoid_mask, make_volume, membrane_profile, smooth_noise

FULL = np.ones((3, 3, 3), dtype=bool)
SIX = ndimage.generate_binary_structure(3, 1)


@pytest.fixture(scope="module")
def iso() -> tuple[np.ndarray, np.ndarray]:
    return make_volume(seed=0)


@pytest.fixture(scope="module")
def aniso() -> tuple[np.ndarray, np.ndarray]:
    return make_volume((32, 160, 160), seed=1, voxel_size_nm=(30.0, 8.0, 8.0))


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
    [{"shape": (8, 8)}, {"voxel_size_nm": (0.0, 5.0, 5.0)}, {"n_objects": -1}, {"noise": -0.1}],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        make_volume(**kwargs)
