"""Instance segmentation metrics from one streamed pass over the voxels (numpy only).

``overlaps`` (:mod:`mitoseg.evaluate.contingency`) reads two label volumes (numpy or zarr)
z-slab by z-slab and keeps only the contingency of label pairs, so memory is bounded by one slab
plus the number of distinct pairs. Every metric is then computed from that table alone:

- ``average_precision``: the MitoEM challenge AP (predictions ranked by score, default size;
  greedy matching by IoU; COCO 101-point interpolation; small / medium / large breakdown);
  ``mean_average_precision`` its mean over IoU 0.5:0.95 (AP .5:.95).
- ``matching_accuracy``: one-to-one matching at an IoU threshold, TP / (TP + FP + FN) (the
  current MitoEM leaderboard metric at IoU 0.75), with precision, recall and F1.
- ``rand_voi``: adapted Rand error and variation of information, over voxels whose ground truth
  is an object.

Conventions for empty inputs: an AP is -1.0 when no ground-truth instance falls in its size range
(as in the MitoEM reference code; with ground truth but no prediction it is 0.0). A ratio with an
empty denominator elsewhere is 1.0 (nothing to get wrong), as in ``mitoseg.evaluate.semantic``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from mitoseg.evaluate.contingency import LabelVolume, Overlaps, _group_sum, overlaps

__all__ = [  # LabelVolume, Overlaps and overlaps stay importable from here
    "AP_THRESHOLDS",
    "INSTANCE_SCORE_COLUMNS",
    "SIZE_RANGES",
    "LabelVolume",
    "Overlaps",
    "average_precision",
    "instance_scores",
    "matched_pairs",
    "matching_accuracy",
    "mean_average_precision",
    "overlaps",
    "rand_voi",
    "scores_from_overlaps",
]

# Ground-truth size ranges of the MitoEM breakdown: an instance of ``size`` voxels is in range
# (lo, hi) when lo < size <= hi, the rule of the reference code.
SIZE_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 5e3),
    "medium": (5e3, 1.5e4),
    "large": (1.5e4, math.inf),
}
# IoU thresholds of AP .5:.95.
AP_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
# The reference's recall points (0.01 * arange, not linspace, so that ties match it exactly).
_RECALL_POINTS = 0.01 * np.arange(101)

INSTANCE_SCORE_COLUMNS: tuple[str, ...] = (
    "ap75",
    "ap50",
    "accuracy75",
    "ap75_small",
    "ap75_medium",
    "ap75_large",
    "are",
    "voi_split",
    "voi_merge",
    "n_truth",
    "n_pred",
)


# --------------------------------------------------------------------------- matching


def _ratio(num: float, den: float) -> float:
    # An empty denominator means nothing to get wrong, as in mitoseg.evaluate.semantic.
    return float(num) / den if den else 1.0


def _iou_pairs(ov: Overlaps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index into truth_ids, index into pred_ids and IoU of each overlapping object pair."""
    both = (ov.pair_truth != 0) & (ov.pair_pred != 0)
    gi = np.searchsorted(ov.truth_ids, ov.pair_truth[both])
    pi = np.searchsorted(ov.pred_ids, ov.pair_pred[both])
    inter = ov.pair_counts[both]
    iou = inter / (ov.truth_sizes[gi] + ov.pred_sizes[pi] - inter).astype(np.float64)
    return gi, pi, iou


def _greedy(g: np.ndarray, p: np.ndarray) -> np.ndarray:
    """bool mask of candidate pairs (in priority order) taken when neither side is taken yet."""
    if np.unique(g).size == g.size and np.unique(p).size == p.size:
        return np.ones(g.size, dtype=bool)  # no conflict: the usual case at IoU > 0.5
    taken_g: set[int] = set()
    taken_p: set[int] = set()
    chosen = np.zeros(g.size, dtype=bool)
    for k, (a, b) in enumerate(zip(g.tolist(), p.tolist(), strict=True)):
        if a not in taken_g and b not in taken_p:
            taken_g.add(a)
            taken_p.add(b)
            chosen[k] = True
    return chosen


