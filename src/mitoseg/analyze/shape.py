"""Measures of one object from its mask alone (numpy and scikit-image only).

Centroid and principal axes from exact second moments, surface area by marching cubes and
skeleton length of the 3D thinning, all physical: voxel ``(z, y, x)`` is the box of size
``voxel_size_nm`` centred at ``index * voxel_size_nm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations, product

import numpy as np
from skimage.measure import marching_cubes, mesh_surface_area
from skimage.morphology import skeletonize

from mitoseg.analyze.errors import MeasureError


def check_voxel_size(voxel_size_nm: Sequence[float], source: str = "voxel_size_nm") -> np.ndarray:
    """float64 (3,) voxel size (z, y, x) in nm; raises MeasureError unless 3 finite values > 0."""
    try:
        size = np.asarray(voxel_size_nm, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise MeasureError(
            f"{source}: need 3 numbers (z, y, x) in nm, got {voxel_size_nm!r}"
        ) from err
    if size.size != 3 or not np.isfinite(size).all() or (size <= 0).any():
        raise MeasureError(
            f"{source}: need 3 finite sizes > 0 (z, y, x) in nm, got {voxel_size_nm!r}"
        )
    return size


def surface_area_nm2(mask: np.ndarray, voxel_size_nm: Sequence[float]) -> float:
    """Area of the marching-cubes iso-surface (level 0.5) of a mask, closed at its edges.

    Args:
        mask: bool (z, y, x) one object; it may touch the array edge (it is padded with zeros).
        voxel_size_nm: (z, y, x) spacing of the mesh.

    Returns:
        Area in nm^2, >= 0; 0 for an empty mask.
    """
    if not mask.any():
        return 0.0
    padded = np.pad(mask, 1).astype(np.float32)
    verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=tuple(voxel_size_nm))
    return float(mesh_surface_area(verts.astype(np.float64), faces))


def _sub_offsets(offset: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Offsets keeping a proper, non-empty subset of the non-zero axes of ``offset``."""
    axes = [a for a in range(3) if offset[a]]
    subs = []
    for k in range(1, len(axes)):
        for keep in combinations(axes, k):
            subs.append(tuple(offset[a] if a in keep else 0 for a in range(3)))
    return subs


# One of each +-pair of the 26 neighbour offsets: every edge is counted once.
_HALF_OFFSETS = [d for d in product((-1, 0, 1), repeat=3) if d > (0, 0, 0)]


def _shifted(padded: np.ndarray, d: Sequence[int]) -> np.ndarray:
    """View of ``padded`` (padded by 1) shifted by ``d``, the shape of the unpadded array."""
    return padded[tuple(slice(1 + o, padded.shape[a] - 1 + o) for a, o in enumerate(d))]


def skeleton_length_nm(skeleton: np.ndarray, voxel_size_nm: Sequence[float]) -> float:
    """Total length of the 26-neighbour graph of skeleton voxels.

    Every pair of 26-neighbour voxels is an edge of its physical length (e.g. ``hypot(dy, dx)``
    for a y-x diagonal step), except a diagonal edge whose two voxels are also joined through a
    third skeleton voxel by two shorter steps (a staircase corner or a junction): that path is
    counted instead, so a corner is not measured twice.

    Args:
        skeleton: bool (z, y, x) skeleton voxels (e.g. from ``skimage.morphology.skeletonize``).
        voxel_size_nm: (z, y, x) voxel size.

    Returns:
        Length in nm, >= 0; 0 for a single voxel or an empty skeleton.
    """
    skel = np.asarray(skeleton, dtype=bool)
    if skel.sum() < 2:
        return 0.0
    size = np.asarray(voxel_size_nm, dtype=np.float64)
    padded = np.pad(skel, 1)
    total = 0.0
    for d in _HALF_OFFSETS:
        edges = skel & _shifted(padded, d)
        for e in _sub_offsets(d):
            edges &= ~_shifted(padded, e)
        total += int(edges.sum()) * float(np.linalg.norm(np.asarray(d) * size))
    return total


def principal_axes_nm(
    mask: np.ndarray, voxel_size_nm: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Centroid and principal axis lengths of the solid made of the mask's voxel boxes.

    The covariance is that of the voxel centres plus ``size**2 / 12`` per axis (the spread inside
    a voxel box), so it is exact for the voxelised solid and never singular. Axis lengths are the
    diameters ``2 * sqrt(5 * eigenvalue)`` of the solid ellipsoid with the same second moments:
    a voxelised ellipsoid of semi-axes (a, b, c) gives about (2a, 2b, 2c).

    Args:
        mask: bool (z, y, x) one object, non-empty.
        voxel_size_nm: (z, y, x) voxel size.

    Returns:
        ``(centroid, axes)``: float64 (3,) centroid in voxels of ``mask`` (z, y, x), and float64
        (3,) axis lengths in nm, major first.
    """
    size = np.asarray(voxel_size_nm, dtype=np.float64)
    coords = np.stack(np.nonzero(mask), axis=1).astype(np.float64)
    if coords.shape[0] == 0:
        raise MeasureError("principal_axes_nm: empty mask")
    centroid = coords.mean(axis=0)
    nm = (coords - centroid) * size
    cov = nm.T @ nm / coords.shape[0] + np.diag(size**2 / 12.0)
    eig = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
    return centroid, 2.0 * np.sqrt(5.0 * eig)


def shape_measures(mask: np.ndarray, voxel_size_nm: Sequence[float]) -> dict[str, float]:
    """Measures of one object from its mask alone (its position does not matter).

    Args:
        mask: bool (z, y, x) one non-empty object, typically cropped to its bounding box.
        voxel_size_nm: (z, y, x) voxel size.

    Returns:
        ``voxels``; ``volume_nm3`` = voxels x voxel volume; ``surface_nm2`` (marching cubes);
        ``centroid_z/y/x`` in voxels of ``mask``; ``axis_major/mid/minor_nm``
        (:func:`principal_axes_nm`); ``elongation`` = major / minor axis length, >= 1;
        ``sphericity`` = pi^(1/3) (6 V)^(2/3) / A, 1 for an ideal ball; the marching-cubes
        area of a voxelised ball is ~9% too large (staircase), so a ball of radius 10 voxels gives
        0.91, and objects of a few voxels can exceed 1 (corners are cut); ``skeleton_length_nm``
        (:func:`skeleton_length_nm`) of the 3D thinning of the mask (about 0 for a ball).
    """
    size = check_voxel_size(voxel_size_nm)
    voxels = int(np.count_nonzero(mask))
    volume = voxels * float(np.prod(size))
    surface = surface_area_nm2(mask, size)
    centroid, axes = principal_axes_nm(mask, size)
    skeleton = skeletonize(np.pad(mask, 1))
    sphericity = np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / surface if surface > 0 else np.nan
    return {
        "voxels": voxels,
        "volume_nm3": volume,
        "surface_nm2": surface,
        **{f"centroid_{a}": float(c) for a, c in zip("zyx", centroid, strict=True)},
        "axis_major_nm": float(axes[0]),
        "axis_mid_nm": float(axes[1]),
        "axis_minor_nm": float(axes[2]),
        "elongation": float(axes[0] / axes[2]),
        "sphericity": float(sphericity),
        "skeleton_length_nm": skeleton_length_nm(skeleton, size),
    }
