"""Instance decoders: identical to the whole-volume scikit-image oracles, round trips, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed as skimage_watershed

from mitoseg.baselines import decoders as ref
from mitoseg.datasets.synthetic import make_volume
from mitoseg.decode import affinity, instances
from mitoseg.decode import watershed as ws
from mitoseg.train.targets import affinities, instance_contour

OFFSETS = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


# --------------------------------------------------------------------------- fixtures


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    return (field - field.min()) / (field.max() - field.min())


def _cells(shape: tuple[int, int, int], size=(10, 12, 12), gap: int = 2) -> np.ndarray:
    """Boxes of ``size`` separated by ``gap`` background voxels: many separate mask components."""
    z, y, x = ((np.arange(n) % (s + gap)) < s for n, s in zip(shape, size, strict=True))
    return z[:, None, None] & y[None, :, None] & x[None, None, :]


def _necks(shape: tuple[int, int, int]) -> np.ndarray:
    """Two balls joined by a one-voxel-thick neck, and two boxes touching face to face."""
    z, y, x = np.indices(shape)
    balls = ((z - 6) ** 2 + (y - 8) ** 2 + (x - 8) ** 2 <= 16) | (
        (z - 6) ** 2 + (y - 8) ** 2 + (x - 20) ** 2 <= 16
    )
    neck = (z == 6) & (y == 8) & (x >= 8) & (x <= 20)
    boxes = (z >= 12) & (z < 20) & (y >= 30) & (y < 40) & (x >= 4) & (x < 24)
    return balls | neck | boxes


def _noisy_field(shape, seed: int, levels: int) -> np.ndarray:
    """float64 (Z, Y, X) in [0, 1]: smoothed noise on separated cells and on necks; quantised to
    ``levels`` steps when levels > 0, so that equal heights (ties) are common."""
    rng = np.random.default_rng(seed)
    field = (0.3 + 0.7 * _smooth_noise(shape, rng, 1.5)) * _cells(shape)
    necks = _necks(shape)
    field[necks] = np.maximum(field[necks], 0.6 + 0.4 * _smooth_noise(shape, rng, 2.0)[necks])
    return np.round(field * levels) / levels if levels else field


def _as_dtype(probs: np.ndarray, dtype: str) -> np.ndarray:
    return np.rint(probs * 255).astype(np.uint8) if dtype == "uint8" else probs.astype(np.float32)


def _bc_probs(seed: int, dtype: str, shape=(24, 48, 48)) -> np.ndarray:
    levels = 10 if seed % 2 else 0
    contour = _smooth_noise(shape, np.random.default_rng(seed + 100), 1.0)
    contour = np.round(contour * levels) / levels if levels else contour
    return _as_dtype(np.stack([_noisy_field(shape, seed, levels), contour]), dtype)


def _affinity_probs(seed: int, dtype: str, offsets, contour: bool, shape=(24, 48, 48)):
    """Affinities near the noisy inside field (edge value ~ mean of its two voxels) + jitter."""
    rng = np.random.default_rng(seed)
    inside = _noisy_field(shape, seed, 0)
    channels = []
    for offset in offsets:
        partner = np.roll(inside, [-v for v in offset], axis=(0, 1, 2))
        jitter = 0.15 * rng.random(shape)
        channels.append(np.clip(0.5 * (inside + partner) + jitter - 0.075, 0, 1))
    if contour:
        channels.append(_smooth_noise(shape, rng, 1.0))
    probs = np.stack(channels)
    return _as_dtype(np.round(probs * 20) / 20 if seed % 2 else probs, dtype)


def _same_up_to_relabelling(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def _multi_instance_components(instances: np.ndarray, mask: np.ndarray, connectivity: int) -> int:
    import cc3d

    comps = cc3d.connected_components(mask, connectivity=connectivity)
    pairs = np.unique(np.stack([comps[instances > 0], instances[instances > 0]]), axis=1)
    return int((np.bincount(pairs[0]) >= 2).sum())


# --------------------------------------------------------------------------- identity with oracles


BC_SETTINGS = dict(seed_threshold=0.7, contour_threshold=0.6, mask_threshold=0.55)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bc_identical_to_whole_volume_oracle(seed: int, connectivity: int, dtype: str) -> None:
    probs = _bc_probs(seed, dtype)
    kwargs = dict(BC_SETTINGS, min_seed_size=3, min_size=10, connectivity=connectivity)
    ours = instances.bc_watershed(probs, **kwargs)
    expected = ref.bc_watershed(probs, **kwargs)
    assert ours.dtype == np.uint32
    np.testing.assert_array_equal(ours, expected)
    # the data must exercise the multi-seed path, on several components
    mask = ws._above(probs[0], BC_SETTINGS["mask_threshold"])
    assert _multi_instance_components(ours, mask, connectivity) >= 5
    assert np.array_equal(np.unique(ours), np.arange(ours.max() + 1))


def test_views_thin_volumes_and_core_function_match_oracle() -> None:
    probs = _bc_probs(3, "uint8")
    kwargs = dict(BC_SETTINGS, min_seed_size=3, min_size=10)
    view = probs.transpose(0, 1, 3, 2)  # not C-contiguous
    expected = ref.bc_watershed(np.ascontiguousarray(view), **kwargs)
    np.testing.assert_array_equal(instances.bc_watershed(view, **kwargs), expected)
    thin = probs[:, 5:6]
    np.testing.assert_array_equal(
        instances.bc_watershed(thin, **kwargs), ref.bc_watershed(thin, **kwargs)
    )
    score = probs[0].astype(np.float64) / 255  # no contour: seeds from the score alone
    core = dict(seed_threshold=0.7, mask_threshold=0.55, min_seed_size=3, min_size=10)
    ours = ws.seeded_watershed(score, connectivity=6, **core)
    np.testing.assert_array_equal(ours, ref.seeded_watershed(score, connectivity=6, **core))
    with pytest.raises(ValueError, match="contour shape"):
        ws.seeded_watershed(score, probs[1, :-1], **core)
    with pytest.raises(ValueError, match=r"\(Z, Y, X\)"):
        ws.seeded_watershed(probs, **core)


def test_first_voxels_for_any_numbering() -> None:
    where = np.array([0, 1, 5, 9, 12])
    raster = np.array([1, 1, 2, 3, 2], np.uint32)  # cc3d's order: the fast path
    np.testing.assert_array_equal(ws.first_voxels(raster, where, 3), [0, 5, 9])
    other = np.array([2, 2, 1, 3, 1], np.uint32)  # any other numbering: the sorting fallback
    np.testing.assert_array_equal(ws.first_voxels(other, where, 3), [5, 0, 9])


def test_ties_between_seeds_are_resolved_like_the_oracle() -> None:
    """Plain skimage breaks equal-height seed ties by heap layout; here that changes the result,
    and both decoders still agree because both use the C-order tie-break."""
    probs = _bc_probs(1, "uint8")
    kwargs = dict(BC_SETTINGS, min_seed_size=3, min_size=10, connectivity=6)
    plain = ref.bc_watershed(probs, tie_break=False, **kwargs)
    ordered = ref.bc_watershed(probs, **kwargs)
    assert np.count_nonzero(plain != ordered) > 0
    np.testing.assert_array_equal(instances.bc_watershed(probs, **kwargs), ordered)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("seed", [0, 1])
def test_affinity_decoders_identical_to_oracle(seed: int, dtype: str) -> None:
    offsets = (*OFFSETS, (0, -3, 0))  # a long-range channel, ignored by the inside map
    affs = _affinity_probs(seed, dtype, offsets, contour=False)
    kwargs = dict(seed_threshold=0.75, mask_threshold=0.5, min_seed_size=3, min_size=10)
    ours = instances.affinity_watershed(affs, offsets=offsets, **kwargs)
    np.testing.assert_array_equal(ours, ref.affinity_watershed(affs, offsets=offsets, **kwargs))
    assert ours.max() >= 10
    probs = _affinity_probs(seed, dtype, OFFSETS, contour=True)
    kwargs = dict(kwargs, contour_threshold=0.6, connectivity=26)
    ours = instances.ac_watershed(probs, offsets=OFFSETS, **kwargs)
    np.testing.assert_array_equal(ours, ref.ac_watershed(probs, offsets=OFFSETS, **kwargs))
    assert ours.max() >= 10


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("shape", [(9, 7, 8), (1, 6, 5), (4, 1, 1)])
def test_affinity_inside_equals_oracle_across_slabs(monkeypatch, shape, dtype) -> None:
    offsets = ((-1, 0, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1), (2, 0, 0))
    affs = _as_dtype(np.random.default_rng(5).random((len(offsets), *shape)), dtype)
    expected = ref.affinity_inside(affs, offsets)
    monkeypatch.setattr(affinity, "_SLAB_VOXELS", 7)  # slabs of one or a few z-planes
    np.testing.assert_array_equal(affinity.affinity_inside(affs, offsets), expected)
    assert affinity.affinity_inside(affs, offsets).dtype == expected.dtype


def test_affinity_inside_brute_force() -> None:
    """Mean over in-bounds nearest-neighbour edges, written out voxel by voxel."""
    rng = np.random.default_rng(2)
    affs = rng.random((3, 3, 4, 5)).astype(np.float32)
    inside = affinity.affinity_inside(affs, OFFSETS)
    for p in np.ndindex(affs.shape[1:]):
        values = []
        for c, d in enumerate(OFFSETS):
            forward = tuple(np.add(p, d))
            backward = tuple(np.subtract(p, d))
            if all(0 <= v < n for v, n in zip(forward, affs.shape[1:], strict=True)):
                values.append(float(affs[(c, *p)]))
            if all(0 <= v < n for v, n in zip(backward, affs.shape[1:], strict=True)):
                values.append(float(affs[(c, *backward)]))
        assert inside[p] == pytest.approx(np.mean(values), rel=1e-6)


def test_skimage_floods_seeds_by_their_height() -> None:
    """The exactness argument needs skimage to queue seed voxels at their own height (0.25 queued
    them at -inf for a while): the seed at height 0 must claim the voxel between both seeds."""
    out = skimage_watershed(np.array([0.5, 0.1, 0.0]), np.array([1, 0, 2]))
    np.testing.assert_array_equal(out, [1, 2, 2])


# --------------------------------------------------------------------------- round trips


def _touching_boxes(shape=(20, 36, 40)) -> np.ndarray:
    labels = np.zeros(shape, np.uint32)
    labels[2:12, 3:14, 2:12] = 1
    labels[2:12, 3:14, 12:22] = 2  # touches 1 along x
    labels[2:12, 3:14, 22:31] = 3  # touches 2 along x
    labels[12:20, 3:14, 2:12] = 4  # touches 1 along z
    labels[5:15, 20:36, 25:40] = 5  # cut by two volume borders
    return labels


def _perfect_bc(labels: np.ndarray, dtype: str) -> np.ndarray:
    probs = np.stack([labels > 0, instance_contour(labels, width=4, in_plane=False)])
    return _as_dtype(probs.astype(np.float64), dtype)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("connectivity", [6, 26])
def test_perfect_bc_round_trip(connectivity: int, dtype: str) -> None:
    for labels in (_touching_boxes(), make_volume((24, 64, 64), seed=4, touching_pairs=0)[1]):
        probs = _perfect_bc(labels, dtype)
        out = instances.bc_watershed(probs, min_seed_size=1, min_size=0, connectivity=connectivity)
        assert out.max() == labels.max()
        assert _same_up_to_relabelling(out, labels)


def test_perfect_bc_touching_pairs_are_split() -> None:
    """Curved touching objects: every object found, foreground exact. (With a flat foreground the
    flood is breadth-first, so interface voxels may go to the neighbour's nearer seed.)"""
    labels = make_volume((32, 64, 64), seed=2, touching_pairs=2)[1]
    out = instances.bc_watershed(_perfect_bc(labels, "uint8"), min_seed_size=0, min_size=0)
    assert out.max() == labels.max()
    np.testing.assert_array_equal(out > 0, labels > 0)


def test_perfect_affinities_round_trip() -> None:
    labels = _touching_boxes()
    affs = np.nan_to_num(affinities(labels, OFFSETS), nan=0.0)
    for probs in (affs, _as_dtype(affs, "uint8")):
        out = instances.affinity_watershed(probs, mask_threshold=0.1, min_seed_size=0, min_size=0)
        assert _same_up_to_relabelling(out, labels)
        scale = 255 if probs.dtype == np.uint8 else 1
        contour = instance_contour(labels, width=4).astype(probs.dtype) * scale
        ac = np.concatenate([probs, contour[None]])
        out = instances.ac_watershed(ac, mask_threshold=0.1, min_seed_size=0, min_size=0)
        assert _same_up_to_relabelling(out, labels)


def test_uint8_and_float_inputs_agree() -> None:
    probs = _bc_probs(1, "uint8")
    as_float = probs.astype(np.float64) / 255.0
    kwargs = dict(min_seed_size=3, min_size=10)
    np.testing.assert_array_equal(
        instances.bc_watershed(probs, **kwargs), instances.bc_watershed(as_float, **kwargs)
    )


# --------------------------------------------------------------------------- sizes and edge cases


def test_min_size_and_min_seed_size() -> None:
    labels = np.zeros((12, 30, 30), np.uint32)
    labels[1:8, 1:8, 1:8] = 1  # 343 voxels, own component, a one-voxel seed
    labels[1:11, 10:20, 10:20] = 2  # 1000 voxels, own component
    labels[1:11, 20:26, 10:20] = 3  # 600 voxels touching 2
    probs = _perfect_bc(labels, "uint8")
    out = instances.bc_watershed(probs, contour_threshold=0.5, min_seed_size=1, min_size=1)
    np.testing.assert_array_equal(out, labels)  # ids in C order of the seeds' first voxels
    out = instances.bc_watershed(probs, contour_threshold=0.5, min_seed_size=1, min_size=400)
    np.testing.assert_array_equal(out, np.maximum(labels, 1) - 1)  # box 1 removed
    np.testing.assert_array_equal(out, ref.bc_watershed(probs, 0.85, 0.5, 0.8, 1, 400))
    out = instances.bc_watershed(probs, contour_threshold=0.5, min_seed_size=1, min_size=700)
    assert out.max() == 1 and np.all((out > 0) == (labels == 2))  # 3 split off, then too small
    # box 3's seed (2 x 6 x 6 = 72 voxels) is too small: the component is one instance
    out = instances.bc_watershed(probs, contour_threshold=0.5, min_seed_size=100, min_size=1)
    assert out.max() == 1 and np.all((out > 0) == (labels >= 2))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_empty_input_gives_zeros(dtype) -> None:
    nm = dict(voxel_size_nm=(5, 5, 5))
    out = instances.bc_watershed(np.zeros((2, 5, 6, 7), dtype), **nm)
    assert out.dtype == np.uint32 and out.shape == (5, 6, 7) and not out.any()
    assert not instances.ac_watershed(np.zeros((4, 5, 6, 7), dtype), **nm).any()
    assert instances.bc_watershed(np.zeros((2, 0, 6, 7), dtype), **nm).shape == (0, 6, 7)


def test_wrong_channel_count_names_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, Z, Y, X\).*\(3, 4, 5, 6\)"):
        instances.bc_watershed(np.zeros((3, 4, 5, 6), np.uint8))
    with pytest.raises(ValueError, match=r"\(4, Z, Y, X\).*\(3, 4, 5, 6\)"):
        instances.ACWatershed()(np.zeros((3, 4, 5, 6), np.uint8))
    with pytest.raises(ValueError, match=r"\(2, Z, Y, X\).*\(4, 5, 6\)"):
        instances.BCWatershed()(np.zeros((4, 5, 6), np.uint8))
    with pytest.raises(ValueError, match=r"\(3, Z, Y, X\).*\(2, 4, 5, 6\)"):
        instances.AffinityWatershed()(np.zeros((2, 4, 5, 6), np.uint8))


