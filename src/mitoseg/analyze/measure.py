"""Per-mitochondrion measurements of an instance volume, streamed over blocks (numpy only).

Two passes keep memory bounded for volumes far larger than RAM:

1. ``scan_boxes`` reads the labels block by block (chunk-aligned by default) and keeps, per id,
   only the voxel count and bounding box: memory is one block plus O(objects).
2. ``measure_objects`` reads each object's bounding box (objects close together share one read
   of their union, at most ``budget_voxels``) and measures its mask: centroid and principal axes
   from exact second moments, surface area by marching cubes, skeleton length by 3D thinning.

Geometry is physical: voxel ``(z, y, x)`` is the box of size ``voxel_size_nm`` centred at
``index * voxel_size_nm``. Objects are measured alone: a neighbour touching an object is
background for its surface, and an object cut by the volume border is closed at the border (see
``touches_border``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations, product
from typing import Any

import numpy as np
from skimage.measure import marching_cubes, mesh_surface_area
from skimage.morphology import skeletonize

from mitoseg.evaluate.contingency import LabelVolume

log = logging.getLogger(__name__)

DEFAULT_BLOCK = (32, 256, 256)  # block of pass 1 when the labels have no chunks (numpy)
DEFAULT_BUDGET_VOXELS = 1 << 24  # largest union of boxes read at once in pass 2 (64 MiB uint32)
_NM3_PER_UM3 = 1e9

# Units in the names; bbox_*0 / bbox_*1 are the half-open box in voxels.
COLUMNS: tuple[str, ...] = (
    *("id", "voxels", "volume_nm3", "surface_nm2"),
    *(f"bbox_{a}{end}" for end in "01" for a in "zyx"),
    *(f"centroid_{a}" for a in "zyx"),
    *(f"centroid_{a}_nm" for a in "zyx"),
    *("axis_major_nm", "axis_mid_nm", "axis_minor_nm", "elongation", "sphericity"),
    *("skeleton_length_nm", "touches_border"),
)


class MeasureError(ValueError):
    """Labels or parameters that cannot be measured; the message names what is at fault."""


@dataclass(frozen=True)
class Boxes:
    """Voxel count and bounding box of each object id (the result of pass 1).

    Attributes:
        ids: uint64 (K,) sorted distinct non-zero ids.
        voxels: int64 (K,) voxels of each id, > 0.
        lo: int64 (K, 3) first (z, y, x) voxel of each bounding box.
        hi: int64 (K, 3) one past the last voxel (half-open, as slices).
    """

    ids: np.ndarray
    voxels: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @staticmethod
    def empty() -> Boxes:
        ids, voxels = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        return Boxes(ids, voxels, np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64))

    def merge(self, other: Boxes) -> Boxes:
        """Counts summed and boxes united over ids found in either."""
        ids = np.concatenate([self.ids, other.ids])
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        if ids.size == 0:
            return Boxes.empty()
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        voxels = np.concatenate([self.voxels, other.voxels])[order]
        lo = np.concatenate([self.lo, other.lo])[order]
        hi = np.concatenate([self.hi, other.hi])[order]
        return Boxes(
            ids[starts],
            np.add.reduceat(voxels, starts),
            np.minimum.reduceat(lo, starts, axis=0),
            np.maximum.reduceat(hi, starts, axis=0),
        )


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


def _check_labels(labels: LabelVolume) -> None:
    if len(labels.shape) != 3:
        raise MeasureError(f"labels must be (Z, Y, X), got shape {tuple(labels.shape)}")
    kind = np.dtype(labels.dtype).kind
    if kind not in "ui":
        raise MeasureError(f"labels must be integer instance ids, got dtype {labels.dtype}")


def default_block(labels: LabelVolume) -> tuple[int, int, int]:
    """Block of pass 1: the zarr / HDF5 chunk shape (reads decode each chunk once), else
    ``DEFAULT_BLOCK``; clipped to the shape."""
    chunks = getattr(labels, "chunks", None)
    block = tuple(chunks) if chunks is not None and len(chunks) == 3 else DEFAULT_BLOCK
    return tuple(max(1, min(int(b), int(s))) for b, s in zip(block, labels.shape, strict=True))  # type: ignore[return-value]


def _iter_blocks(shape: Sequence[int], block: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    ranges = [range(0, s, b) for s, b in zip(shape, block, strict=True)]
    for start in product(*ranges):
        yield tuple(slice(a, min(a + b, s)) for a, b, s in zip(start, block, shape, strict=True))


def block_boxes(block: np.ndarray, offset: Sequence[int] = (0, 0, 0)) -> Boxes:
    """Counts and bounding boxes of the ids in one block, vectorised (one sort of its foreground).

    Args:
        block: integer (z, y, x) ids >= 0, 0 = background.
        offset: (z, y, x) position of ``block[0, 0, 0]`` in the volume.
    """
    flat = np.flatnonzero(block)
    if flat.size == 0:
        return Boxes.empty()
    ids = block.reshape(-1)[flat]
    if np.dtype(ids.dtype).kind == "i" and ids.min() < 0:
        raise MeasureError(f"negative label {int(ids.min())} in the block at {tuple(offset)}")
    order = np.argsort(ids, kind="stable")
    ids, flat = ids[order].astype(np.uint64), flat[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    coords = np.unravel_index(flat, block.shape)
    lo = np.stack([np.minimum.reduceat(c, starts) for c in coords], axis=1)
    hi = np.stack([np.maximum.reduceat(c, starts) for c in coords], axis=1)
    shift = np.asarray(offset, dtype=np.int64)
    voxels = np.diff(np.r_[starts, ids.size]).astype(np.int64)
    return Boxes(ids[starts], voxels, lo.astype(np.int64) + shift, hi.astype(np.int64) + shift + 1)


def scan_boxes(labels: LabelVolume, block: Sequence[int] | None = None) -> Boxes:
    """Pass 1: voxel count and bounding box of every id, streamed block by block.

    Args:
        labels: integer (Z, Y, X) instance ids, 0 = background; numpy or zarr.
        block: (z, y, x) voxels read at a time; default :func:`default_block`. Memory is about
            one block plus a few int64 per foreground voxel of it, plus O(objects).

    Returns:
        The same boxes for any ``block``.
    """
    _check_labels(labels)
    block = default_block(labels) if block is None else tuple(int(b) for b in block)
    if len(block) != 3 or min(block) < 1:
        raise MeasureError(f"block must be 3 sizes >= 1 (z, y, x), got {block}")
    boxes = Boxes.empty()
    for window in _iter_blocks(labels.shape, block):
        part = np.asarray(labels[window])
        boxes = boxes.merge(block_boxes(part, [w.start for w in window]))
    return boxes


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


def read_groups(
    lo: np.ndarray, hi: np.ndarray, cell: Sequence[int], budget_voxels: int
) -> list[np.ndarray]:
    """Objects grouped so that each group's union box is read once.

    Objects are ordered by the ``cell`` of the grid holding their first voxel, then added to the
    current group while its union box stays within ``budget_voxels`` (an object larger than the
    budget is a group of its own).

    Args:
        lo, hi: int64 (K, 3) half-open boxes.
        cell: (z, y, x) grid cell, typically the storage chunk.
        budget_voxels: largest union box of a group of several objects.

    Returns:
        int64 index arrays into the K boxes; each object in exactly one group.
    """
    key = lo // np.asarray(cell, dtype=np.int64)
    order = np.lexsort((lo[:, 2], lo[:, 1], lo[:, 0], key[:, 2], key[:, 1], key[:, 0]))
    groups: list[list[int]] = []
    union_lo = union_hi = np.zeros(3, np.int64)
    for k in order.tolist():
        if groups:
            new_lo, new_hi = np.minimum(union_lo, lo[k]), np.maximum(union_hi, hi[k])
            if int(np.prod(new_hi - new_lo)) <= budget_voxels:
                groups[-1].append(k)
                union_lo, union_hi = new_lo, new_hi
                continue
        groups.append([k])
        union_lo, union_hi = lo[k].copy(), hi[k].copy()
    return [np.asarray(g, dtype=np.int64) for g in groups]


def _object_rows(
    region: np.ndarray, origin: np.ndarray, boxes: Boxes, group: np.ndarray, size: np.ndarray
) -> Iterator[dict[str, Any]]:
    """Rows (but ``touches_border``) of the objects ``group`` of ``boxes``, from ``region`` (the
    labels read at ``origin``)."""
    for k in group.tolist():
        lo, hi = boxes.lo[k], boxes.hi[k]
        crop = region[tuple(slice(a, b) for a, b in zip(lo - origin, hi - origin, strict=True))]
        mask = crop == boxes.ids[k]
        row = shape_measures(mask, size)
        if row["voxels"] != boxes.voxels[k]:
            raise MeasureError(
                f"id {int(boxes.ids[k])}: {row['voxels']} voxels in its box but "
                f"{int(boxes.voxels[k])} in the first pass; were the labels changed meanwhile?"
            )
        centroid = np.array([row.pop(f"centroid_{a}") for a in "zyx"]) + lo
        yield {
            "id": int(boxes.ids[k]),
            **{f"bbox_{a}0": int(v) for a, v in zip("zyx", lo, strict=True)},
            **{f"bbox_{a}1": int(v) for a, v in zip("zyx", hi, strict=True)},
            **{f"centroid_{a}": float(c) for a, c in zip("zyx", centroid, strict=True)},
            **{f"centroid_{a}_nm": float(c) for a, c in zip("zyx", centroid * size, strict=True)},
            **row,
        }


def column_dtype(name: str) -> np.dtype:
    """dtype of a column of ``COLUMNS``."""
    if name == "id":
        return np.dtype(np.uint64)
    if name == "touches_border":
        return np.dtype(bool)
    return np.dtype(np.int64 if name == "voxels" or name.startswith("bbox_") else np.float64)


def measure_objects(
    labels: LabelVolume,
    voxel_size_nm: Sequence[float],
    *,
    block: Sequence[int] | None = None,
    min_voxels: int = 1,
    budget_voxels: int = DEFAULT_BUDGET_VOXELS,
) -> dict[str, np.ndarray]:
    """One row per object of an instance volume, in two streamed passes.

    Args:
        labels: integer (Z, Y, X) instance ids, 0 = background; numpy or zarr.
        voxel_size_nm: (z, y, x) voxel size in nm.
        block: (z, y, x) block of pass 1 (default: the storage chunk); results do not depend on it.
        min_voxels: objects with fewer voxels are left out (not measured).
        budget_voxels: largest union box read at once in pass 2; a larger object is read alone, so
            memory is about max(budget, largest bounding box) x (4 + 1) bytes.

    Returns:
        Columns ``COLUMNS``, 1-D arrays of one length, rows by increasing id: ``id`` uint64;
        ``voxels`` and ``bbox_{z,y,x}{0,1}`` int64 (half-open box in voxels); ``centroid_{z,y,x}``
        float64 in voxels (voxel centres at integers) and ``centroid_*_nm``; ``touches_border``
        bool (a voxel on one of the 6 faces of the volume); the other columns float64 as in
        :func:`shape_measures`.
    """
    size = check_voxel_size(voxel_size_nm)
    if min_voxels < 1 or budget_voxels < 1:
        raise MeasureError(f"min_voxels, budget_voxels must be >= 1: {min_voxels}, {budget_voxels}")
    boxes = scan_boxes(labels, block)
    keep = boxes.voxels >= min_voxels
    boxes = Boxes(boxes.ids[keep], boxes.voxels[keep], boxes.lo[keep], boxes.hi[keep])
    log.info("pass 1: %d objects of >= %d voxels", boxes.ids.size, min_voxels)
    rows: list[dict[str, Any]] = []
    for group in read_groups(boxes.lo, boxes.hi, default_block(labels), budget_voxels):
        origin, end = boxes.lo[group].min(axis=0), boxes.hi[group].max(axis=0)
        region = np.asarray(labels[tuple(slice(a, b) for a, b in zip(origin, end, strict=True))])
        rows.extend(_object_rows(region, origin, boxes, group, size))
    rows.sort(key=lambda row: row["id"])  # boxes.ids is sorted too
    shape = np.asarray(labels.shape, dtype=np.int64)
    border = (boxes.lo == 0).any(axis=1) | (boxes.hi == shape).any(axis=1)
    table = {
        name: np.asarray([row[name] for row in rows], column_dtype(name))
        for name in COLUMNS
        if name != "touches_border"
    }
    return table | {"touches_border": border}


def volume_histogram(
    volumes_um3: np.ndarray, bins: int = 30
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Histogram of object volumes, on log-spaced bins when they span more than 100x.

    Args:
        volumes_um3: float (K,) object volumes in um^3, > 0.
        bins: number of bins.

    Returns:
        ``(counts, edges, log_scale)``: int64 (bins,), float64 (bins + 1,) and whether the edges
        are log-spaced; no bins (empty arrays) for no objects.
    """
    v = np.asarray(volumes_um3, dtype=np.float64)
    if v.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64), False
    lo, hi = float(v.min()), float(v.max())
    log_scale = hi > 100 * lo
    if log_scale:
        edges = np.geomspace(lo, hi, bins + 1)
    else:
        edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.array([lo * 0.5, lo * 1.5])
    counts, edges = np.histogram(v, bins=edges)
    return counts.astype(np.int64), edges, bool(log_scale)


