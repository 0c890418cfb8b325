"""Intensity augmentations of the raw patch only; labels are kept (numpy and scipy only).

Contrast, brightness and gamma (:func:`adjust_intensity`); the section artefacts of serial-section
EM that touch raw only: missing sections (:func:`fill_sections`) and motion blur
(:func:`motion_blur`, a line blur on a few slices); and cut-blur (:func:`cut_blur`, after Yoo et
al., CVPR 2020): a box of the patch replaced by a low-resolution copy of itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def adjust_intensity(
    raw: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float, gamma: float
) -> np.ndarray:
    """Random contrast (about the mean), brightness and gamma.

    Args:
        raw: float32 (Z, Y, X) in [0, 1].
        rng: random generator.
        brightness: shift drawn from [-brightness, brightness].
        contrast: scale drawn from [1 - contrast, 1 + contrast], about the patch mean.
        gamma: exponent exp(u), u drawn from [-gamma, gamma].

    Returns:
        float32 (Z, Y, X) in [0, 1], a new array.
    """
    scale = 1.0 + rng.uniform(-contrast, contrast)
    shift = rng.uniform(-brightness, brightness)
    exponent = np.exp(rng.uniform(-gamma, gamma))
    mean = float(raw.mean())
    out = (raw - np.float32(mean)) * np.float32(scale) + np.float32(mean + shift)
    np.clip(out, 0.0, 1.0, out=out)
    np.power(out, np.float32(exponent), out=out)
    return out


def fill_sections(raw: np.ndarray, sections: Sequence[int]) -> np.ndarray:
    """Missing sections: each listed z-slice replaced by its own mean grey.

    A lost or blank section shows no structure; filling it with its mean (rather than
    interpolating the neighbours) keeps the patch's brightness and hides every edge, so the
    labels, which are kept, must be inferred from the sections around it.

    Args:
        raw: float32 (Z, Y, X) in [0, 1].
        sections: distinct z indices in [0, Z).

    Returns:
        float32 (Z, Y, X) in [0, 1], a new array.
    """
    if any(not 0 <= z < raw.shape[0] for z in sections):
        raise ValueError(f"sections must lie in [0, {raw.shape[0]}), got {list(sections)}")
    out = np.array(raw, dtype=np.float32, order="C", copy=True)
    for z in sections:
        out[z] = out[z].mean(dtype=np.float64)
    return out


def line_kernel(length: int, angle: float) -> np.ndarray:
    """Motion-blur kernel: a centred line segment of ``length`` voxels, normalised to sum 1.

    The segment is sampled finely and each sample goes to its nearest voxel, so an axis-aligned
    segment of odd length is a box filter of that length (even: half weights at both ends).

    Args:
        length: segment length in voxels, >= 1.
        angle: direction in the y-x plane in radians; 0 is along x, pi / 2 along y.

    Returns:
        float64 (K, K) with K = 2 * (length // 2) + 1, non-negative, summing to 1.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    half, samples = length // 2, 16 * length
    t = -length / 2.0 + (np.arange(samples) + 0.5) / 16.0
    ys = half + np.rint(t * np.sin(angle)).astype(int)
    xs = half + np.rint(t * np.cos(angle)).astype(int)
    kernel = np.zeros((2 * half + 1, 2 * half + 1))
    np.add.at(kernel, (ys, xs), 1.0 / samples)
    return kernel


def motion_blur(
    raw: np.ndarray, sections: Sequence[int], angles: Sequence[float], length: int
) -> np.ndarray:
    """Line blur of ``length`` voxels on the listed z-slices, each along its own direction.

    Args:
        raw: float32 (Z, Y, X) in [0, 1].
        sections: distinct z indices in [0, Z).
        angles: one in-plane direction per section, radians (see ``line_kernel``).
        length: kernel length in voxels.

    Returns:
        float32 (Z, Y, X) in [0, 1], a new array; other slices are unchanged.
    """
    if len(sections) != len(angles) or any(not 0 <= z < raw.shape[0] for z in sections):
        raise ValueError(f"need one angle per section in [0, {raw.shape[0]}): {sections}")
    out = np.array(raw, dtype=np.float32, order="C", copy=True)
    for z, angle in zip(sections, angles, strict=True):
        ndimage.convolve(raw[z], line_kernel(length, angle), output=out[z], mode="reflect")
    return np.clip(out, 0.0, 1.0, out=out)


def cut_blur(raw: np.ndarray, box: Sequence[slice], factor: int, planar: bool) -> np.ndarray:
    """Raw with the voxels in ``box`` replaced by a ``factor``-times lower-resolution copy.

    The box is averaged over ``factor`` voxels per axis, subsampled by ``factor`` and linearly
    interpolated back to its shape; z is left at full resolution when ``planar``.

    Args:
        raw: float32 (Z, Y, X) in [0, 1].
        box: three slices with positive extents inside ``raw``.
        factor: integer downsampling factor >= 2.
        planar: downsample in y-x only (anisotropic data).

    Returns:
        float32 (Z, Y, X) in [0, 1], a new array equal to ``raw`` outside ``box``.
    """
    region = np.asarray(raw[tuple(box)], dtype=np.float32)
    if region.ndim != 3 or region.size == 0 or factor < 2:
        raise ValueError(f"need a non-empty 3D box and factor >= 2, got {region.shape}, {factor}")
    factors = [1 if planar and axis == 0 else min(factor, n) for axis, n in enumerate(region.shape)]
    smooth = ndimage.uniform_filter(region, size=factors, mode="reflect")
    coarse = smooth[tuple(slice(f // 2, None, f) for f in factors)]
    zoom = [n / c for n, c in zip(region.shape, coarse.shape, strict=True)]
    out = np.array(raw, dtype=np.float32, order="C", copy=True)
    out[tuple(box)] = ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True)
    return np.clip(out, 0.0, 1.0, out=out)