@pytest.mark.parametrize("bad", [1.5, -0.1, np.nan])
def test_float_outside_unit_interval_raises(bad: float) -> None:
    probs = np.zeros((2, 3, 4, 5), np.float32)
    probs[1, 1, 1, 1] = bad
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        instances.bc_watershed(probs)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        instances.affinity_watershed(np.concatenate([probs, probs[:1]]))


def test_bad_dtype_and_parameters_raise() -> None:
    with pytest.raises(ValueError, match="uint8"):
        instances.bc_watershed(np.zeros((2, 3, 4, 5), np.uint16))
    with pytest.raises(ValueError, match="seed_threshold"):
        instances.bc_watershed(np.zeros((2, 3, 4, 5), np.uint8), seed_threshold=200)
    with pytest.raises(ValueError, match="connectivity"):
        instances.BCWatershed(connectivity=8)
    with pytest.raises(ValueError, match="min_size"):
        instances.AffinityWatershed(min_size=-1)
    with pytest.raises(ValueError, match="nearest-neighbour"):
        instances.AffinityWatershed(offsets=[[0, -3, 0]])


# --------------------------------------------------------------------------- config-facing classes


def test_decoder_classes_take_yaml_lists_and_match_functions() -> None:
    decoder = instances.ACWatershed(offsets=[[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -4, 0]])
    assert decoder.offsets == (*OFFSETS, (0, -4, 0)) and decoder.n_channels == 5
    assert instances.AffinityWatershed(offsets=[[-1, 0, 0]]).n_channels == 1
    assert instances.BCWatershed().n_channels == 2
    probs = _bc_probs(2, "uint8")
    bc = instances.BCWatershed(
        seed_threshold=0.7, mask_threshold=0.55, min_seed_size=3, min_size=10
    )
    expected = instances.bc_watershed(probs, 0.7, 0.6, 0.55, 3, 10, 26)
    np.testing.assert_array_equal(bc(probs), expected)
    affs = _affinity_probs(0, "uint8", OFFSETS, contour=False)
    a = instances.AffinityWatershed(seed_threshold=0.75, min_seed_size=3, min_size=10)
    np.testing.assert_array_equal(
        a(affs), instances.affinity_watershed(affs, 0.75, 0.5, 3, 10, 6, OFFSETS)
    )
    with pytest.raises(AttributeError):
        bc.min_size = 3  # frozen