def matched_pairs(ov: Overlaps, iou_threshold: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one matching of :func:`matching_accuracy`: index into ``ov.truth_ids`` and
    into ``ov.pred_ids`` of each matched pair, intp (M,)."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    gi, pi, iou = _iou_pairs(ov)
    cand = iou >= iou_threshold
    g, p, v = gi[cand], pi[cand], iou[cand]
    order = np.lexsort((p, g, -v))
    g, p = g[order], p[order]
    chosen = _greedy(g, p)
    return g[chosen], p[chosen]


def matching_accuracy(ov: Overlaps, iou_threshold: float = 0.75) -> dict[str, float]:
    """One-to-one matching of instances with IoU >= ``iou_threshold``.

    Above 0.5 an instance can overlap at most one other with such an IoU, so the matching is
    unique. At or below 0.5 it is greedy: pairs by decreasing IoU (ties: smaller truth id, then
    smaller pred id), each taken when neither instance is matched yet.

    Returns:
        tp, fp (unmatched predictions), fn (unmatched truth), accuracy = tp / (tp + fp + fn),
        precision, recall, f1; ratios with an empty denominator are 1.0.
    """
    tp = int(matched_pairs(ov, iou_threshold)[0].size)
    fp, fn = ov.n_pred - tp, ov.n_truth - tp
    return {
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
        "accuracy": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


# --------------------------------------------------------------------------- average precision


def _pred_order(ov: Overlaps, scores: Mapping[int, float] | None) -> np.ndarray:
    """Indices into pred_ids by decreasing score, ties by increasing id."""
    if scores is None:
        values = ov.pred_sizes.astype(np.float64)
    else:
        missing = [int(i) for i in ov.pred_ids if int(i) not in scores]
        if missing:
            raise ValueError(f"scores lacks {len(missing)} predicted ids, e.g. {missing[:5]}")
        values = np.array([float(scores[int(i)]) for i in ov.pred_ids], dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("scores must be finite")
    return np.lexsort((ov.pred_ids, -values))


def _interpolated_ap(tp: np.ndarray, fp: np.ndarray, n_truth: int) -> float:
    """COCO 101-point interpolated precision; tp, fp: bool (D,) in rank order; n_truth > 0."""
    if tp.size == 0:
        return 0.0
    tp_sum, fp_sum = np.cumsum(tp, dtype=np.float64), np.cumsum(fp, dtype=np.float64)
    recall = tp_sum / n_truth
    precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
    q = np.where(idx < precision.size, precision[np.minimum(idx, precision.size - 1)], 0.0)
    return float(np.mean(q))


def _ap_in_range(
    ov: Overlaps,
    rank: np.ndarray,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    t: float,
    size_range: tuple[float, float],
) -> float:
    """AP at IoU ``t`` for truth with lo < size <= hi, with the MitoEM reference's range rules."""
    gi, pi, iou = pairs
    lo, hi = size_range
    g_in = (ov.truth_sizes > lo) & (ov.truth_sizes <= hi)
    if not g_in.any():
        return -1.0
    p_in = (ov.pred_sizes > lo) & (ov.pred_sizes <= hi)
    # A prediction overlapping any in-range truth is matched among those only; one overlapping
    # only out-of-range truth may match that, and is then ignored rather than counted.
    has_in = np.zeros(ov.n_pred, dtype=bool)
    has_in[pi[g_in[gi]]] = True
    cand = (iou >= t) & (g_in[gi] | ~has_in[pi])
    g, p, v = gi[cand], pi[cand], iou[cand]
    order = np.lexsort((g, -v, rank[p]))
    g, p = g[order], p[order]
    chosen = _greedy(g, p)
    match = np.full(ov.n_pred, -1, dtype=np.intp)
    match[p[chosen]] = g[chosen]
    matched = match >= 0
    tp = matched & g_in[np.maximum(match, 0)]
    fp = ~matched & p_in
    by_rank = np.argsort(rank)
    return _interpolated_ap(tp[by_rank], fp[by_rank], int(g_in.sum()))


def average_precision(
    ov: Overlaps,
    iou_thresholds: Sequence[float] = (0.5, 0.75),
    scores: Mapping[int, float] | None = None,
    size_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, float]:
    """Average precision as the MitoEM challenge evaluation defines it.

    Predictions are ranked by decreasing score (default: size in voxels; ties by increasing id,
    where the reference's order is unspecified); each in turn takes the not-yet-matched
    ground-truth instance of highest IoU (ties: smaller id) and is a true positive when that
    IoU >= the threshold. Precision tp / (tp + fp + eps), as in the reference, is interpolated
    COCO-style at 101 recall points. Size breakdown (small <= 5e3 < medium <= 1.5e4 < large
    voxels), with the reference's rules: truth outside the range is ignored; a prediction that
    overlaps some in-range truth is matched among those only, one that overlaps none may match
    out-of-range truth and is then ignored; an unmatched prediction is ignored when its own
    size is outside the range.

    Above IoU 0.5 this equals the reference code (a match is unique). At 0.5 and below the
    reference lets several predictions match one truth instance; here each is matched once,
    as in COCO, so recall never exceeds 1.

    Args:
        ov: contingency from ``overlaps``.
        iou_thresholds: IoU thresholds in (0, 1].
        scores: predicted id -> confidence for every predicted id (extra ids are ignored).
        size_ranges: {name: (lo, hi)} of the breakdown, truth of lo < size <= hi voxels;
            default :data:`SIZE_RANGES` (MitoEM's).

    Returns:
        ``ap{100 t}`` and ``ap{100 t}_{name}`` for each threshold t and size range, e.g.
        ``ap75``, ``ap75_small``; -1.0 where no truth instance is in the size range.
    """
    for t in iou_thresholds:
        if not 0.0 < t <= 1.0:
            raise ValueError(f"iou_thresholds must be in (0, 1], got {t}")
    rank = np.empty(ov.n_pred, dtype=np.intp)
    rank[_pred_order(ov, scores)] = np.arange(ov.n_pred)
    pairs = _iou_pairs(ov)
    out: dict[str, float] = {}
    for t in iou_thresholds:
        name = f"ap{100 * t:g}"
        out[name] = _ap_in_range(ov, rank, pairs, t, (0.0, math.inf))
        for label, size_range in (SIZE_RANGES if size_ranges is None else size_ranges).items():
            out[f"{name}_{label}"] = _ap_in_range(ov, rank, pairs, t, size_range)
    return out


def mean_average_precision(
    ov: Overlaps,
    scores: Mapping[int, float] | None = None,
    size_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, float]:
    """AP .5:.95, the MitoEM (and COCO) summary: the mean of :func:`average_precision` over
    the IoU thresholds 0.5, 0.55, ..., 0.95 (:data:`AP_THRESHOLDS`).

    Returns:
        ``ap50_95`` and ``ap50_95_{name}`` for each size range; -1.0 where no truth instance
        is in the range.
    """
    ranges = SIZE_RANGES if size_ranges is None else size_ranges
    aps = average_precision(ov, AP_THRESHOLDS, scores, ranges)
    out = {}
    for suffix in ("", *(f"_{name}" for name in ranges)):
        values = [aps[f"ap{100 * t:g}{suffix}"] for t in AP_THRESHOLDS]
        out[f"ap50_95{suffix}"] = -1.0 if values[0] == -1.0 else float(np.mean(values))
    return out


# --------------------------------------------------------------------------- Rand and VOI


def rand_voi(ov: Overlaps) -> dict[str, float]:
    """Adapted Rand error and variation of information over voxels whose truth is an object.

    Voxels with truth 0 are ignored (skimage's ``ignore_labels=(0,)``, used here for both
    metrics); predicted 0 inside a truth object counts as one predicted segment, as in skimage.
    ``are_precision`` is the fraction of voxel pairs joined in the prediction that are joined
    in the truth (it falls with false merges); ``are_recall`` the converse. skimage returns
    these two swapped (scikit-image issue #6485); ``are`` is the same.

    Returns:
        are, are_precision, are_recall in [0, 1]; voi_split = H(pred | truth) and
        voi_merge = H(truth | pred) in bits (skimage's variation_of_information order).
    """
    inside = ov.pair_truth != 0
    c = ov.pair_counts[inside].astype(np.float64)
    n = float(c.sum())
    a = ov.truth_sizes.astype(np.float64)
    pred_ids, b = _group_sum(ov.pair_pred[inside], c)
    joined = float(c @ c) - n
    joined_truth, joined_pred = float(a @ a) - n, float(b @ b) - n
    out = {
        "are": 1.0 - _ratio(joined, 0.5 * (joined_truth + joined_pred)),
        "are_precision": _ratio(joined, joined_pred),
        "are_recall": _ratio(joined, joined_truth),
        "voi_split": 0.0,
        "voi_merge": 0.0,
    }
    if n > 0:
        a_of = a[np.searchsorted(ov.truth_ids, ov.pair_truth[inside])]
        b_of = b[np.searchsorted(pred_ids, ov.pair_pred[inside])]
        p = c / n
        # 0.0 + : a perfect split / merge is 0.0, not the -0.0 of negating a zero sum
        out["voi_split"] = 0.0 + float(-(p * np.log2(c / a_of)).sum())
        out["voi_merge"] = 0.0 + float(-(p * np.log2(c / b_of)).sum())
    return out


# --------------------------------------------------------------------------- all together


def scores_from_overlaps(
    ov: Overlaps,
    scores: Mapping[int, float] | None = None,
    size_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, float]:
    """AP at IoU 0.5 and 0.75 (with size breakdown), matching at 0.75, Rand and VOI, counts.

    Keys: ``ap50``, ``ap75``, ``ap{50,75}_{small,medium,large}`` (the names of
    ``size_ranges``, default :data:`SIZE_RANGES`), ``accuracy75``, ``precision75``,
    ``recall75``, ``f1_75``, ``tp75``, ``fp75``, ``fn75``, ``are``, ``are_precision``,
    ``are_recall``, ``voi_split``, ``voi_merge``, ``n_truth``, ``n_pred``.
    """
    out = {"n_truth": float(ov.n_truth), "n_pred": float(ov.n_pred)}
    out.update(average_precision(ov, (0.5, 0.75), scores, size_ranges))
    for key, value in matching_accuracy(ov, 0.75).items():
        out[f"{key}_75" if key == "f1" else f"{key}75"] = value
    out.update(rand_voi(ov))
    return out


def instance_scores(
    truth: LabelVolume,
    pred: LabelVolume,
    slab: int = 32,
    scores: Mapping[int, float] | None = None,
) -> dict[str, float]:
    """All instance metrics of ``pred`` against ``truth`` from one pass over z-slabs.

    Args:
        truth: integer (Z, Y, X) ground-truth instance ids, 0 = background; numpy or zarr.
        pred: integer (Z, Y, X) predicted instance ids, same shape.
        slab: z-slices read at a time.
        scores: optional predicted id -> confidence for AP; default instance size.

    Returns:
        A flat dict of floats, see ``scores_from_overlaps``; ``INSTANCE_SCORE_COLUMNS`` lists
        the main keys in display order.
    """
    return scores_from_overlaps(overlaps(truth, pred, slab), scores)
