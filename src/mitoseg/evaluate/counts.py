"""Everything ``mitoseg-evaluate`` reads from the voxels, in one pass (numpy, zarr; Dask optional).

:class:`EvaluationCounts` holds the contingency table of truth and prediction
(:class:`~mitoseg.evaluate.contingency.Overlaps`), the voxel count and bounding box of every
object of each (:class:`~mitoseg.analyze.boxes.ObjectExtents`) and, optionally, the sum of the
foreground probability over each predicted object. All are integer counts (probabilities are
summed in fixed units of 1 / :data:`FLOAT_UNIT`, or as stored for integer probabilities), so the
counts of disjoint blocks add up exactly: :func:`count_slabs` (z-slabs in this process) and
:func:`count_blocks` (blocks, on Dask or here) give identical results, and so does every score
computed from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mitoseg.analyze.boxes import ObjectExtents, block_boxes
from mitoseg.evaluate.contingency import (
    LabelVolume,
    Overlaps,
    _group_sum,
    _slab_overlaps,
    _validate_volumes,
)

FLOAT_UNIT = 1 << 16
"""Float probabilities are summed as integers ``rint(p * FLOAT_UNIT)``: exact in any order."""


def probability_unit(probs: Any) -> float:
    """The stored value of probability 1: the ``scale`` attribute (``mitoseg-predict`` writes 255
    for uint8), else 255 for uint8, 65535 for uint16, :data:`FLOAT_UNIT` for floats (summed
    after :func:`to_units`)."""
    dtype = np.dtype(probs.dtype)
    if dtype.kind == "f":
        return float(FLOAT_UNIT)
    scale = dict(getattr(probs, "attrs", {})).get("scale")
    if scale is not None:
        return float(scale)
    return float(np.iinfo(dtype).max) if dtype.kind == "u" else 1.0


def to_units(values: np.ndarray) -> np.ndarray:
    """Probabilities as int64 units: integers as stored, floats in [0, 1] as rint(p x 2**16)."""
    if values.dtype.kind == "f":
        return np.rint(values.astype(np.float64) * FLOAT_UNIT).astype(np.int64)
    return values.astype(np.int64)


@dataclass(frozen=True, eq=False)
class EvaluationCounts:
    """The counts of a volume (or of blocks): see the module docstring.

    Attributes:
        overlaps: voxel counts of (truth id, pred id) pairs.
        truth, pred: voxel count and bounding box of every non-zero id.
        prob_ids: uint64 (K,) predicted ids with a probability sum (empty without probs).
        prob_sums: int64 (K,) sum of the foreground probability over each, in stored units.
    """

    overlaps: Overlaps
    truth: ObjectExtents
    pred: ObjectExtents
    prob_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    prob_sums: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @staticmethod
    def empty() -> EvaluationCounts:
        return EvaluationCounts(Overlaps.empty(), ObjectExtents.empty(), ObjectExtents.empty())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EvaluationCounts):
            return NotImplemented
        extents = all(
            np.array_equal(getattr(a, name), getattr(b, name))
            for a, b in ((self.truth, other.truth), (self.pred, other.pred))
            for name in ("ids", "voxels", "lo", "hi")
        )
        probs = np.array_equal(self.prob_ids, other.prob_ids) and np.array_equal(
            self.prob_sums, other.prob_sums
        )
        return self.overlaps == other.overlaps and extents and probs

    __hash__ = None  # type: ignore[assignment]

    def confidence(self, unit: float) -> dict[int, float]:
        """Predicted id -> mean foreground probability in [0, 1] (``unit``: the stored value of
        probability 1, :func:`probability_unit`); every predicted id when probs were counted."""
        sizes = dict(zip(self.pred.ids.tolist(), self.pred.voxels.tolist(), strict=True))
        sums = zip(self.prob_ids.tolist(), self.prob_sums.tolist(), strict=True)
        return {i: s / (sizes[i] * unit) for i, s in sums}


def combine(parts: Sequence[EvaluationCounts]) -> EvaluationCounts:
    """The counts of the union of disjoint blocks."""
    if not parts:
        return EvaluationCounts.empty()
    tables = [p.overlaps._pairs() for p in parts]
    joined = Overlaps(
        *(np.concatenate(a) for a in zip(*tables, strict=True)),
        sum(p.overlaps.n_voxels for p in parts),
    )
    truth, pred = (_joined([getattr(p, side) for p in parts]) for side in ("truth", "pred"))
    ids, sums = _group_sum(
        np.concatenate([p.prob_ids for p in parts]), np.concatenate([p.prob_sums for p in parts])
    )
    return EvaluationCounts(joined, truth, pred, ids, sums)


def _joined(extents: list[ObjectExtents]) -> ObjectExtents:
    """Extents of the union of blocks, in one sort (``merge`` of all at once)."""
    stacked = ObjectExtents(
        *(
            np.concatenate([getattr(e, name) for e in extents])
            for name in ("ids", "voxels", "lo", "hi")
        )
    )
    return stacked.merge(ObjectExtents.empty())


def count_block(
    truth: np.ndarray,
    pred: np.ndarray,
    probs: np.ndarray | None = None,
    offset: Sequence[int] = (0, 0, 0),
) -> EvaluationCounts:
    """The counts of one block.

    Args:
        truth, pred: integer (z, y, x) ids >= 0 of one shape.
        probs: None, or (z, y, x) foreground probabilities (any dtype, see :func:`to_units`).
        offset: (z, y, x) of the block's first voxel in the volume (for the bounding boxes).
    """
    ov = _slab_overlaps(truth, pred)
    boxes_t, boxes_p = block_boxes(truth, offset), block_boxes(pred, offset)
    if probs is None:
        return EvaluationCounts(ov, boxes_t, boxes_p)
    inside = pred != 0
    ids, sums = _group_sum(pred[inside].astype(np.uint64), to_units(probs[inside]))
    return EvaluationCounts(ov, boxes_t, boxes_p, ids, sums)


def _channel0(probs: Any) -> tuple[int, ...]:
    return (0,) if len(probs.shape) == 4 else ()


def check_probs(probs: Any, shape: Sequence[int], where: str) -> None:
    """Refuse probabilities that are not (C, Z, Y, X) or (Z, Y, X) of the labels' (Z, Y, X)."""
    if len(probs.shape) not in (3, 4) or tuple(probs.shape[-3:]) != tuple(shape):
        raise ValueError(
            f"probabilities {where} have shape {tuple(probs.shape)}; need (C, Z, Y, X) or "
            f"(Z, Y, X) with (Z, Y, X) = {tuple(shape)}, the prediction's"
        )
    if np.dtype(probs.dtype).kind not in "uf":
        raise ValueError(f"probabilities {where} have dtype {probs.dtype}; need uint or float")


