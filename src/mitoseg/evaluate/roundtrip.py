"""Round trips: perfect targets made from ground truth, decoded back, compared to it (numpy).

:func:`round_trip` makes a target's channels from instance labels with the package's own target
transform, stores them as a prediction would (uint8 p x 255, or float), decodes them with a
decoder at its settings and scores the result against the labels: AP-75, and per ground-truth
object above the decoder's size floor whether it was lost or split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mitoseg.decode.base import size_voxels, with_voxel_size
from mitoseg.evaluate.contingency import overlaps
from mitoseg.evaluate.instance import scores_from_overlaps
from mitoseg.io.voxels import is_isotropic


def perfect_probs(
    target: Callable[[np.ndarray], np.ndarray], labels: np.ndarray, dtype: str
) -> np.ndarray:
    """The target of ``labels`` as stored probabilities: uint8 (p x 255) or float32 in [0, 1];
    NaN (an affinity leaving the volume) becomes 0."""
    probs = np.nan_to_num(target(labels), nan=0.0)
    if dtype == "uint8":
        return np.rint(probs * 255.0).astype(np.uint8)
    return probs.astype(dtype)


def compare(labels: np.ndarray, instances: np.ndarray, floor: int) -> dict[str, Any]:
    """Lost, split and exact against ground truth whose objects under ``floor`` voxels are
    ignored. An object is split when two or more predicted objects have most of their voxels in
    it, and lost when it is not split and no predicted object overlaps it with IoU >= 0.5."""
    ids, sizes = np.unique(labels[labels > 0], return_counts=True)
    kept = ids[sizes >= floor]
    truth = np.where(np.isin(labels, kept), labels, 0)
    pairs, counts = np.unique(
        np.stack([truth.ravel(), instances.ravel()]), axis=1, return_counts=True
    )
    t_size = dict(zip(*np.unique(truth, return_counts=True), strict=True))
    p_size = dict(zip(*np.unique(instances, return_counts=True), strict=True))
    lost = split = 0
    for t in kept:
        inside = (pairs[0] == t) & (pairs[1] > 0)
        preds, shared = pairs[1][inside], counts[inside]
        majority = sum(1 for p, c in zip(preds, shared, strict=True) if 2 * c > p_size[p])
        iou = [c / (t_size[t] + p_size[p] - c) for p, c in zip(preds, shared, strict=True)]
        if majority >= 2:
            split += 1
        elif max(iou, default=0.0) < 0.5:
            lost += 1
    one_to_one = (
        np.unique(pairs[0]).size == pairs.shape[1] and np.unique(pairs[1]).size == pairs.shape[1]
    )
    exact = bool(one_to_one and np.all((pairs[0] > 0) == (pairs[1] > 0)))
    return {"n_truth": int(kept.size), "lost": lost, "split": split, "exact": exact}


def round_trip(
    labels: np.ndarray,
    target: Callable[[np.ndarray], np.ndarray],
    decoder: Any,
    voxel_size_nm: Sequence[float],
    dtype: str = "uint8",
    floor: int | None = None,
) -> dict[str, Any]:
    """Decode the perfect ``target`` of ``labels`` with ``decoder`` and compare.

    Args:
        labels: integer (Z, Y, X) instance ids, 0 background.
        target: a target transform (``mitoseg.train.targets``), labels -> float32 (C, Z, Y, X).
        decoder: an instance decoder; its voxel size is set to ``voxel_size_nm``.
        voxel_size_nm: (z, y, x) nm of ``labels``.
        dtype: "uint8" (as predictions are stored) or "float32".
        floor: ground-truth objects under this many voxels are left out; None: the decoder's
            ``min_size`` (e.g. to score another decoder setting against the same objects).

    Returns:
        {"ap75", "ap50", "n_truth", "n_pred", "lost", "split", "exact"}: AP against the objects
        above the decoder's size floor; ``exact`` when the decoded instances equal them.
    """
    decoder = with_voxel_size(decoder, tuple(voxel_size_nm), "round trip")
    instances = decoder(perfect_probs(target, labels, dtype))
    if floor is None:
        floor = size_voxels(decoder)[1] if dataclasses.is_dataclass(decoder) else 0
    result = compare(labels, instances, floor)
    ids, sizes = np.unique(labels[labels > 0], return_counts=True)
    truth = np.where(np.isin(labels, ids[sizes >= floor]), labels, 0)
    scores = scores_from_overlaps(overlaps(truth, instances))
    return {
        "ap75": float(scores["ap75"]),
        "ap50": float(scores["ap50"]),
        "n_pred": int(len(np.unique(instances[instances > 0]))),
        **result,
    }


def target_decoders(voxel_size_nm: tuple[float, float, float]) -> dict[str, tuple[Any, Any]]:
    """Each instance target's transform and default decoder on ``voxel_size_nm``, as the configs
    pair them (contours in-plane on anisotropic voxels): ``{"a": (Affinity(), AffinityWatershed()),
    "bc": ..., "ac": ..., "bcd": ...}``."""
    from mitoseg.decode.instances import (
        ACWatershed,
        AffinityWatershed,
        BCDWatershed,
        BCWatershed,
    )
    from mitoseg.train.targets import (
        Affinity,
        AffinityContour,
        BinaryContour,
        BinaryContourDistance,
    )

    in_plane = not is_isotropic(voxel_size_nm)
    return {
        "a": (Affinity(), AffinityWatershed()),
        "bc": (BinaryContour(in_plane=in_plane), BCWatershed()),
        "ac": (AffinityContour(in_plane=in_plane), ACWatershed()),
        "bcd": (
            BinaryContourDistance(in_plane=in_plane, voxel_size_nm=voxel_size_nm),
            BCDWatershed(),
        ),
    }
