"""Straightforward whole-volume instance metrics: oracles for tests and references for benchmarks.

- ``overlaps_whole``: the contingency table from np.unique over one combined key per voxel of
  both whole volumes (several 8-byte copies of the volume in memory).
- ``instance_scores_whole``: that table, the same matching as ``mitoseg.evaluate.instance``, and
  skimage's adapted_rand_error / variation_of_information on the whole volumes.
- ``average_precision_bruteforce`` / ``matching_bruteforce``: IoU of every instance pair from
  masks, matching in Python loops; for tiny volumes only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from skimage.metrics import adapted_rand_error, variation_of_information

from mitoseg.evaluate.contingency import Overlaps
from mitoseg.evaluate.instance import SIZE_RANGES, scores_from_overlaps


def overlaps_whole(truth: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Contingency via np.unique of ``truth * (max(pred) + 1) + pred`` over all voxels.

    Args:
        truth, pred: integer (Z, Y, X) instance ids (ids below 2**32), 0 = background.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth shape {truth.shape} != pred shape {pred.shape}")
    base = np.uint64(int(pred.max(initial=0)) + 1)
    keys = truth.astype(np.uint64) * base + pred.astype(np.uint64)
    keys, counts = np.unique(keys, return_counts=True)
    return Overlaps(keys // base, keys % base, counts, truth.size)


def rand_voi_skimage(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """skimage's adapted Rand error and VOI with truth 0 ignored, in our key names.

    skimage returns (are, recall, precision) in the sense of ``mitoseg.evaluate.instance.rand_voi``
    (scikit-image issue #6485), so the two are swapped back here.
    """
    are, prec_sk, rec_sk = adapted_rand_error(truth, pred, ignore_labels=(0,))
    split, merge = variation_of_information(truth, pred, ignore_labels=(0,))
    return {
        "are": float(are),
        "are_precision": float(rec_sk),
        "are_recall": float(prec_sk),
        "voi_split": float(split),
        "voi_merge": float(merge),
    }


def instance_scores_whole(
    truth: np.ndarray,
    pred: np.ndarray,
    scores: Mapping[int, float] | None = None,
    skimage_rand_voi: bool = True,
) -> dict[str, float]:
    """``instance_scores`` the straightforward way: whole volumes in memory.

    With ``skimage_rand_voi`` the Rand / VOI keys come from skimage on the whole volumes,
    otherwise from the whole-volume contingency table.
    """
    out = scores_from_overlaps(overlaps_whole(truth, pred), scores)
    if skimage_rand_voi:
        out.update(rand_voi_skimage(np.asarray(truth), np.asarray(pred)))
    return out


# --------------------------------------------------------------------------- brute force


def instances_bruteforce(labels: np.ndarray) -> dict[int, int]:
    """Non-zero id -> voxel count."""
    ids, sizes = np.unique(labels[labels != 0], return_counts=True)
    return {int(i): int(s) for i, s in zip(ids, sizes, strict=True)}


def pair_ious_bruteforce(truth: np.ndarray, pred: np.ndarray) -> dict[int, dict[int, float]]:
    """pred id -> {truth id: IoU} for every overlapping pair, from masks."""
    out: dict[int, dict[int, float]] = {}
    for p in instances_bruteforce(pred):
        pm = pred == p
        out[p] = {}
        for g in instances_bruteforce(truth):
            gm = truth == g
            inter = int(np.count_nonzero(pm & gm))
            if inter:
                out[p][g] = inter / int(np.count_nonzero(pm | gm))
    return out


def _outcomes(
    order: list[int],
    gt: dict[int, int],
    dt: dict[int, int],
    ious: dict[int, dict[int, float]],
    t: float,
    inside: Callable,
) -> list[str]:
    """'tp', 'fp' or 'ignore' for each prediction in rank order."""
    matched: set[int] = set()
    outcome = []
    for p in order:
        in_range = {g: v for g, v in ious[p].items() if inside(gt[g])}
        candidates = in_range if in_range else ious[p]
        free = [(v, -g) for g, v in candidates.items() if g not in matched and v >= t]
        if free:
            g = -max(free)[1]
            matched.add(g)
            outcome.append("tp" if inside(gt[g]) else "ignore")
        else:
            outcome.append("fp" if inside(dt[p]) else "ignore")
    return outcome


def interpolated_ap_bruteforce(outcome: list[str], n_gt: int) -> float:
    """101-point interpolated precision of 'tp' / 'fp' / 'ignore' outcomes in rank order."""
    tp = fp = 0
    curve = []
    for o in outcome:
        tp += o == "tp"
        fp += o == "fp"
        curve.append((tp / n_gt, tp / (tp + fp + np.spacing(1))))
    total = 0.0
    for r in 0.01 * np.arange(101):
        total += max((pr for rc, pr in curve if rc >= r), default=0.0)
    return total / 101


def average_precision_bruteforce(
    truth: np.ndarray,
    pred: np.ndarray,
    iou_thresholds: Sequence[float] = (0.5, 0.75),
    scores: Mapping[int, float] | None = None,
    size_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, float]:
    """MitoEM AP (see ``mitoseg.evaluate.instance.average_precision``) with masks and loops."""
    gt, dt = instances_bruteforce(truth), instances_bruteforce(pred)
    ious = pair_ious_bruteforce(truth, pred)
    score = dict(scores) if scores is not None else dt
    order = sorted(dt, key=lambda i: (-score[i], i))
    named = SIZE_RANGES if size_ranges is None else size_ranges
    ranges = {"": (0.0, math.inf)} | {f"_{k}": v for k, v in named.items()}
    out = {}
    for t in iou_thresholds:
        for suffix, (lo, hi) in ranges.items():

            def inside(size: int, lo: float = lo, hi: float = hi) -> bool:
                return lo < size <= hi

            n_gt = sum(inside(s) for s in gt.values())
            ap = -1.0
            if n_gt:
                ap = interpolated_ap_bruteforce(_outcomes(order, gt, dt, ious, t, inside), n_gt)
            out[f"ap{100 * t:g}{suffix}"] = ap
    return out


def matching_bruteforce(
    truth: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.75
) -> tuple[int, int, int]:
    """(tp, fp, fn) of a greedy one-to-one matching by decreasing IoU, from masks."""
    gt, dt = instances_bruteforce(truth), instances_bruteforce(pred)
    pairs = sorted(
        (-v, g, p) for p, row in pair_ious_bruteforce(truth, pred).items() for g, v in row.items()
    )
    used_g: set[int] = set()
    used_p: set[int] = set()
    for neg_iou, g, p in pairs:
        if -neg_iou >= iou_threshold and g not in used_g and p not in used_p:
            used_g.add(g)
            used_p.add(p)
    tp = len(used_g)
    return tp, len(dt) - tp, len(gt) - tp
