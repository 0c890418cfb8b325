"""Scores of volumes larger than memory: contingency counts per block, summed (numpy, zarr).

Every instance metric of :mod:`mitoseg.evaluate.instance` is a function of the table of
(truth id, pred id) voxel counts, and counts of disjoint blocks add up, so the blockwise scores
are identical to the in-memory ones. The client holds one table per block until the sum: a few
numbers per object pair, never voxels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mitoseg.decode.blockwise import store
from mitoseg.decode.blockwise.cluster import RunLog, run_blocks
from mitoseg.evaluate.contingency import Overlaps, _slab_overlaps
from mitoseg.evaluate.instance import scores_from_overlaps
from mitoseg.evaluate.semantic import Confusion
from mitoseg.geometry import Block, BlockGrid, block_grid


def overlaps_task(block: Block, truth: str, pred: str) -> Overlaps:
    """The contingency table of one block."""
    return _slab_overlaps(store.read(truth, block.write_roi), store.read(pred, block.write_roi))


def confusion_task(block: Block, truth: str, pred: str) -> Confusion:
    """Foreground confusion counts of one block (non-zero = foreground)."""
    truth_mask = store.read(truth, block.write_roi) != 0
    return Confusion.from_masks(store.read(pred, block.write_roi) != 0, truth_mask)


def sum_overlaps(tables: list[Overlaps]) -> Overlaps:
    """The table of the union of disjoint blocks, in one sort (``+`` re-sorts at each step)."""
    if not tables:
        return Overlaps.empty()
    parts = zip(*(t._pairs() for t in tables), strict=True)
    return Overlaps(*(np.concatenate(p) for p in parts), sum(t.n_voxels for t in tables))


def _grid(truth: str, pred: str, block_shape: Any) -> BlockGrid:
    shape_t, shape_p = store.open_array(truth).shape, store.open_array(pred).shape
    if tuple(shape_t) != tuple(shape_p) or len(shape_t) != 3:
        raise ValueError(f"truth {tuple(shape_t)} and pred {tuple(shape_p)} differ or are not 3D")
    return block_grid(shape_p, block_shape, chunks=store.chunks_of(pred))


def _score_blocks(
    task: Any,
    truth: str | Path,
    pred: str | Path,
    block_shape: Any,
    client: Any,
    run_log: RunLog | None,
    progress: bool,
) -> list[Any]:
    """``task(block, truth, pred)`` for every block of the two volumes (zarr paths)."""
    truth, pred = str(Path(truth).absolute()), str(Path(pred).absolute())
    grid = _grid(truth, pred, block_shape)
    return run_blocks(
        client, "score", task, list(grid), truth, pred, run_log=run_log, progress=progress
    )


def blockwise_overlaps(
    truth: str | Path,
    pred: str | Path,
    block_shape: Any = (64, 512, 512),
    client: Any = None,
    run_log: RunLog | None = None,
    progress: bool = True,
) -> Overlaps:
    """Contingency of two (Z, Y, X) integer label volumes (zarr paths), block by block.

    Returns:
        The table ``mitoseg.evaluate.contingency.overlaps(truth, pred)`` gives, identical.
    """
    tables = _score_blocks(overlaps_task, truth, pred, block_shape, client, run_log, progress)
    return sum_overlaps(tables)


def blockwise_instance_scores(
    truth: str | Path, pred: str | Path, block_shape: Any = (64, 512, 512), client: Any = None
) -> dict[str, float]:
    """``mitoseg.evaluate.instance.instance_scores`` of two label volumes, block by block
    (identical)."""
    return scores_from_overlaps(blockwise_overlaps(truth, pred, block_shape, client))


def blockwise_confusion(
    truth: str | Path,
    pred: str | Path,
    block_shape: Any = (64, 512, 512),
    client: Any = None,
    run_log: RunLog | None = None,
    progress: bool = True,
) -> Confusion:
    """Foreground confusion of two (Z, Y, X) volumes (non-zero = foreground), block by block."""
    parts = _score_blocks(confusion_task, truth, pred, block_shape, client, run_log, progress)
    return sum(parts, Confusion())


def adjusted_rand_index(ov: Overlaps) -> float:
    """Adjusted Rand index of two labellings over all voxels, background (0) as one more label.

    1.0 for identical partitions (up to relabelling); about 0 for independent ones. Computed in
    float64 from the contingency table (Hubert and Arabie's formula).
    """

    def pairs(counts: np.ndarray) -> float:
        counts = counts.astype(np.float64)
        return float((counts * (counts - 1)).sum() / 2)

    n = ov.n_voxels
    background = np.array([ov.background], np.int64)
    joint = pairs(np.concatenate([ov.pair_counts, background]))
    truth_zero = ov.n_voxels - int(ov.truth_sizes.sum())
    pred_zero = ov.n_voxels - int(ov.pred_sizes.sum())
    rows = pairs(np.concatenate([ov.truth_sizes, [truth_zero]]))
    cols = pairs(np.concatenate([ov.pred_sizes, [pred_zero]]))
    total = n * (n - 1) / 2
    if total == 0:
        return 1.0
    expected = rows * cols / total
    top = (rows + cols) / 2
    if top == expected:
        return 1.0
    return (joint - expected) / (top - expected)
