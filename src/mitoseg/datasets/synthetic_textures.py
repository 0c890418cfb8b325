"""Smooth random textures of the synthetic volumes (:mod:`mitoseg.datasets.synthetic`; numpy
only): Gaussian random fields and cell membranes, evaluated separably from Gaussian bumps on a
grid.

Sizes are physical (nm) and converted with ``voxel_size_nm``; all randomness comes from the
generator passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Geometry in nm.
_MEMBRANE_SIGMA_NM = 4.0
_CELL_SCALE_NM = 180.0  # control-point spacing of the noise whose zero set gives the membranes


def _rbf_basis(n: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian bumps every ``spacing`` voxels, covering 3 spacings beyond both ends.

    Returns:
        ``(basis, derivative)``: float32 (n, K) values and d/dvoxel, scaled so that random
        standard-normal coefficients give a field of about unit variance.
    """
    k = int(np.ceil((n - 1) / spacing)) + 7
    d = np.arange(n)[:, None] - (np.arange(k)[None, :] - 3) * spacing
    basis = np.exp(-0.5 * (d / spacing) ** 2)
    norm = np.sqrt((basis**2).sum(axis=1).mean())
    return (basis / norm).astype(np.float32), (-d / spacing**2 * basis / norm).astype(np.float32)


def _separable(coeffs: np.ndarray, bz: np.ndarray, by: np.ndarray, bx: np.ndarray) -> np.ndarray:
    """Evaluate sum_ijk coeffs[i, j, k] bz[:, i] by[:, j] bx[:, k] as a float32 (Z, Y, X) array."""
    t = np.matmul(by[None], coeffs @ bx.T)  # (Kz, Y, X)
    out = bz @ t.reshape(t.shape[0], -1)
    return out.reshape(bz.shape[0], by.shape[0], bx.shape[0])


def _bases(shape: Sequence[int], spacing_nm: float, vs: np.ndarray):
    return [_rbf_basis(n, max(spacing_nm / v, 1.0)) for n, v in zip(shape, vs, strict=True)]


def smooth_noise(
    shape: Sequence[int],
    spacing_nm: float,
    voxel_size_nm: Sequence[float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Smooth Gaussian random field: random Gaussian bumps on a grid of ``spacing_nm``.

    Returns:
        float32 (Z, Y, X), mean about 0 and standard deviation about 1, correlation length about
        1.4 * spacing_nm (at least a voxel along each axis).
    """
    (bz, _), (by, _), (bx, _) = _bases(shape, spacing_nm, np.asarray(voxel_size_nm, float))
    coeffs = rng.standard_normal((bz.shape[1], by.shape[1], bx.shape[1]), dtype=np.float32)
    return _separable(coeffs, bz, by, bx)


def _shell_profile(
    distance_nm: np.ndarray, normal: Sequence[np.ndarray], sigma_nm: float, vs: np.ndarray
) -> np.ndarray:
    """Darkness of a thin sheet sampled on voxel centres, anti-aliased along its normal.

    The Gaussian profile is widened by the voxel's extent along the sheet normal (conserving its
    integral), so a membrane seen obliquely in 30 nm sections is a faint band, not a gap.

    Args:
        distance_nm: float32 signed distance to the sheet in nm, any shape.
        normal: three arrays broadcastable to ``distance_nm``: the unit normal (z, y, x).
        sigma_nm: profile standard deviation of the sheet in nm.
        vs: (3,) voxel size in nm.

    Returns:
        float32 of the broadcast shape, in [0, 1]; 1 on a sheet that is thin against the voxels.
    """
    width2 = np.float32(sigma_nm**2)
    for n, v in zip(normal, vs, strict=True):
        width2 = width2 + n * n * np.float32(v * v / 12.0)
    profile = np.exp(np.float32(-0.5) * distance_nm**2 / width2)
    profile *= np.float32(sigma_nm) / np.sqrt(width2)
    return profile.astype(np.float32, copy=False)


def membrane_profile(
    shape: Sequence[int], voxel_size_nm: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Cell membranes: thin curved sheets on the zero level set of smooth noise.

    Returns:
        float32 (Z, Y, X) in [0, 1], 1 at the centre of a membrane, 0 away from it.
    """
    vs = np.asarray(voxel_size_nm, dtype=float)
    (bz, dz), (by, dy), (bx, dx) = _bases(shape, _CELL_SCALE_NM, vs)
    coeffs = rng.standard_normal((bz.shape[1], by.shape[1], bx.shape[1]), dtype=np.float32)
    field = _separable(coeffs, bz, by, bx)
    grad = [
        _separable(coeffs, dz, by, bx) / np.float32(vs[0]),
        _separable(coeffs, bz, dy, bx) / np.float32(vs[1]),
        _separable(coeffs, bz, by, dx) / np.float32(vs[2]),
    ]
    norm = np.sqrt(grad[0] ** 2 + grad[1] ** 2 + grad[2] ** 2) + np.float32(1e-12)
    normal = [g / norm for g in grad]
    return _shell_profile(field / norm, normal, _MEMBRANE_SIGMA_NM, vs)