def summarize(
    table: dict[str, np.ndarray], shape: Sequence[int], voxel_size_nm: Sequence[float]
) -> dict[str, Any]:
    """Dataset-level numbers of a table from :func:`measure_objects` (JSON-serialisable).

    Returns:
        ``count``, ``dataset_volume_um3``, ``density_per_um3``, ``total/mean/median_volume_um3``
        (mean / median None without objects), ``voxel_fraction`` (object voxels / all voxels),
        ``touching_border``, ``shape``, ``voxel_size_nm`` and the ``histogram`` of volumes.
    """
    size = check_voxel_size(voxel_size_nm)
    n_voxels = int(np.prod(np.asarray(shape, dtype=np.int64)))
    dataset_um3 = n_voxels * float(np.prod(size)) / _NM3_PER_UM3
    volumes = np.asarray(table["volume_nm3"], dtype=np.float64) / _NM3_PER_UM3
    counts, edges, log_scale = volume_histogram(volumes)
    count = int(volumes.size)
    return {
        "count": count,
        "shape": [int(s) for s in shape],
        "voxel_size_nm": size.tolist(),
        "dataset_volume_um3": dataset_um3,
        "density_per_um3": count / dataset_um3,
        "total_volume_um3": float(volumes.sum()),
        "mean_volume_um3": float(volumes.mean()) if count else None,
        "median_volume_um3": float(np.median(volumes)) if count else None,
        "voxel_fraction": int(np.sum(table["voxels"])) / n_voxels,
        "touching_border": int(np.sum(table["touches_border"])),
        "histogram": {
            "volume_um3_edges": edges.tolist(),
            "counts": counts.tolist(),
            "log_scale": log_scale,
        },
    }