@pytest.mark.parametrize("seed", [0, 2])
def test_perfect_targets_of_every_kind_give_the_instances_back(seed: int) -> None:
    """The hard cases at once (anisotropic, touching pairs, necked chains, border objects), each
    target made from the labels by its own transform and decoded by its own decoder.

    Affinities determine the instances exactly (AP-75 = 1, ARE = 0). A contour band does not say
    where inside the band two touching objects meet, so BC and AC recover every instance but may
    give a few voxels at a contact to the neighbour: AP-75 >= 0.98, ARE <= 0.005.
    """
    from mitoseg.datasets.synthetic import make_instance_volume
    from mitoseg.evaluate.instance import instance_scores
    from mitoseg.train.targets import Affinity, AffinityContour, BinaryContour

    labels = make_instance_volume((24, 192, 192), seed=seed)[1]
    loose = dict(min_seed_size=0, min_size=0)

    def decoded(target, decoder) -> dict:
        probs = np.nan_to_num(target(labels), nan=1.0)  # edges leaving the volume: "same"
        return instance_scores(labels, decoder(probs))

    a = decoded(Affinity(), lambda p: instances.affinity_watershed(p, 0.5, 0.1, **loose))
    assert a["ap75"] == pytest.approx(1.0) and a["are"] == 0.0 and a["n_pred"] == a["n_truth"]
    ac_target = AffinityContour(width=4, in_plane=True)
    ac = decoded(ac_target, lambda p: instances.ac_watershed(p, 0.5, 0.5, 0.1, **loose))
    bc = decoded(
        BinaryContour(width=4, in_plane=True),
        lambda p: instances.bc_watershed(p, 0.5, 0.5, 0.5, connectivity=6, **loose),
    )
    for scores in (ac, bc):
        assert scores["ap75"] >= 0.98 and scores["are"] <= 0.005
