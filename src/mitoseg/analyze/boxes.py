"""Pass 1 of the measurements: voxel count and bounding box of every object id (numpy only).

:func:`scan_boxes` reads the labels block by block (chunk-aligned by default) and keeps, per id,
only the voxel count and bounding box: memory is one block plus O(objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mitoseg.analyze.errors import MeasureError
from mitoseg.evaluate.contingency import LabelVolume
from mitoseg.geometry import block_grid

DEFAULT_BLOCK = (32, 256, 256)  # block of pass 1 when the labels have no chunks (numpy)


@dataclass(frozen=True)
class ObjectExtents:
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
    def empty() -> ObjectExtents:
        ids, voxels = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        return ObjectExtents(ids, voxels, np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64))

    def merge(self, other: ObjectExtents) -> ObjectExtents:
        """Counts summed and boxes united over ids found in either."""
        ids = np.concatenate([self.ids, other.ids])
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        if ids.size == 0:
            return ObjectExtents.empty()
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        voxels = np.concatenate([self.voxels, other.voxels])[order]
        lo = np.concatenate([self.lo, other.lo])[order]
        hi = np.concatenate([self.hi, other.hi])[order]
        return ObjectExtents(
            ids[starts],
            np.add.reduceat(voxels, starts),
            np.minimum.reduceat(lo, starts, axis=0),
            np.maximum.reduceat(hi, starts, axis=0),
        )


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


def block_boxes(block: np.ndarray, offset: Sequence[int] = (0, 0, 0)) -> ObjectExtents:
    """Counts and bounding boxes of the ids in one block, vectorised (one sort of its foreground).

    Args:
        block: integer (z, y, x) ids >= 0, 0 = background.
        offset: (z, y, x) position of ``block[0, 0, 0]`` in the volume.
    """
    flat = np.flatnonzero(block)
    if flat.size == 0:
        return ObjectExtents.empty()
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
    return ObjectExtents(
        ids[starts], voxels, lo.astype(np.int64) + shift, hi.astype(np.int64) + shift + 1
    )


def scan_boxes(labels: LabelVolume, block: Sequence[int] | None = None) -> ObjectExtents:
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
    boxes = ObjectExtents.empty()
    for cell in block_grid(labels.shape, block):
        part = np.asarray(labels[cell.write_roi.slices])
        boxes = boxes.merge(block_boxes(part, cell.write_roi.offset))
    return boxes
