"""The scores of ``mitoseg-evaluate`` from the counts of one pass (numpy only).

:func:`score_counts` turns :class:`~mitoseg.evaluate.counts.EvaluationCounts` into the semantic
scores (any input) and, for instances, the MitoEM instance scores (AP .5:.95, AP-50, AP-75 with
the size breakdown, accuracy at IoU 0.75, ARE, VOI) and the per-object classification
(:func:`mitoseg.evaluate.objects.classify_objects`). Every number comes from the contingency
table alone, so in-memory and blockwise passes give the same scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mitoseg.evaluate.contingency import Overlaps
from mitoseg.evaluate.instance import SIZE_RANGES, mean_average_precision, scores_from_overlaps
from mitoseg.evaluate.objects import ObjectErrors, classify_objects
from mitoseg.evaluate.semantic import Confusion, semantic_scores

SizeRanges = dict[str, tuple[float, float]]

# Shown in the printed table, in this order (the files hold every score).
INSTANCE_COLUMNS = ("ap50_95", "ap50", "ap75", "accuracy75", "are", "voi_split", "voi_merge")
SIZE_COLUMNS = ("ap50_95", "ap75")  # shown per size range
MASK_COLUMNS = ("fg_iou", "mean_iou", "precision", "recall", "f1")


def size_ranges(bounds: Sequence[float] | None = None) -> SizeRanges:
    """Size ranges of the AP breakdown from the upper bounds of small and medium, in voxels
    (truth of lo < size <= hi); None: MitoEM's (5e3, 1.5e4).

    Raises:
        ValueError: not two bounds with 0 < small < medium.
    """
    if bounds is None:
        return dict(SIZE_RANGES)
    if len(bounds) != 2 or not 0 < float(bounds[0]) < float(bounds[1]):
        raise ValueError(f"size ranges need 0 < small < medium voxels, got {list(bounds)}")
    small, medium = float(bounds[0]), float(bounds[1])
    return {"small": (0.0, small), "medium": (small, medium), "large": (medium, math.inf)}


def confusion(ov: Overlaps) -> Confusion:
    """Foreground confusion counts (non-zero = foreground) of the two labellings of ``ov``."""
    truth_fg, pred_fg = ov.pair_truth != 0, ov.pair_pred != 0
    counts = ov.pair_counts
    return Confusion(
        tp=int(counts[truth_fg & pred_fg].sum()),
        fp=int(counts[~truth_fg & pred_fg].sum()),
        fn=int(counts[truth_fg & ~pred_fg].sum()),
        tn=int(ov.background),
    )


@dataclass(frozen=True)
class Evaluation:
    """Scores (flat floats) and, for instances, the classification of every object."""

    scores: dict[str, float]
    errors: ObjectErrors | None


def score_counts(
    ov: Overlaps,
    *,
    masks: bool,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    match_iou: float = 0.75,
    confidence: Mapping[int, float] | None = None,
) -> Evaluation:
    """All scores of a prediction against ground truth from their contingency table.

    Args:
        ov: the contingency table.
        masks: score foreground masks only (non-zero = foreground): ``fg_iou``, ``bg_iou``,
            ``mean_iou``, ``precision``, ``recall``, ``f1``, ``accuracy``.
        ranges: size ranges of the AP breakdown (default MitoEM's, :func:`size_ranges`).
        match_iou: IoU of a match in the per-object classification.
        confidence: predicted id -> AP ranking score; None ranks by size (MitoEM's default).

    Returns:
        The semantic scores and, unless ``masks``, the instance scores
        (:func:`~mitoseg.evaluate.instance.scores_from_overlaps`, ``ap50_95`` with its size
        breakdown) and the object counts ``truth_{outcome}`` / ``pred_{outcome}``.
    """
    semantic = semantic_scores(confusion(ov))
    if masks:
        return Evaluation(semantic, None)
    ranges = size_ranges() if ranges is None else dict(ranges)
    instance = scores_from_overlaps(ov, confidence, ranges)
    scores = {k: instance.pop(k) for k in ("n_truth", "n_pred")}
    scores |= mean_average_precision(ov, confidence, ranges) | instance | semantic
    errors = classify_objects(ov, match_iou)
    scores |= {k: float(v) for k, v in errors.counts().items()}
    return Evaluation(scores, errors)
