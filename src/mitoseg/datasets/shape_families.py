"""Labelled volumes of one family of hard mitochondria shapes, for decoder round trips (numpy).

:func:`shape_family` rasterises a few objects of one family on voxels of any size, in nm:

- ``tubes``: long tubular mitochondria, 90-130 nm wide and more than 10x as long, gently bent;
- ``branched``: three arms from a common point (a Y), 90-130 nm wide;
- ``necked``: two or three bodies joined by necks 25-45 nm wide ("mitochondria on a string"),
  thinner than a contour band on 5 nm and on 8 nm voxels;
- ``small``: round ones of 1.25 to 3 times the decoders' size floor
  (:data:`mitoseg.decode.base.MIN_SIZE_NM3`);
- ``touching``: pairs of ellipsoids pressed together, which share a face.

Objects keep a gap of at least 40 nm to each other (except a touching pair) and to the volume's
border, so every one of them is whole. Voxel ``i`` has its centre at ``i * voxel_size_nm``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from mitoseg.datasets.synthetic_shapes import random_rotation

SHAPE_FAMILIES = ("tubes", "branched", "necked", "small", "touching")
FLOOR_NM3 = 5.0e5  # mitoseg.decode.base.MIN_SIZE_NM3, not imported: datasets do not need decode
_MARGIN_NM = 60.0

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]
Shape = Callable[[Coords], np.ndarray]  # voxel centres in nm -> bool mask


def _capsule_path(points: np.ndarray, radius: float) -> Shape:
    """Voxels within ``radius`` nm of the polyline through ``points`` (k, 3) nm."""

    def mask(c: Coords) -> np.ndarray:
        inside = np.zeros(np.broadcast_shapes(*(x.shape for x in c)), dtype=bool)
        for a, b in zip(points[:-1], points[1:], strict=True):
            seg = b - a
            d = [c[i] - a[i] for i in range(3)]
            t = np.clip(sum(seg[i] * d[i] for i in range(3)) / float(seg @ seg), 0.0, 1.0)
            inside |= sum((d[i] - t * seg[i]) ** 2 for i in range(3)) <= radius**2
        return inside

    return mask


def _ellipsoid(center: np.ndarray, axes: np.ndarray, rotation: np.ndarray) -> Shape:
    def mask(c: Coords) -> np.ndarray:
        q = 0.0
        for j in range(3):
            r = rotation[:, j] / axes[j]
            q = (
                q
                + (
                    r[0] * (c[0] - center[0])
                    + r[1] * (c[1] - center[1])
                    + r[2] * (c[2] - center[2])
                )
                ** 2
            )
        return q <= 1.0

    return mask


def _bent_path(
    rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, length: float
) -> np.ndarray:
    """A polyline of 4 segments from ``start``, about along ``direction``, ``length`` nm long."""
    points = [start]
    for _ in range(4):
        bend = direction + rng.normal(0.0, 0.15, 3)
        bend[0] *= 0.5  # stay about in the y-x plane: volumes are thin in z
        points.append(points[-1] + length / 4 * bend / np.linalg.norm(bend))
    return np.array(points)


def _tubes(rng: np.random.Generator) -> tuple[list[Shape], np.ndarray]:
    shapes, y = [], _MARGIN_NM + 80.0
    for _ in range(2):
        radius = rng.uniform(45.0, 55.0)
        length = 2 * radius * rng.uniform(11.0, 12.0)
        start = np.array([_MARGIN_NM + 90.0, y, _MARGIN_NM + radius])
        shapes.append(
            _capsule_path(_bent_path(rng, start, np.array([0.0, 0.0, 1.0]), length), radius)
        )
        y += 240.0
    return shapes, np.array([260.0, y + 40.0, 2 * 13 * 65.0 + 2 * _MARGIN_NM + 140.0])


def _branched(rng: np.random.Generator) -> tuple[list[Shape], np.ndarray]:
    radius = rng.uniform(45.0, 65.0)
    hub = np.array([130.0, 330.0, 330.0])
    arms = []
    for angle in (0.0, 2.1, 4.2):
        a = angle + rng.uniform(-0.3, 0.3)
        direction = np.array([rng.uniform(-0.1, 0.1), np.sin(a), np.cos(a)])
        arms.append(
            _capsule_path(_bent_path(rng, hub, direction, rng.uniform(200.0, 250.0)), radius)
        )
    return [lambda c: np.logical_or.reduce([arm(c) for arm in arms])], np.array(
        [260.0, 660.0, 660.0]
    )


def _necked(rng: np.random.Generator) -> tuple[list[Shape], np.ndarray]:
    shapes, x = [], _MARGIN_NM
    for n_bodies in (2, 3):
        parts: list[Shape] = []
        centers = []
        for _ in range(n_bodies):
            r = rng.uniform(70.0, 90.0)
            x += r
            center = np.array([110.0, 130.0 + rng.uniform(-20.0, 20.0), x])
            axes = np.array([r * rng.uniform(1.0, 1.3), r, r * rng.uniform(0.9, 1.0)])
            parts.append(_ellipsoid(center, axes, random_rotation(rng)))
            centers.append(center)
            x += r + rng.uniform(60.0, 140.0)  # the neck between two body surfaces
        neck = _capsule_path(np.array(centers), rng.uniform(12.5, 22.5))
        shapes.append(lambda c, ps=(*parts, neck): np.logical_or.reduce([p(c) for p in ps]))
        x += 60.0 - 100.0
    return shapes, np.array([220.0, 260.0, x + _MARGIN_NM])


def _small(rng: np.random.Generator) -> tuple[list[Shape], np.ndarray]:
    shapes, x = [], _MARGIN_NM
    for factor in (1.25, 1.6, 2.2, 3.0):
        r = (3.0 * factor * FLOOR_NM3 / (4.0 * np.pi)) ** (1.0 / 3.0)
        axes = np.array([r, r, r]) * np.array([1.15, 1.0, 1.0 / 1.15])
        shapes.append(_ellipsoid(np.array([90.0, 90.0, x + r]), axes, random_rotation(rng)))
        x += 2 * r * 1.15 + 40.0
    return shapes, np.array([180.0, 180.0, x + _MARGIN_NM])


def _touching(rng: np.random.Generator) -> tuple[list[Shape], np.ndarray]:
    shapes: list[Shape] = []
    for k in range(2):
        r = rng.uniform(70.0, 90.0)
        axes = np.array([r * rng.uniform(1.3, 1.8), r, r * 0.9])
        a = np.array([130.0, 150.0 + 300.0 * k, 160.0])
        u = np.array([rng.uniform(-0.2, 0.2), rng.uniform(-0.3, 0.3), 1.0])
        b = a + u / np.linalg.norm(u) * 2 * r * rng.uniform(0.8, 0.9)
        first = _ellipsoid(a, axes, random_rotation(rng))
        second = _ellipsoid(b, axes[[1, 0, 2]], random_rotation(rng))
        shapes += [first, lambda c, f=first, s=second: s(c) & ~f(c)]
    return shapes, np.array([260.0, 600.0, 560.0])


_FAMILIES = {
    "tubes": _tubes,
    "branched": _branched,
    "necked": _necked,
    "small": _small,
    "touching": _touching,
}


def shape_family(
    family: str, voxel_size_nm: Sequence[float] = (5.0, 5.0, 5.0), seed: int = 0
) -> np.ndarray:
    """A labelled volume of a few objects of one shape family (see the module docstring).

    Args:
        family: one of :data:`SHAPE_FAMILIES`.
        voxel_size_nm: (z, y, x) nm; the objects are the same in nm on any voxel size.
        seed: the random draw of sizes, bends and orientations.

    Returns:
        uint32 (Z, Y, X) instance ids 1..N (0 background), about 0.3-0.6 M voxels at 5 nm.
    """
    if family not in _FAMILIES:
        raise ValueError(f"unknown shape family {family!r}; choose one of {SHAPE_FAMILIES}")
    vs = np.asarray(voxel_size_nm, dtype=float)
    shapes, extent_nm = _FAMILIES[family](np.random.default_rng(seed))
    size = np.maximum(np.ceil(extent_nm / vs).astype(int), 1)
    coords = tuple(
        (np.arange(n) * v).reshape([-1 if a == axis else 1 for a in range(3)])
        for axis, (n, v) in enumerate(zip(size, vs, strict=True))
    )
    labels = np.zeros(tuple(size), dtype=np.uint32)
    for i, shape in enumerate(shapes, start=1):
        parts, n = ndimage.label(shape(coords) & (labels == 0))  # type: ignore[arg-type]
        if n:  # one piece per object (face-connected): a touching pair's cut can leave specks
            labels[parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1] = i
    # The objects' bounding box and a margin of _MARGIN_NM on every side.
    margin = np.ceil(_MARGIN_NM / vs).astype(int)
    where = np.argwhere(labels)
    lo, hi = where.min(axis=0), where.max(axis=0) + 1
    labels = labels[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    return np.pad(labels, [(m, m) for m in margin])
