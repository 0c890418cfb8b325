"""mitoseg.train.augment: shapes, joint consistency, reachable orientations, determinism."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
from scipy import ndimage

from mitoseg.train.augment import (
    Augmenter,
    adjust_intensity,
    cut_blur,
    elastic_coordinates,
    line_kernel,
    motion_blur,
    shift_sections,
    upsample,
)

GEOMETRY_ONLY = {"elastic_prob": 0.0, "intensity_prob": 0.0}
NOTHING_ELSE = {"flip": False, "transpose": False, "rotate90": False, **GEOMETRY_ONLY}


def blobs(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """uint32 instance labels: connected components of thresholded smooth noise."""
    noise = np.random.default_rng(seed).standard_normal(shape)
    smooth = ndimage.gaussian_filter(noise, 2.0)
    return ndimage.label(smooth > 0.5 * smooth.std())[0].astype(np.uint32)


def signed_permutations(axes_allowed_to_move: tuple[int, ...]) -> list:
    """Brute force: all transposes among the given axes times all flips of z, y, x."""
    out = []
    for perm in itertools.permutations(axes_allowed_to_move):
        full = list(range(3))
        for src, dst in zip(axes_allowed_to_move, perm, strict=True):
            full[src] = dst
        for flips in itertools.product([False, True], repeat=3):
            out.append((tuple(full), tuple(a for a in range(3) if flips[a])))
    return out


def orient(array: np.ndarray, perm: tuple[int, ...], flips: tuple[int, ...]) -> np.ndarray:
    array = np.transpose(array, perm)
    return np.flip(array, flips) if flips else array


def reachable(aug: Augmenter, array: np.ndarray, draws: int) -> set[bytes]:
    rng = np.random.default_rng(0)
    labels = np.zeros(array.shape, dtype=np.uint8)
    return {aug(array, labels, rng)[0].tobytes() for _ in range(draws)}


def test_all_48_orientations_of_a_cube_are_reached_and_nothing_else():
    cube = np.arange(64, dtype=np.float32).reshape(4, 4, 4) / 64  # no symmetry
    got = reachable(Augmenter(**GEOMETRY_ONLY), cube, 600)
    expected = {orient(cube, p, f).tobytes() for p, f in signed_permutations((0, 1, 2))}
    assert len(expected) == 48
    assert got == expected


def test_anisotropic_reaches_the_8_yx_orientations_times_the_z_flip_only():
    patch = np.arange(48, dtype=np.float32).reshape(3, 4, 4) / 48
    got = reachable(Augmenter(isotropic=False, **GEOMETRY_ONLY), patch, 300)
    expected = {orient(patch, p, f).tobytes() for p, f in signed_permutations((1, 2))}
    assert len(expected) == 16
    assert got == expected
    in_plane = {orient(patch, p, f).tobytes() for p, f in signed_permutations((1, 2)) if 0 not in f}
    assert len(in_plane) == 8 and in_plane <= got


def test_an_isotropic_non_cube_is_only_transposed_among_equal_axes():
    patch = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) / 18
    got = reachable(Augmenter(**GEOMETRY_ONLY), patch, 300)
    assert got == {orient(patch, p, f).tobytes() for p, f in signed_permutations((1, 2))}


def test_rotations_alone_give_the_24_proper_rotations_of_a_cube():
    cube = np.arange(27, dtype=np.float32).reshape(3, 3, 3) / 27
    got = reachable(Augmenter(flip=False, transpose=False, **GEOMETRY_ONLY), cube, 1000)
    parity = {(0, 1, 2): 1, (1, 2, 0): 1, (2, 0, 1): 1, (0, 2, 1): -1, (2, 1, 0): -1, (1, 0, 2): -1}
    proper = {
        orient(cube, p, f).tobytes()
        for p, f in signed_permutations((0, 1, 2))
        if parity[p] * (-1) ** len(f) == 1
    }
    assert len(proper) == 24 and got == proper


@pytest.mark.parametrize(
    ("shape", "isotropic"),
    [((16, 16, 16), True), ((16, 32, 32), True), ((8, 16, 24), True), ((16, 32, 32), False)],
)
def test_shapes_dtypes_ranges_and_copies(shape, isotropic):
    rng = np.random.default_rng(1)
    aug = Augmenter(isotropic=isotropic, elastic_prob=0.5, intensity_prob=0.5)
    raw = rng.random(shape, dtype=np.float32)
    labels = blobs(shape)
    for _ in range(12):
        raw_out, labels_out = aug(raw, labels, rng)
        assert raw_out.shape == shape and labels_out.shape == shape
        assert raw_out.dtype == np.float32 and labels_out.dtype == np.uint32
        assert raw_out.flags.c_contiguous and labels_out.flags.c_contiguous
        assert 0.0 <= raw_out.min() and raw_out.max() <= 1.0
        assert not np.shares_memory(raw_out, raw) and not np.shares_memory(labels_out, labels)
        assert set(np.unique(labels_out)) <= set(np.unique(labels))


@pytest.mark.parametrize("elastic_prob", [0.0, 1.0])
def test_anisotropic_never_mixes_z_slices(elastic_prob):
    shape = (16, 32, 32)
    raw = np.broadcast_to(np.linspace(0.1, 0.9, 16, dtype=np.float32)[:, None, None], shape)
    aug = Augmenter(isotropic=False, elastic_prob=elastic_prob, intensity_prob=0.0)
    rng = np.random.default_rng(2)
    for _ in range(10):
        out, _ = aug(raw, np.zeros(shape, dtype=np.int32), rng)
        per_slice = out[:, 0, 0]
        np.testing.assert_allclose(out, np.broadcast_to(per_slice[:, None, None], shape), atol=1e-6)
        assert np.allclose(per_slice, raw[:, 0, 0]) or np.allclose(per_slice, raw[::-1, 0, 0])


def test_same_seed_same_output_and_different_seed_differs():
    shape = (24, 24, 24)
    raw = np.random.default_rng(3).random(shape, dtype=np.float32)
    labels = blobs(shape)
    aug = Augmenter(elastic_prob=1.0, intensity_prob=1.0)
    a = aug(raw, labels, np.random.default_rng(42))
    b = aug(raw, labels, np.random.default_rng(42))
    c = aug(raw, labels, np.random.default_rng(43))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("isotropic", [True, False])
def test_orientation_is_applied_identically_to_raw_and_labels(isotropic):
    shape = (16, 32, 32)
    labels = blobs(shape, seed=4)
    raw = (labels > 0).astype(np.float32)
    aug, rng = Augmenter(isotropic=isotropic, **GEOMETRY_ONLY), np.random.default_rng(5)
    for _ in range(20):
        raw_out, labels_out = aug(raw, labels, rng)
        np.testing.assert_array_equal(raw_out, (labels_out > 0).astype(np.float32))
        assert np.array_equal(np.unique(labels_out), np.unique(labels))
        assert np.array_equal(
            np.sort(np.bincount(labels_out.ravel())), np.sort(np.bincount(labels.ravel()))
        )


@pytest.mark.parametrize("isotropic", [True, False])
def test_elastic_deformation_is_applied_identically_to_raw_and_labels(isotropic):
    shape = (32, 32, 32)
    labels = blobs(shape, seed=6)
    raw = (labels > 0).astype(np.float32)
    aug = Augmenter(isotropic=isotropic, elastic_prob=1.0, intensity_prob=0.0)
    rng = np.random.default_rng(7)
    for _ in range(5):
        raw_out, labels_out = aug(raw, labels, rng)
        assert set(np.unique(labels_out)) <= set(np.unique(labels))
        assert np.mean((raw_out > 0.5) == (labels_out > 0)) > 0.95
        assert np.mean((raw_out > 0.01) & (raw_out < 0.99)) > 0.01  # it did interpolate
        assert not any(
            np.array_equal(raw_out, orient(raw, p, f)) for p, f in signed_permutations((0, 1, 2))
        )


@pytest.mark.parametrize("planar", [True, False])
def test_elastic_displacements_are_bounded_smooth_and_planar_when_asked(planar):
    shape = (32, 32, 32)
    coords = elastic_coordinates(shape, 6.0, 8.0, planar, np.random.default_rng(8))
    disp = coords - np.indices(shape, dtype=np.float32)
    assert 2.0 < np.abs(disp).max() < 9.0  # cubic splines overshoot the control points a little
    jacobian = np.stack([np.stack(np.gradient(c), axis=-1) for c in coords], axis=-2)
    assert np.mean(np.linalg.det(jacobian) <= 0) < 0.01  # smooth: hardly any folding
    if planar:
        assert not disp[0].any() and np.array_equal(
            disp[1:], np.broadcast_to(disp[1:, :1], disp[1:].shape)
        )


def test_upsample_equals_ndimage_zoom():
    coarse = np.random.default_rng(9).standard_normal((3, 5, 9))
    shape = (16, 32, 64)
    expected = ndimage.zoom(coarse, np.divide(shape, coarse.shape), order=3)
    np.testing.assert_allclose(upsample(coarse, shape), expected, atol=1e-5)


def test_intensity_changes_raw_only_and_monotonically():
    shape = (16, 16, 16)
    raw = np.random.default_rng(10).random(shape, dtype=np.float32)
    labels = blobs(shape)
    aug = Augmenter(
        flip=False, transpose=False, rotate90=False, elastic_prob=0.0, intensity_prob=1.0
    )
    raw_out, labels_out = aug(raw, labels, np.random.default_rng(11))
    np.testing.assert_array_equal(labels_out, labels)
    assert not np.allclose(raw_out, raw) and 0.0 <= raw_out.min() and raw_out.max() <= 1.0
    assert np.all(np.diff(raw_out.ravel()[np.argsort(raw.ravel())]) >= 0)


def test_adjust_intensity_with_zero_strength_is_the_identity():
    raw = np.random.default_rng(12).random((8, 8, 8), dtype=np.float32)
    out = adjust_intensity(raw, np.random.default_rng(0), 0.0, 0.0, 0.0)
    np.testing.assert_allclose(out, raw, atol=1e-6)
    assert out is not raw


@pytest.mark.parametrize(
    ("raw_shape", "labels_shape", "dtype"),
    [
        ((8, 8, 8), (8, 8, 9), np.uint32),
        ((8, 8), (8, 8), np.uint32),
        ((8, 8, 8), (8, 8, 8), np.float32),
    ],
)
def test_invalid_inputs_raise(raw_shape, labels_shape, dtype):
    with pytest.raises(ValueError):
        Augmenter()(
            np.zeros(raw_shape, np.float32), np.zeros(labels_shape, dtype), np.random.default_rng()
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"elastic_prob": 1.5},
        {"elastic_sigma": 0.0},
        {"contrast": 1.0},
        {"missing_section_prob": -0.1},
        {"misalignment_prob": 2.0},
        {"motion_blur_prob": 1.1},
        {"missing_sections": 0},
        {"misalignment_max_shift": 0},
        {"motion_blur_sections": 0},
        {"motion_blur_size": 0},
    ],
)
def test_invalid_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        Augmenter(**kwargs)


# --------------------------------------------------------------------------- section artefacts

SECTION_OPTIONS = {
    "missing_section_prob": 1.0,
    "misalignment_prob": 1.0,
    "motion_blur_prob": 1.0,
    "missing_sections": 3,
    "misalignment_max_shift": 5,
    "motion_blur_sections": 3,
    "motion_blur_size": 7,
}


def patch(shape=(8, 24, 24), seed=20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(shape, dtype=np.float32), blobs(shape, seed)


def old_pipeline(aug: Augmenter, raw, labels, rng):
    """The augmentation as it was before the section artefacts, built from its pieces."""
    orientation = aug.orientation(raw.shape, rng)
    raw_v, labels_v = orientation.apply(raw), orientation.apply(labels)
    if rng.random() < aug.elastic_prob:
        coords = elastic_coordinates(
            raw_v.shape, aug.elastic_alpha, aug.elastic_sigma, not aug.isotropic, rng
        )
        raw_v = ndimage.map_coordinates(raw_v, coords, output=np.float32, order=1, mode="reflect")
        labels_v = ndimage.map_coordinates(
            labels_v, coords, output=labels.dtype, order=0, mode="reflect"
        )
    if rng.random() < aug.intensity_prob:
        raw_v = adjust_intensity(raw_v, rng, aug.brightness, aug.contrast, aug.gamma)
    return np.asarray(raw_v, np.float32), np.asarray(labels_v)


@pytest.mark.parametrize("isotropic", [True, False])
def test_disabled_section_artefacts_give_the_old_output_and_random_stream(isotropic):
    raw, labels = patch((12, 12, 12))
    sizes = {k: v for k, v in SECTION_OPTIONS.items() if not k.endswith("_prob")}
    aug = Augmenter(isotropic=isotropic, elastic_prob=0.5, intensity_prob=0.5, **sizes)
    rng_new, rng_old = np.random.default_rng(30), np.random.default_rng(30)
    for _ in range(8):
        got, expected = aug(raw, labels, rng_new), old_pipeline(aug, raw, labels, rng_old)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    assert rng_new.random() == rng_old.random()


def test_defaults_reproduce_outputs_recorded_before_the_section_artefacts():
    # Recorded with the code before missing sections, misalignment and motion blur existed.
    r = np.random.default_rng(0)
    raw = r.random((6, 16, 16), dtype=np.float32)
    labels = r.integers(0, 5, (6, 16, 16)).astype(np.uint32)
    rng = np.random.default_rng(123)
    aug = Augmenter(isotropic=False, elastic_prob=0.0, intensity_prob=1.0)
    sums = [682.416589513974, 672.6986817468132, 797.0678122825921, 923.2115761078894]
    labels_sha = ["1affe8421a2cec7d", "1f50a8e5b39997a2", "15d7d7e540475f9a", "aa95eccebb6076a7"]
    next_draw = [0.8898926931111859, 0.5181650368527142, 0.625534005735464, 0.527042084030297]
    for expected in zip(sums, labels_sha, next_draw, strict=True):
        raw_out, labels_out = aug(raw, labels, rng)
        assert raw_out.astype(np.float64).sum() == pytest.approx(expected[0], rel=1e-6)
        assert hashlib.sha256(labels_out.tobytes()).hexdigest()[:16] == expected[1]
        assert rng.random() == expected[2]  # the stream continues where it used to


def test_missing_sections_replace_a_few_raw_slices_by_their_mean_and_keep_labels():
    raw, labels = patch()
    aug = Augmenter(missing_section_prob=1.0, missing_sections=3, **NOTHING_ELSE)
    rng, seen = np.random.default_rng(31), set()
    for _ in range(30):
        raw_out, labels_out = aug(raw, labels, rng)
        np.testing.assert_array_equal(labels_out, labels)
        changed = [z for z in range(raw.shape[0]) if not np.array_equal(raw_out[z], raw[z])]
        assert 1 <= len(changed) <= 3
        seen.add(len(changed))
        for z in changed:
            assert np.all(raw_out[z] == raw_out[z, 0])
            assert raw_out[z, 0] == pytest.approx(raw[z].mean(), abs=1e-6)
    assert seen == {1, 2, 3}


def test_misalignment_shifts_raw_and_labels_together_from_one_section_on():
    shape = (8, 24, 24)
    labels = blobs(shape, seed=32)
    raw = np.random.default_rng(32).random(shape, dtype=np.float32)  # no symmetries
    aug = Augmenter(misalignment_prob=1.0, misalignment_max_shift=4, **NOTHING_ELSE)
    rng, shifts = np.random.default_rng(33), set()
    for _ in range(20):
        raw_out, labels_out = aug(raw, labels, rng)
        changed = [z for z in range(8) if not np.array_equal(raw_out[z], raw[z])]
        start = changed[0]
        assert 1 <= start and changed == list(range(start, 8))
        # Brute force: the one in-plane offset that moves the interior of every changed slice.
        found = {
            (dy, dx)
            for dy, dx in itertools.product(range(-4, 5), repeat=2)
            if np.array_equal(
                raw_out[start:, 4:-4, 4:-4], raw[start:, 4 - dy : 20 - dy, 4 - dx : 20 - dx]
            )
        }
        assert len(found) == 1 and found != {(0, 0)}
        shifts |= found
        shift = found.pop()
        np.testing.assert_array_equal(raw_out, shift_sections(raw, start, shift))
        np.testing.assert_array_equal(labels_out, shift_sections(labels, start, shift))
        assert labels_out.dtype == labels.dtype and raw_out.dtype == np.float32
    assert len(shifts) > 5


@pytest.mark.parametrize("shift", [(3, -2), (-5, 5), (0, 1), (6, 0)])
def test_shift_sections_fills_the_revealed_strip_by_mirroring(shift):
    array = np.arange(4 * 7 * 9).reshape(4, 7, 9)
    got = shift_sections(array, 2, shift)
    m = 6
    padded = np.pad(array, ((0, 0), (m, m), (m, m)), mode="symmetric")
    dy, dx = shift
    expected = padded[:, m - dy : m - dy + 7, m - dx : m - dx + 9]
    np.testing.assert_array_equal(got[:2], array[:2])
    np.testing.assert_array_equal(got[2:], expected[2:])


def test_motion_blur_changes_only_a_few_raw_slices_and_keeps_labels():
    raw, labels = patch((8, 32, 32), seed=34)
    aug = Augmenter(
        motion_blur_prob=1.0, motion_blur_sections=2, motion_blur_size=7, **NOTHING_ELSE
    )
    rng = np.random.default_rng(35)
    for _ in range(10):
        raw_out, labels_out = aug(raw, labels, rng)
        np.testing.assert_array_equal(labels_out, labels)
        changed = [z for z in range(8) if not np.array_equal(raw_out[z], raw[z])]
        assert 1 <= len(changed) <= 2
        for z in changed:  # blurred white noise: smoother, same mean
            assert raw_out[z].std() < 0.6 * raw[z].std()
            assert raw_out[z].mean() == pytest.approx(raw[z].mean(), abs=0.02)
        assert 0.0 <= raw_out.min() and raw_out.max() <= 1.0


@pytest.mark.parametrize("angle", [0.0, np.pi / 2, 0.3, 2.0])
def test_motion_blur_smears_along_its_direction_only(angle):
    dot = np.zeros((1, 31, 31), dtype=np.float32)
    dot[0, 15, 15] = 1.0
    spread = motion_blur(dot, [0], [angle], 9)[0]
    ys, xs = np.nonzero(spread)
    assert spread.sum() == pytest.approx(1.0, abs=1e-6)
    along = (ys - 15) * np.sin(angle) + (xs - 15) * np.cos(angle)
    across = -(ys - 15) * np.cos(angle) + (xs - 15) * np.sin(angle)
    assert np.abs(along).max() > 3.0 and np.abs(across).max() <= 0.75


def test_line_kernel_is_a_box_along_an_axis_and_normalised():
    np.testing.assert_allclose(line_kernel(5, 0.0)[2], np.full(5, 0.2))
    np.testing.assert_allclose(line_kernel(5, np.pi / 2)[:, 2], np.full(5, 0.2))
    np.testing.assert_allclose(line_kernel(4, 0.0)[2], [0.125, 0.25, 0.25, 0.25, 0.125])
    for angle in np.linspace(0.0, np.pi, 7):
        kernel = line_kernel(8, angle)
        assert kernel.shape == (9, 9) and kernel.min() >= 0
        assert kernel.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(kernel, kernel[::-1, ::-1])  # centred
    assert np.array_equal(line_kernel(1, 0.7), np.ones((1, 1)))


@pytest.mark.parametrize("isotropic", [True, False])
def test_all_options_keep_the_contract_and_are_deterministic(isotropic):
    raw, labels = patch((8, 24, 24), seed=36)
    aug = Augmenter(isotropic=isotropic, elastic_prob=1.0, intensity_prob=1.0, **SECTION_OPTIONS)
    a = aug(raw, labels, np.random.default_rng(37))
    b = aug(raw, labels, np.random.default_rng(37))
    c = aug(raw, labels, np.random.default_rng(38))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    for raw_out, labels_out in (a, c):
        assert raw_out.shape == raw.shape and labels_out.shape == labels.shape
        assert raw_out.dtype == np.float32 and labels_out.dtype == labels.dtype
        assert raw_out.flags.c_contiguous and labels_out.flags.c_contiguous
        assert 0.0 <= raw_out.min() and raw_out.max() <= 1.0
        assert set(np.unique(labels_out)) <= set(np.unique(labels))
        assert not np.shares_memory(raw_out, raw) and not np.shares_memory(labels_out, labels)


def test_section_artefacts_on_a_single_slice_patch():
    raw, labels = patch((1, 16, 16), seed=39)
    aug = Augmenter(**SECTION_OPTIONS, **NOTHING_ELSE)
    raw_out, labels_out = aug(raw, labels, np.random.default_rng(40))
    np.testing.assert_array_equal(labels_out, labels)  # no misalignment with one slice
    assert raw_out.shape == raw.shape


# --------------------------------------------------------------------------- cut-blur


def test_cut_blur_lowers_resolution_inside_the_box_only():
    raw = np.random.default_rng(41).random((16, 32, 32), dtype=np.float32)
    box = (slice(4, 12), slice(8, 24), slice(0, 20))
    out = cut_blur(raw, box, 4, planar=False)
    inside = np.zeros(raw.shape, bool)
    inside[box] = True
    np.testing.assert_array_equal(out[~inside], raw[~inside])
    assert out[box].std() < 0.5 * raw[box].std()  # white noise loses most of its variance
    assert out[box].mean() == pytest.approx(raw[box].mean(), abs=0.02)
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0


def test_planar_cut_blur_never_mixes_z_slices():
    raw = np.zeros((6, 16, 16), np.float32)
    raw[3] = 1.0
    out = cut_blur(raw, (slice(0, 6), slice(0, 16), slice(0, 16)), 2, planar=True)
    np.testing.assert_allclose(out[3], 1.0)
    np.testing.assert_array_equal(out[[0, 1, 2, 4, 5]], 0.0)
    smeared = cut_blur(raw, (slice(0, 6), slice(0, 16), slice(0, 16)), 2, planar=False)
    assert smeared[2].max() > 0 or smeared[4].max() > 0


def test_cut_blur_in_the_augmenter_keeps_labels_and_is_deterministic():
    raw, labels = patch((16, 24, 24), seed=42)
    aug = Augmenter(cutblur_prob=1.0, **NOTHING_ELSE)
    a = aug(raw, labels, np.random.default_rng(43))
    b = aug(raw, labels, np.random.default_rng(43))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], labels)
    changed = a[0] != raw
    assert 0 < changed.mean() < 1  # a box, not the whole patch
    zs, ys, xs = np.nonzero(changed)
    box = np.zeros(raw.shape, bool)
    box[zs.min() : zs.max() + 1, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    assert changed.sum() > 0.5 * box.sum()  # one contiguous box


@pytest.mark.parametrize(
    "kwargs", [{"cutblur_prob": 1.5}, {"cutblur_extent": (0.0, 0.5)}, {"cutblur_max_factor": 1}]
)
def test_invalid_cut_blur_parameters_raise(kwargs):
    with pytest.raises(ValueError, match="cutblur"):
        Augmenter(**kwargs)
