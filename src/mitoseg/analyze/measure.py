"""Per-mitochondrion measurements of an instance volume, streamed over blocks (numpy only).

Two passes keep memory bounded for volumes far larger than RAM:

1. ``scan_boxes`` (:mod:`mitoseg.analyze.boxes`) reads the labels block by block (chunk-aligned
   by default) and keeps, per id, only the voxel count and bounding box: memory is one block plus
   O(objects).
2. ``measure_objects`` reads each object's bounding box (objects close together share one read
   of their union, at most ``budget_voxels``) and measures its mask (:mod:`mitoseg.analyze.shape`):
   centroid and principal axes from exact second moments, surface area by marching cubes,
   skeleton length by 3D thinning.

Geometry is physical: voxel ``(z, y, x)`` is the box of size ``voxel_size_nm`` centred at
``index * voxel_size_nm``. Objects are measured alone: a neighbour touching an object is
background for its surface, and an object cut by the volume border is closed at the border (see
``touches_border``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mitoseg.analyze.boxes import (
    DEFAULT_BLOCK,
    ObjectExtents,
    block_boxes,
    default_block,
    scan_boxes,
)
from mitoseg.analyze.errors import MeasureError
from mitoseg.analyze.shape import (
    check_voxel_size,
    principal_axes_nm,
    shape_measures,
    skeleton_length_nm,
    surface_area_nm2,
)
from mitoseg.evaluate.contingency import LabelVolume

__all__ = [  # the passes' parts stay importable from here
    "COLUMNS",
    "DEFAULT_BLOCK",
    "DEFAULT_BUDGET_VOXELS",
    "ObjectExtents",
    "MeasureError",
    "block_boxes",
    "check_voxel_size",
    "column_dtype",
    "default_block",
    "measure_objects",
    "principal_axes_nm",
    "read_groups",
    "scan_boxes",
    "shape_measures",
    "skeleton_length_nm",
    "summarize",
    "surface_area_nm2",
    "volume_histogram",
]

log = logging.getLogger(__name__)

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
    region: np.ndarray,
    origin: np.ndarray,
    boxes: ObjectExtents,
    group: np.ndarray,
    size: np.ndarray,
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
    boxes = ObjectExtents(boxes.ids[keep], boxes.voxels[keep], boxes.lo[keep], boxes.hi[keep])
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
