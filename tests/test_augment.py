"""Tests for mitoseg.augment: shapes, joint consistency, reachable orientations, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from mitoseg.augment import Augmenter, adjust_intensity, elastic_coordinates, upsample

GEOMETRY_ONLY = {"elastic_prob": 0.0, "intensity_prob": 0.0}


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
    "kwargs", [{"elastic_prob": 1.5}, {"elastic_sigma": 0.0}, {"contrast": 1.0}]
)
def test_invalid_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        Augmenter(**kwargs)
