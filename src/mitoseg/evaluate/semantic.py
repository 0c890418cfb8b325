"""Semantic segmentation metrics (pure numpy), streamed over z-slabs of large volumes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mitoseg.decode.masks import BinarizeMedian, iter_slabs


@dataclass(frozen=True)
class Confusion:
    """Voxel counts of a binary prediction against a binary ground truth."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @classmethod
    def from_masks(cls, pred: np.ndarray, truth: np.ndarray) -> Confusion:
        """pred, truth: bool (or 0/1) arrays of equal shape."""
        if pred.shape != truth.shape:
            raise ValueError(f"prediction shape {pred.shape} != ground truth shape {truth.shape}")
        pred, truth = pred.astype(bool, copy=False), truth.astype(bool, copy=False)
        tp = int(np.count_nonzero(pred & truth))
        n_pred, n_truth = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
        fp, fn = n_pred - tp, n_truth - tp
        return cls(tp, fp, fn, pred.size - tp - fp - fn)

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            *(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True))
        )


def _ratio(num: int, den: int) -> float:
    # An empty denominator means nothing to get wrong (e.g. IoU of two empty masks): score 1.
    return float(num) / den if den else 1.0


def semantic_scores(c: Confusion) -> dict[str, float]:
    """Foreground IoU, background IoU, their mean, precision, recall, F1 and accuracy."""
    fg_iou = _ratio(c.tp, c.tp + c.fp + c.fn)
    bg_iou = _ratio(c.tn, c.tn + c.fp + c.fn)
    precision = _ratio(c.tp, c.tp + c.fp)
    recall = _ratio(c.tp, c.tp + c.fn)
    f1 = _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)
    total = c.tp + c.fp + c.fn + c.tn
    return {
        "fg_iou": fg_iou,
        "bg_iou": bg_iou,
        "mean_iou": (fg_iou + bg_iou) / 2.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": _ratio(c.tp + c.tn, total),
    }


def evaluate_thresholds(
    probs: Any,
    labels: Any,
    thresholds: Sequence[float],
    median_size: int = 0,
    slab: int = 32,
) -> dict[float, dict[str, float]]:
    """Scores of ``BinarizeMedian(t, median_size)`` for every threshold t, one pass over slabs.

    Args:
        probs: array-like (C, Z, Y, X), uint8 (p x 255) or float in [0, 1]; channel 0 foreground.
        labels: array-like (Z, Y, X); non-zero is foreground.
        thresholds: probabilities in [0, 1].
        median_size: odd median box edge, 0 for none.
        slab: z-slices per read; memory is O(slab x Y x X).

    Returns:
        {threshold: scores} with the keys of :func:`semantic_scores`.
    """
    if tuple(probs.shape[1:]) != tuple(labels.shape):
        raise ValueError(
            f"probabilities (Z, Y, X) {tuple(probs.shape[1:])} and labels "
            f"{tuple(labels.shape)} differ"
        )
    decoders = [BinarizeMedian(float(t), median_size) for t in thresholds]
    totals = {d.threshold: Confusion() for d in decoders}
    depth = probs.shape[1]
    for read, crop in iter_slabs(depth, slab, median_size // 2):
        block = np.asarray(probs[:1, read])
        z = slice(read.start + crop.start, read.start + crop.stop)
        truth = np.asarray(labels[z]) > 0
        for decoder in decoders:
            pred = decoder(block)[crop]
            totals[decoder.threshold] += Confusion.from_masks(pred, truth)
    return {t: semantic_scores(c) for t, c in totals.items()}


def best_threshold(scores: Mapping[float, Mapping[str, float]], key: str = "fg_iou") -> float:
    """The threshold with the highest ``key`` (the lowest threshold among ties)."""
    return max(sorted(scores), key=lambda t: scores[t][key])


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table; floats with 4 decimals."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
