"""Shapes of synthetic mitochondria, rasterised on their bounding boxes (numpy and scipy only).

Used by :mod:`mitoseg.datasets.synthetic`: rotated ellipsoids, touching pairs (two ids sharing a
face) and
necked chains ("mitochondria on a string": two or three ellipsoid bodies joined by thin tubes,
one id). Every object keeps a gap to all others unless it is meant to touch. Positions and sizes
are physical, in nm, (z, y, x); voxel ``i`` has its centre at ``i * voxel_size_nm``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

Box = tuple[slice, ...]

RADIUS_NM = (45.0, 110.0)  # first short semi-axis; the second is 0.75-1 times it
ELONGATION = (1.2, 3.0)  # long semi-axis / first short semi-axis
MIN_VOXELS = 64  # smaller objects (slivers at the border) are not placed
# Necked chains: bodies much wider than the necks.
CHAIN_RADIUS_NM = (70.0, 110.0)
CHAIN_ELONGATION = (1.0, 1.8)
NECK_DIAMETER_NM = (40.0, 60.0)
NECK_LENGTH_NM = (60.0, 200.0)  # between the surfaces of consecutive bodies
# Least in-plane width of a neck in every section through it. A contour band of Chebyshev radius
# 2 eats 2 * 2 * sqrt(2) = 5.7 voxels of a diagonal neck: 7 leave a connected core.
NECK_MIN_VOXELS = 7


@dataclass(frozen=True)
class Ellipsoid:
    center_nm: np.ndarray  # (3,) z, y, x
    semi_axes_nm: np.ndarray  # (3,) long axis first
    rotation: np.ndarray  # (3, 3); column j is the direction of semi-axis j in (z, y, x)


@dataclass(frozen=True)
class PlacedObject:
    box: Box
    mask: np.ndarray  # bool, the box's shape
    keep_out: np.ndarray  # bool, the shape grown by a gap: no other object, membrane, vesicle
    ellipsoid: Ellipsoid  # the (first) body; its long axis orients the cristae


# --------------------------------------------------------------------------- geometry


def box_of(ell: Ellipsoid, vs: np.ndarray, shape: Sequence[int], scale: float = 1.0) -> Box:
    """Voxel bounding box of the ellipsoid scaled by ``scale``, cropped to the volume."""
    half = scale * np.sqrt(((ell.rotation * ell.semi_axes_nm[None, :]) ** 2).sum(axis=1))
    lo = np.clip(np.floor((ell.center_nm - half) / vs).astype(int), 0, shape)
    hi = np.clip(np.ceil((ell.center_nm + half) / vs).astype(int) + 1, 0, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def union(a: Box, b: Box) -> Box:
    """The smallest box holding both boxes."""
    return tuple(
        slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b, strict=True)
    )


def box_shape(box: Box) -> tuple[int, ...]:
    return tuple(max(sl.stop - sl.start, 0) for sl in box)


def offsets_nm(box: Box, center_nm: np.ndarray, vs: np.ndarray) -> list[np.ndarray]:
    """Broadcastable float32 (z, y, x) offsets in nm of the voxel centres of ``box``."""
    out = []
    for axis, sl in enumerate(box):
        d = np.arange(sl.start, sl.stop) * vs[axis] - center_nm[axis]
        shape = [1, 1, 1]
        shape[axis] = d.size
        out.append(d.reshape(shape).astype(np.float32))
    return out


def quadric(ell: Ellipsoid, box: Box, vs: np.ndarray) -> np.ndarray:
    """float32 q on the box's voxel centres: q <= 1 inside, q <= s**2 inside the ellipsoid x s."""
    d = offsets_nm(box, ell.center_nm, vs)
    q = np.zeros(box_shape(box), dtype=np.float32)
    for j in range(3):
        r = ell.rotation[:, j].astype(np.float32) / np.float32(ell.semi_axes_nm[j])
        q += (r[0] * d[0] + r[1] * d[1] + r[2] * d[2]) ** 2
    return q


