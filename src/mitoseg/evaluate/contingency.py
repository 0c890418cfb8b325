"""The contingency table of two instance label volumes, from one streamed pass (numpy only).

``overlaps`` reads two label volumes (numpy or zarr) z-slab by z-slab and keeps only the
contingency of label pairs, so memory is bounded by one slab plus the number of distinct pairs.
Every instance metric (:mod:`mitoseg.evaluate.instance`) is computed from that table alone, and
tables of disjoint blocks add up (:mod:`mitoseg.evaluate.blockwise`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

_CHUNK = 1 << 18  # voxels per in-cache pass when extracting the foreground of a slab
_MIN_DENSE_BINS = 1 << 16


class LabelVolume(Protocol):
    """A (Z, Y, X) integer label array read by z-slices: numpy, zarr, h5py and alike."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, key: Any) -> Any: ...


def _group_sum(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys and the sum of ``counts`` over each."""
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    if keys.size == 0:
        return keys, counts
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(counts, starts)


def _reduce_pairs(t: np.ndarray, p: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pairs sorted by (truth, pred), duplicates summed, zero counts and (0, 0) dropped."""
    order = np.lexsort((p, t))
    t, p, c = t[order], p[order], c[order]
    if t.size:
        starts = np.flatnonzero(np.r_[True, (t[1:] != t[:-1]) | (p[1:] != p[:-1])])
        t, p, c = t[starts], p[starts], np.add.reduceat(c, starts)
    keep = (c > 0) & ((t != 0) | (p != 0))
    return t[keep], p[keep], c[keep]


@dataclass(frozen=True, eq=False)
class Overlaps:
    """Contingency table of two label volumes: voxel counts of each (truth id, pred id) pair.

    Construction sorts the pairs by (truth, pred), sums duplicates and drops zero counts and the
    (0, 0) pair; the (0, 0) count is ``background`` = ``n_voxels`` minus all stored counts.

    Attributes:
        pair_truth: uint64 (P,) truth id of each pair; 0 where the pred voxels lie on background.
        pair_pred: uint64 (P,) pred id of each pair; 0 where the truth voxels were missed.
        pair_counts: int64 (P,) voxels of each pair, > 0.
        n_voxels: voxels in the compared volume (or blocks), background included.
        truth_ids, truth_sizes: uint64 / int64 (G,), sorted non-zero truth ids and their voxels.
        pred_ids, pred_sizes: uint64 / int64 (D,), the same for the prediction.
    """

    pair_truth: np.ndarray
    pair_pred: np.ndarray
    pair_counts: np.ndarray
    n_voxels: int
    truth_ids: np.ndarray = field(init=False)
    truth_sizes: np.ndarray = field(init=False)
    pred_ids: np.ndarray = field(init=False)
    pred_sizes: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        t, p, c = (np.asarray(a).reshape(-1) for a in self._pairs())
        if not t.size == p.size == c.size or (c < 0).any():
            raise ValueError(f"need pairs of one length, counts >= 0: {t.size}, {p.size}, {c.size}")
        t, p, c = _reduce_pairs(t.astype(np.uint64), p.astype(np.uint64), c.astype(np.int64))
        if int(c.sum()) > int(self.n_voxels):
            raise ValueError(f"n_voxels={self.n_voxels} < {int(c.sum())} voxels in pairs")
        (ti, ts), (pi, ps) = _group_sum(t, c), _group_sum(p, c)
        fields = {"pair_truth": t, "pair_pred": p, "pair_counts": c, "n_voxels": int(self.n_voxels)}
        fields |= {"truth_ids": ti[ti != 0], "truth_sizes": ts[ti != 0]}
        fields |= {"pred_ids": pi[pi != 0], "pred_sizes": ps[pi != 0]}
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.pair_truth, self.pair_pred, self.pair_counts

    @classmethod
    def empty(cls, n_voxels: int = 0) -> Overlaps:
        """No object in either volume of ``n_voxels`` voxels."""
        none = np.zeros(0, np.uint64)
        return cls(none, none, np.zeros(0, np.int64), n_voxels)

    @property
    def background(self) -> int:
        """Voxels that are background (0) in both volumes."""
        return self.n_voxels - int(self.pair_counts.sum())

    @property
    def n_truth(self) -> int:
        return int(self.truth_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    def __add__(self, other: Overlaps) -> Overlaps:
        """Counts of two disjoint blocks together; ids are global, so shared ids add up."""
        if not isinstance(other, Overlaps):
            return NotImplemented
        joined = (np.concatenate(ab) for ab in zip(self._pairs(), other._pairs(), strict=True))
        return Overlaps(*joined, self.n_voxels + other.n_voxels)

    def __radd__(self, other: Any) -> Overlaps:
        # ``sum(blocks)`` starts from 0.
        return self if isinstance(other, int) and other == 0 else NotImplemented

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Overlaps):
            return NotImplemented
        return self.n_voxels == other.n_voxels and all(
            np.array_equal(a, b) for a, b in zip(self._pairs(), other._pairs(), strict=True)
        )

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- counting


def _validate_volumes(truth: LabelVolume, pred: LabelVolume, slab: int) -> None:
    if len(truth.shape) != 3 or tuple(truth.shape) != tuple(pred.shape):
        raise ValueError(
            f"truth and pred must be (Z, Y, X) of one shape, got {truth.shape} and {pred.shape}"
        )
    for name, vol in (("truth", truth), ("pred", pred)):
        if np.dtype(vol.dtype).kind not in "ui":
            raise ValueError(f"{name} must hold integer instance ids, got dtype {vol.dtype}")
    if int(slab) < 1:
        raise ValueError(f"slab must be >= 1, got {slab}")


def _foreground_values(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``t`` and ``p`` where either is non-zero, in raster order."""
    tf, pf = t.reshape(-1), p.reshape(-1)
    mask = np.empty(min(_CHUNK, tf.size), dtype=bool)
    tvs, pvs = [tf[:0]], [pf[:0]]
    # Cache-sized pieces: the mask and both gathers stay in cache, about 2x faster than
    # whole-slab temporaries.
    for s in range(0, tf.size, _CHUNK):
        a, b = tf[s : s + _CHUNK], pf[s : s + _CHUNK]
        m = np.logical_or(a, b, out=mask[: a.size])
        tvs.append(a[m])
        pvs.append(b[m])
    return np.concatenate(tvs), np.concatenate(pvs)


def _count_pairs(tv: np.ndarray, pv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (truth, pred) pairs of two equal-length id arrays and their counts.

    Packs each pair into one key: a dense np.bincount when the key range is about the number of
    values, else a sort (np.unique) of uint32 keys when they fit, of uint64 keys otherwise; ids
    too large to pack are first compacted with np.unique.
    """
    mt, mp = int(tv.max()), int(pv.max())
    base = mp + 1
    span = (mt + 1) * base
    if span <= max(tv.size, _MIN_DENSE_BINS):
        key = tv.astype(np.intp) * base
        key += pv.astype(np.intp, copy=False)
        counts = np.bincount(key, minlength=span)
        keys = np.flatnonzero(counts)
        counts = counts[keys]
    elif span < 1 << 64:
        dtype = np.uint32 if span < 1 << 32 else np.uint64
        key = tv.astype(dtype)
        key *= dtype(base)
        key += pv.astype(dtype, copy=False)
        keys, counts = np.unique(key, return_counts=True)
    else:
        ut, ti = np.unique(tv, return_inverse=True)
        up, pi = np.unique(pv, return_inverse=True)
        t_idx, p_idx, counts = _count_pairs(ti.reshape(-1), pi.reshape(-1))
        return ut[t_idx.astype(np.intp)], up[p_idx.astype(np.intp)], counts
    return keys // base, keys % base, counts


def _slab_overlaps(t: np.ndarray, p: np.ndarray) -> Overlaps:
    tv, pv = _foreground_values(t, p)
    if tv.size == 0:
        return Overlaps.empty(t.size)
    for name, values in (("truth", tv), ("pred", pv)):
        if values.dtype.kind == "i" and values.min() < 0:
            raise ValueError(f"{name} holds negative ids; instance ids must be >= 0")
    return Overlaps(*_count_pairs(tv, pv), t.size)


def overlaps(truth: LabelVolume, pred: LabelVolume, slab: int = 32) -> Overlaps:
    """Contingency of two instance label volumes in one pass over z-slabs.

    Args:
        truth: integer (Z, Y, X) ground-truth instance ids, 0 = background; numpy or zarr.
        pred: integer (Z, Y, X) predicted instance ids of the same shape, 0 = background.
        slab: z-slices read at a time; memory is about two slabs of labels plus the pairs.

    Returns:
        The pair counts, ids, sizes and voxel count, identical for any ``slab``.
    """
    _validate_volumes(truth, pred, slab)
    total = Overlaps.empty()
    for z0 in range(0, truth.shape[0], slab):
        t = np.asarray(truth[z0 : z0 + slab])
        p = np.asarray(pred[z0 : z0 + slab])
        total = total + _slab_overlaps(t, p)
    return total