def count_slabs(
    truth: LabelVolume, pred: LabelVolume, probs: Any | None = None, slab: int = 32
) -> EvaluationCounts:
    """The counts of two (Z, Y, X) label volumes (numpy or zarr), read z-slab by z-slab.

    Args:
        truth, pred: integer ids, 0 = background, of one shape.
        probs: None, or probabilities (C, Z, Y, X) (channel 0 is the foreground) or (Z, Y, X).
        slab: z-slices read at a time; memory is about one slab of each volume.
    """
    _validate_volumes(truth, pred, slab)
    if probs is not None:
        check_probs(probs, truth.shape, "")
    parts = []
    for z0 in range(0, truth.shape[0], slab):
        z = slice(z0, z0 + slab)
        p = None if probs is None else np.asarray(probs[(*_channel0(probs), z)])
        parts.append(count_block(np.asarray(truth[z]), np.asarray(pred[z]), p, (z0, 0, 0)))
    return combine(parts)


def counts_task(block: Any, truth: str, pred: str, probs: str | None) -> EvaluationCounts:
    """The counts of one :class:`~mitoseg.geometry.Block` of zarr volumes (a Dask task)."""
    from mitoseg.decode.blockwise import store

    roi = block.write_roi
    p = None
    if probs is not None:
        four_d = len(store.open_array(probs).shape) == 4
        p = store.read(probs, roi, slice(0, 1))[0] if four_d else store.read(probs, roi)
    return count_block(store.read(truth, roi), store.read(pred, roi), p, roi.offset)


def count_blocks(
    truth: str | Path,
    pred: str | Path,
    probs: str | Path | None = None,
    block_shape: Sequence[int] = (64, 512, 512),
    client: Any = None,
    progress: bool = False,
) -> EvaluationCounts:
    """:func:`count_slabs` of zarr volumes, block by block (on Dask when ``client`` is given):
    memory follows the block, and the counts are identical."""
    from mitoseg.decode.blockwise import store
    from mitoseg.decode.blockwise.cluster import run_blocks
    from mitoseg.evaluate.blockwise import _grid

    paths = [str(Path(p).absolute()) for p in (truth, pred)]
    probs_path = None if probs is None else str(Path(probs).absolute())
    shape = store.open_array(paths[0]).shape
    _validate_volumes(store.open_array(paths[0]), store.open_array(paths[1]), 1)
    if probs_path is not None:
        check_probs(store.open_array(probs_path), shape, str(probs))
    grid = _grid(*paths, block_shape)
    parts = run_blocks(
        client, "evaluate", counts_task, list(grid), *paths, probs_path, progress=progress
    )
    return combine(parts)
