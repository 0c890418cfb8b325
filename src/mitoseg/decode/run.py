"""Decode saved probabilities and score the result: the core shared by the test-time callback and
``mitoseg-segment`` (numpy only; never runs a network).

A *decoder* is a frozen dataclass from the target's ``postprocess`` config: the semantic
:class:`~mitoseg.decode.masks.BinarizeMedian` (probabilities -> mask, streamed over z-slabs) or an
instance decoder from :mod:`mitoseg.decode.watershed` (probabilities -> instance ids, whole volume).
A sweep decodes the same probabilities with every combination of parameter values.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mitoseg import io
from mitoseg.analyze.report import INSTANCE_COLUMNS, SEMANTIC_COLUMNS, mask_output, voxel_size_of
from mitoseg.decode.masks import BinarizeMedian, decode_slabwise
from mitoseg.evaluate.instance import instance_scores
from mitoseg.evaluate.semantic import Confusion, evaluate_thresholds, semantic_scores


def is_semantic(decoder: Any) -> bool:
    """Whether ``decoder`` outputs a mask (else instance ids)."""
    return isinstance(decoder, BinarizeMedian)


def score_columns(decoder: Any) -> tuple[str, ...]:
    """The main score keys of ``decoder``'s kind, in display order."""
    return SEMANTIC_COLUMNS if is_semantic(decoder) else INSTANCE_COLUMNS


def output_name(decoder: Any) -> str:
    """Base name of the decoded output: ``mask`` or ``instances``."""
    return "mask" if is_semantic(decoder) else "instances"


def params(decoder: Any) -> dict[str, Any]:
    """The decoder's parameters as JSON-friendly values."""
    return {k: _plain(v) for k, v in dataclasses.asdict(decoder).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def check_channels(decoder: Any, probs: Any, source: str) -> None:
    """Raise :class:`io.VolumeError` when ``probs`` (C, Z, Y, X) does not fit ``decoder``."""
    if probs.ndim != 4:
        raise io.VolumeError(f"{source}: expected (C, Z, Y, X) probabilities, got {probs.shape}")
    expected = 1 if is_semantic(decoder) else decoder.n_channels
    names = dict(getattr(probs, "attrs", {})).get("channels")
    if probs.shape[0] < expected or (not is_semantic(decoder) and probs.shape[0] != expected):
        raise io.VolumeError(
            f"{source} has {probs.shape[0]} channels {names or ''} but decoder "
            f"{type(decoder).__name__} needs {expected}: the probabilities come from another "
            "target (pick the postprocess config of the target the model was trained with)"
        )


def decode_and_score(
    decoder: Any,
    probs: Any,
    labels: Any | None = None,
    output: Path | None = None,
    slab: int = 32,
) -> dict[str, float] | None:
    """Decode ``probs`` (C, Z, Y, X); write the result to ``output`` (zarr, atomically) if given;
    return the scores against ``labels`` (Z, Y, X) or None without labels.

    Semantic decoders stream over z-slabs (memory O(slab x Y x X)); instance decoders hold the
    volume (see their docstrings for bytes per voxel).
    """
    if is_semantic(decoder):
        confusion = Confusion()
        with mask_output(output, probs, decoder.threshold, output is not None) as out:
            for z, mask in decode_slabwise(decoder, probs, out, slab=slab):
                if labels is not None:
                    confusion += Confusion.from_masks(mask, np.asarray(labels[z]) > 0)
        return semantic_scores(confusion) if labels is not None else None
    instances = decoder(np.asarray(probs))
    if output is not None:
        attrs = {"axes": list(io.AXES), "kind": "instances", "decoder": params(decoder)}
        attrs |= voxel_size_of(probs)
        chunks = tuple(getattr(probs, "chunks", (1, *io.DEFAULT_CHUNKS)))[1:]
        io.write_volume(output, instances, chunks=chunks, attrs=attrs, overwrite=True)
    if labels is None:
        return None
    return instance_scores(np.asarray(labels), instances, slab=slab)


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values in ``grid`` ({parameter: values}), in order."""
    names = list(grid)
    for name in names:
        if isinstance(grid[name], str) or not isinstance(grid[name], Sequence):
            raise ValueError(f"sweep values of '{name}' must be a list, got {grid[name]!r}")
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


def sweep(
    decoder: Any,
    grid: Mapping[str, Sequence[Any]],
    probs: Any,
    labels: Any,
    slab: int = 32,
) -> list[dict[str, Any]]:
    """Score ``decoder`` with every combination of ``grid`` on ``probs`` against ``labels``.

    Returns one row per combination: the decoder's parameters, then its scores.
    """
    fields = {f.name for f in dataclasses.fields(decoder)}
    unknown = set(grid) - fields
    if unknown:
        raise ValueError(
            f"sweep over unknown parameters {sorted(unknown)} of {type(decoder).__name__} "
            f"(it has {sorted(fields)})"
        )
    points = grid_points(grid)
    if is_semantic(decoder) and set(grid) <= {"threshold"}:
        thresholds = [p.get("threshold", decoder.threshold) for p in points]
        scores = evaluate_thresholds(probs, labels, thresholds, decoder.median_size, slab)
        return [{**params(decoder), "threshold": t, **scores[t]} for t in thresholds]
    if not is_semantic(decoder):
        probs, labels = np.asarray(probs), np.asarray(labels)  # read once for every point
    rows = []
    for point in points:
        current = dataclasses.replace(decoder, **point)
        scores = decode_and_score(current, probs, labels, slab=slab)
        rows.append({**params(current), **(scores or {})})
    return rows


def best(rows: Sequence[Mapping[str, Any]], metric: str) -> Mapping[str, Any]:
    """The first row with the highest ``metric`` (NaN counts as lowest)."""
    if not rows:
        raise ValueError("no rows to choose from")

    def key(row: Mapping[str, Any]) -> float:
        value = float(row[metric])
        return -np.inf if np.isnan(value) else value

    return max(rows, key=key)