def segment_distance2(box: Box, a_nm: np.ndarray, b_nm: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """float32 squared distance in nm**2 from the box's voxel centres to the segment a-b."""
    d = offsets_nm(box, a_nm, vs)
    seg = (np.asarray(b_nm, float) - a_nm).astype(np.float32)
    t = (seg[0] * d[0] + seg[1] * d[1] + seg[2] * d[2]) / np.float32(max(seg @ seg, 1e-12))
    np.clip(t, 0.0, 1.0, out=t)
    return (d[0] - t * seg[0]) ** 2 + (d[1] - t * seg[1]) ** 2 + (d[2] - t * seg[2]) ** 2


def ellipsoid_mask(
    center_nm: Sequence[float],
    semi_axes_nm: Sequence[float],
    rotation: np.ndarray,
    voxel_size_nm: Sequence[float],
    shape: Sequence[int],
) -> tuple[Box, np.ndarray]:
    """Rasterise a rotated ellipsoid on its bounding box only.

    Args:
        center_nm: (3,) centre in nm, (z, y, x); voxel i has its centre at i * voxel_size_nm.
        semi_axes_nm: (3,) semi-axes in nm.
        rotation: float (3, 3); column j is the unit direction of semi-axis j in (z, y, x).
        voxel_size_nm: (3,) voxel size in nm.
        shape: (Z, Y, X) of the volume that the box is cropped to.

    Returns:
        ``(box, mask)``: three slices into the volume and a bool mask of the box's shape
        (possibly empty when the ellipsoid lies outside the volume).
    """
    vs = np.asarray(voxel_size_nm, dtype=float)
    ell = Ellipsoid(np.asarray(center_nm, float), np.asarray(semi_axes_nm, float), rotation)
    box = box_of(ell, vs, shape)
    return box, quadric(ell, box, vs) <= 1.0


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random rotation matrix, from a random unit quaternion."""
    w, x, y, z = rng.standard_normal(4)
    n = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def random_ellipsoid(rng: np.random.Generator, center_nm: np.ndarray) -> Ellipsoid:
    b = rng.uniform(*RADIUS_NM)
    axes = np.array([b * rng.uniform(*ELONGATION), b, b * rng.uniform(0.75, 1.0)])
    return Ellipsoid(np.asarray(center_nm, float), axes, random_rotation(rng))


def reach_nm(ell: Ellipsoid, direction: np.ndarray) -> float:
    """Distance from the centre to the surface along the unit vector ``direction``."""
    u = ell.rotation.T @ direction
    return float(1.0 / np.sqrt(((u / ell.semi_axes_nm) ** 2).sum()))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a bool mask."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask
    return lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1)


def face_adjacent(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a voxel of bool mask ``a`` shares a face with a voxel of bool mask ``b``."""
    for axis in range(3):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        if (a[tuple(lo)] & b[tuple(hi)]).any() or (a[tuple(hi)] & b[tuple(lo)]).any():
            return True
    return False


# --------------------------------------------------------------------------- objects


def gap_scale(ell: Ellipsoid, gap_nm: float) -> float:
    return 1.0 + gap_nm / float(ell.semi_axes_nm.min())


def try_single(
    labels: np.ndarray, ell: Ellipsoid, vs: np.ndarray, gap_nm: float
) -> PlacedObject | None:
    """A ``PlacedObject`` for ``ell`` if it fits with a gap to all placed objects, else None."""
    s = gap_scale(ell, gap_nm)
    box = box_of(ell, vs, labels.shape, s)
    if min(box_shape(box)) == 0:
        return None
    q = quadric(ell, box, vs)
    keep_out = q <= s * s
    if labels[box][keep_out].any():
        return None
    mask = largest_component(q <= 1.0)
    if mask.sum() < MIN_VOXELS:
        return None
    return PlacedObject(box, mask, keep_out, ell)


def try_pair(
    labels: np.ndarray,
    rng: np.random.Generator,
    center_nm: np.ndarray,
    vs: np.ndarray,
    gap_nm: float,
) -> tuple[PlacedObject, PlacedObject] | None:
    """Two ellipsoids pressed together: the second loses the voxels of the first, so they share
    a face. Returns two ``PlacedObject`` on a common box, or None if they do not fit."""
    a = random_ellipsoid(rng, center_nm)
    b = random_ellipsoid(rng, center_nm)
    u = rng.standard_normal(3)
    u /= np.linalg.norm(u)
    dist = (reach_nm(a, u) + reach_nm(b, -u)) * rng.uniform(0.7, 0.85)
    b = replace(b, center_nm=a.center_nm + dist * u)
    sa, sb = gap_scale(a, gap_nm), gap_scale(b, gap_nm)
    box = union(box_of(a, vs, labels.shape, sa), box_of(b, vs, labels.shape, sb))
    if min(box_shape(box)) == 0:
        return None
    qa, qb = quadric(a, box, vs), quadric(b, box, vs)
    keep_a, keep_b = qa <= sa * sa, qb <= sb * sb
    if labels[box][keep_a | keep_b].any():
        return None
    mask_a = largest_component(qa <= 1.0)
    mask_b = largest_component((qb <= 1.0) & ~mask_a)
    if min(mask_a.sum(), mask_b.sum()) < MIN_VOXELS or not face_adjacent(mask_a, mask_b):
        return None
    return PlacedObject(box, mask_a, keep_a, a), PlacedObject(box, mask_b, keep_b, b)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _chain_body(
    rng: np.random.Generator, center_nm: np.ndarray, direction: np.ndarray
) -> Ellipsoid:
    """A chain body whose long axis points about along ``direction`` (a unit vector)."""
    b = rng.uniform(*CHAIN_RADIUS_NM)
    axes = np.array([b * rng.uniform(*CHAIN_ELONGATION), b, b * rng.uniform(0.85, 1.0)])
    first = _unit(direction + 0.2 * rng.standard_normal(3))
    v = rng.standard_normal(3)
    second = _unit(v - (v @ first) * first)
    rotation = np.stack([first, second, np.cross(first, second)], axis=1)
    return Ellipsoid(np.asarray(center_nm, float), axes, rotation)


def chain_bodies(rng: np.random.Generator, start_nm: np.ndarray, n_bodies: int) -> list[Ellipsoid]:
    """Bodies along a gently bending path; consecutive surfaces ``NECK_LENGTH_NM`` apart."""
    direction = _unit(rng.standard_normal(3))
    bodies = [_chain_body(rng, start_nm, direction)]
    for _ in range(n_bodies - 1):
        direction = _unit(direction + 0.3 * rng.standard_normal(3))
        body, last = _chain_body(rng, np.zeros(3), direction), bodies[-1]
        neck = rng.uniform(*NECK_LENGTH_NM)
        dist = reach_nm(last, direction) + neck + reach_nm(body, -direction)
        bodies.append(replace(body, center_nm=last.center_nm + dist * direction))
    return bodies


def neck_radius_nm(rng: np.random.Generator, vs: np.ndarray) -> float:
    """Half a neck diameter drawn from ``NECK_DIAMETER_NM``, widened where voxels are coarse.

    A neck lying in the y-x plane half a section away from every section centre is cut
    ``2 * sqrt(r**2 - (vs_z / 2)**2)`` nm wide; the radius makes that at least
    ``NECK_MIN_VOXELS`` in-plane voxels (at (30, 8, 8) nm: r >= 31.8 nm), and every other
    orientation or offset gives a wider cut.
    """
    half_width = NECK_MIN_VOXELS * max(vs[1], vs[2]) / 2.0
    return max(rng.uniform(*NECK_DIAMETER_NM) / 2.0, float(np.hypot(half_width, vs[0] / 2.0)))


def try_chain(
    labels: np.ndarray,
    rng: np.random.Generator,
    start_nm: np.ndarray,
    vs: np.ndarray,
    gap_nm: float,
) -> PlacedObject | None:
    """A necked chain of 2-3 bodies joined by tubes between their centres, one object.

    Returns None unless every body centre lies in the volume (so every neck is visible; end
    bodies may be cut by the border) and the chain keeps a gap to all placed objects.
    """
    bodies = chain_bodies(rng, start_nm, int(rng.integers(2, 4)))
    radius = neck_radius_nm(rng, vs)
    extent = (np.array(labels.shape) - 1) * vs
    if any(np.any(b.center_nm < 0) or np.any(b.center_nm > extent) for b in bodies):
        return None
    scales = [gap_scale(b, gap_nm) for b in bodies]
    boxes = [box_of(b, vs, labels.shape, s) for b, s in zip(bodies, scales, strict=True)]
    box = functools.reduce(union, boxes)
    mask = np.zeros(box_shape(box), dtype=bool)
    keep_out = np.zeros_like(mask)
    for body, s in zip(bodies, scales, strict=True):
        q = quadric(body, box, vs)
        mask |= q <= 1.0
        keep_out |= q <= s * s
    for a, b in zip(bodies[:-1], bodies[1:], strict=True):
        d2 = segment_distance2(box, a.center_nm, b.center_nm, vs)
        mask |= d2 <= radius**2
        keep_out |= d2 <= (radius + gap_nm) ** 2
    if labels[box][keep_out].any():
        return None
    mask = largest_component(mask)
    return PlacedObject(box, mask, keep_out, bodies[0]) if mask.sum() >= MIN_VOXELS else None
