"""What happened to each object: matched, split, merged, partial or missed ground truth, and
fragments, mergers and false positives among the predictions (numpy only).

One function, :func:`classify_objects`, decides from the contingency table alone; the per-object
table of ``mitoseg-evaluate`` (:func:`object_rows`) and the error overlay of ``mitoseg-view
--png`` (:func:`mitoseg.analyze.plots.error_panel`) both show its result.

The rules, with "A lies in B" meaning that more than half of A's voxels are in B:

- a ground-truth object is ``matched`` when the one-to-one matching at ``iou_threshold`` (that of
  ``accuracy75``, :func:`mitoseg.evaluate.instance.matched_pairs`) pairs it; else ``merged``
  when it lies in a prediction in which another ground-truth object lies too; else ``split`` when
  two or more predictions lie in it (its fragments); else ``missed`` when no prediction lies in
  it and it lies in none; else ``partial`` (one prediction covers it, at IoU below the threshold);
- a prediction is ``matched`` when paired; else ``merged`` when two or more ground-truth objects
  lie in it; else a ``fragment`` when it lies in a ground-truth object that is split or matched
  (an extra piece); else ``partial`` when it lies in one ground-truth object or one lies in it;
  else a ``false_positive`` (mostly background).

So the matched ground-truth objects are ``tp75`` at the default threshold, and the unmatched
predictions are ``fp75``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mitoseg.analyze.boxes import ObjectExtents
from mitoseg.evaluate.contingency import Overlaps
from mitoseg.evaluate.instance import matched_pairs

OUTCOMES: tuple[str, ...] = (
    "matched",
    "split",
    "merged",
    "partial",
    "missed",
    "fragment",
    "false_positive",
)
TRUTH_OUTCOMES = ("matched", "split", "merged", "partial", "missed")
PRED_OUTCOMES = ("matched", "merged", "fragment", "partial", "false_positive")
NO_OBJECT = 255
"""The code :meth:`SideErrors.codes_of` gives background and unknown ids."""
_CODE = {name: i for i, name in enumerate(OUTCOMES)}

OBJECT_COLUMNS: tuple[str, ...] = (
    "kind",
    "id",
    "voxels",
    "outcome",
    "match",
    "best_id",
    "best_iou",
    "related",
    "confidence",
    "z0",
    "y0",
    "x0",
    "z1",
    "y1",
    "x1",
)
"""Columns of the per-object table; ``related`` holds ``;``-separated ids (see
:func:`object_rows`), z0 ... x1 the half-open bounding box."""


@dataclass(frozen=True)
class SideErrors:
    """The objects of one side (ground truth or prediction).

    Attributes:
        ids: uint64 (K,) sorted non-zero ids; voxels: int64 (K,) their sizes.
        outcome: uint8 (K,) codes into :data:`OUTCOMES`.
        match: uint64 (K,) the id paired at the threshold on the other side, 0 if none.
        best: uint64 (K,) the id of highest IoU on the other side (ties: smaller id), 0 if none.
        best_iou: float64 (K,) that IoU, 0.0 if none.
        related: per object, the ids named in the table's ``related`` column.
    """

    ids: np.ndarray
    voxels: np.ndarray
    outcome: np.ndarray
    match: np.ndarray
    best: np.ndarray
    best_iou: np.ndarray
    related: tuple[tuple[int, ...], ...]

    def codes_of(self, labels: np.ndarray) -> np.ndarray:
        """uint8 outcome code of every voxel of ``labels`` (any shape, ids of this side);
        :data:`NO_OBJECT` for 0 and ids not classified."""
        flat = labels.reshape(-1).astype(np.uint64)
        codes = np.full(flat.shape, NO_OBJECT, np.uint8)
        if self.ids.size:  # ids are non-zero: background finds no equal id
            where = np.minimum(np.searchsorted(self.ids, flat), self.ids.size - 1)
            known = self.ids[where] == flat
            codes[known] = self.outcome[where[known]]
        return codes.reshape(labels.shape)

    def counts(self) -> dict[str, int]:
        """Objects per outcome name (every outcome of this side, zeros included)."""
        found = np.bincount(self.outcome, minlength=len(OUTCOMES))
        return {name: int(found[_CODE[name]]) for name in OUTCOMES}


@dataclass(frozen=True)
class ObjectErrors:
    """The result of :func:`classify_objects`."""

    truth: SideErrors
    pred: SideErrors
    iou_threshold: float

    def counts(self) -> dict[str, int]:
        """``truth_{outcome}`` and ``pred_{outcome}`` object counts."""
        t, p = self.truth.counts(), self.pred.counts()
        return {f"truth_{k}": t[k] for k in TRUTH_OUTCOMES} | {
            f"pred_{k}": p[k] for k in PRED_OUTCOMES
        }


def _best(a: np.ndarray, b: np.ndarray, iou: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """For each of ``n`` objects indexed by ``a``: the index ``b`` of highest IoU (ties: smaller
    ``b``), -1 if none, and that IoU."""
    order = np.lexsort((b, -iou, a))
    a, b, iou = a[order], b[order], iou[order]
    first = np.r_[True, a[1:] != a[:-1]] if a.size else np.zeros(0, bool)
    best, best_iou = np.full(n, -1, np.intp), np.zeros(n, np.float64)
    best[a[first]], best_iou[a[first]] = b[first], iou[first]
    return best, best_iou


def _members(owner: np.ndarray, ids: np.ndarray, n: int) -> list[tuple[int, ...]]:
    """For each of ``n`` owners, the sorted ``ids`` of the objects whose ``owner`` it is."""
    out: list[list[int]] = [[] for _ in range(n)]
    for k in np.flatnonzero(owner >= 0).tolist():
        out[int(owner[k])].append(int(ids[k]))
    return [tuple(sorted(m)) for m in out]


def _lies_in(
    a: np.ndarray, b: np.ndarray, inter: np.ndarray, sizes_a: np.ndarray, n: int
) -> np.ndarray:
    """For each of ``n`` objects indexed by ``a``: the ``b`` holding more than half of it, or -1."""
    owner = np.full(n, -1, np.intp)
    more = 2 * inter > sizes_a[a]
    owner[a[more]] = b[more]
    return owner


def _ids(side_ids: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Ids at ``index`` (-1 -> 0)."""
    out = np.zeros(index.shape, np.uint64)
    out[index >= 0] = side_ids[index[index >= 0]]
    return out


def classify_objects(ov: Overlaps, iou_threshold: float = 0.75) -> ObjectErrors:
    """Classify every ground-truth and predicted object (rules: the module docstring).

    Args:
        ov: contingency of the truth and the prediction.
        iou_threshold: IoU of a match, in (0, 1]; 0.75 as ``accuracy75``.
    """
    g_t, p_t = ov.n_truth, ov.n_pred
    mg, mp = matched_pairs(ov, iou_threshold)
    both = (ov.pair_truth != 0) & (ov.pair_pred != 0)
    gi = np.searchsorted(ov.truth_ids, ov.pair_truth[both])
    pi = np.searchsorted(ov.pred_ids, ov.pair_pred[both])
    inter = ov.pair_counts[both]
    iou = inter / (ov.truth_sizes[gi] + ov.pred_sizes[pi] - inter).astype(np.float64)
    truth_match, pred_match = np.full(g_t, -1, np.intp), np.full(p_t, -1, np.intp)
    truth_match[mg], pred_match[mp] = mp, mg
    pred_in = _lies_in(pi, gi, inter, ov.pred_sizes, p_t)  # the truth holding most of a pred
    truth_in = _lies_in(gi, pi, inter, ov.truth_sizes, g_t)  # the pred holding most of a truth
    fragments = np.bincount(pred_in[pred_in >= 0], minlength=g_t)
    contains = np.bincount(truth_in[truth_in >= 0], minlength=p_t)
    fragments_of = _members(pred_in, ov.pred_ids, g_t)  # pred ids lying in each truth
    inside_of = _members(truth_in, ov.truth_ids, p_t)  # truth ids lying in each pred

    merged = (truth_in >= 0) & (contains[np.maximum(truth_in, 0)] >= 2)
    truth_rules = [truth_match >= 0, merged, fragments >= 2, (fragments == 0) & (truth_in < 0)]
    truth_codes = [_CODE[k] for k in ("matched", "merged", "split", "missed")]
    truth_outcome = np.select(truth_rules, truth_codes, _CODE["partial"]).astype(np.uint8)
    truth_related = []
    for g in range(g_t):
        name = OUTCOMES[truth_outcome[g]]
        if name == "merged":
            others = inside_of[truth_in[g]]
            truth_related.append(tuple(i for i in others if i != int(ov.truth_ids[g])))
        elif name in ("split", "partial"):
            holder = () if truth_in[g] < 0 else (int(ov.pred_ids[truth_in[g]]),)
            truth_related.append(fragments_of[g] or holder)
        else:
            truth_related.append(())

    home = np.maximum(pred_in, 0)
    extra = (pred_in >= 0) & ((fragments[home] >= 2) | (truth_match[home] >= 0))
    pred_rules = [pred_match >= 0, contains >= 2, extra, (pred_in >= 0) | (contains == 1)]
    pred_codes = [_CODE[k] for k in ("matched", "merged", "fragment", "partial")]
    pred_outcome = np.select(pred_rules, pred_codes, _CODE["false_positive"]).astype(np.uint8)
    pred_related = []
    for p in range(p_t):
        name = OUTCOMES[pred_outcome[p]]
        if name in ("fragment", "partial") and pred_in[p] >= 0:
            pred_related.append((int(ov.truth_ids[pred_in[p]]),))
        elif name in ("merged", "partial"):
            pred_related.append(inside_of[p])
        else:
            pred_related.append(())

    best_t, iou_t = _best(gi, pi, iou, g_t)
    best_p, iou_p = _best(pi, gi, iou, p_t)
    truth = SideErrors(
        ov.truth_ids, ov.truth_sizes, truth_outcome, _ids(ov.pred_ids, truth_match),
        _ids(ov.pred_ids, best_t), iou_t, tuple(truth_related),
    )  # fmt: skip
    pred = SideErrors(
        ov.pred_ids, ov.pred_sizes, pred_outcome, _ids(ov.truth_ids, pred_match),
        _ids(ov.truth_ids, best_p), iou_p, tuple(pred_related),
    )  # fmt: skip
    return ObjectErrors(truth, pred, float(iou_threshold))


def _box(extents: ObjectExtents, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    at = np.searchsorted(extents.ids, ids)
    if ids.size and not np.array_equal(extents.ids[np.minimum(at, extents.ids.size - 1)], ids):
        raise ValueError("the bounding boxes were counted on other volumes than the overlaps")
    return extents.lo[at], extents.hi[at]


def object_rows(
    errors: ObjectErrors,
    truth_extents: ObjectExtents,
    pred_extents: ObjectExtents,
    confidence: Mapping[int, float] | None = None,
) -> list[dict[str, Any]]:
    """The per-object table: every ground-truth object, then every unmatched prediction.

    Columns (:data:`OBJECT_COLUMNS`): ``kind`` (``truth`` / ``pred``), ``id``, ``voxels``,
    ``outcome``, ``match`` (the id paired at the threshold, 0 if none), ``best_id`` and
    ``best_iou`` (the object of highest IoU on the other side), ``related`` (a split truth:
    its fragments; a merged truth: the other ground-truth objects in the same prediction; a
    partial truth: the prediction lying in it or holding it; a fragment or partial prediction:
    its ground-truth object; a merger: the ground-truth objects in it), ``confidence`` (the
    AP ranking score of a prediction when probabilities were given) and the bounding box
    ``z0 y0 x0`` (first voxel) to ``z1 y1 x1`` (one past the last).
    """
    rows = []
    for kind, side, extents in (
        ("truth", errors.truth, truth_extents),
        ("pred", errors.pred, pred_extents),
    ):
        lo, hi = _box(extents, side.ids)
        for k in range(side.ids.size):
            if kind == "pred" and side.match[k] != 0:
                continue  # shown as the match of its ground-truth object
            ident = int(side.ids[k])
            score = None if confidence is None or kind == "truth" else confidence.get(ident)
            rows.append(
                {
                    "kind": kind,
                    "id": ident,
                    "voxels": int(side.voxels[k]),
                    "outcome": OUTCOMES[side.outcome[k]],
                    "match": int(side.match[k]),
                    "best_id": int(side.best[k]),
                    "best_iou": float(side.best_iou[k]),
                    "related": ";".join(str(i) for i in side.related[k]),
                    "confidence": score,
                    **dict(zip(("z0", "y0", "x0"), lo[k].tolist(), strict=True)),
                    **dict(zip(("z1", "y1", "x1"), hi[k].tolist(), strict=True)),
                }
            )
    return rows
