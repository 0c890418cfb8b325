"""Atomic result files and the score tables printed by the entry points (no torch)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mitoseg import io
from mitoseg.evaluate import format_table

SCORE_COLUMNS = ("fg_iou", "mean_iou", "precision", "recall", "f1")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def score_rows(
    scores: Mapping[str, Mapping[float, Mapping[str, float]]], selected: float | None = None
) -> list[dict[str, Any]]:
    """Rows (set, threshold, scores) of {set: {threshold: scores}}; '*' marks ``selected``."""
    rows = []
    for name, by_threshold in scores.items():
        for threshold in sorted(by_threshold):
            mark = "*" if selected is not None and threshold == selected else ""
            row: dict[str, Any] = {"set": name, "threshold": f"{threshold:g}{mark}"}
            row.update({k: by_threshold[threshold][k] for k in SCORE_COLUMNS})
            rows.append(row)
    return rows


def scores_table(
    scores: Mapping[str, Mapping[float, Mapping[str, float]]], selected: float | None = None
) -> str:
    return format_table(score_rows(scores, selected), ("set", "threshold", *SCORE_COLUMNS))


def jsonable_scores(scores: Mapping[float, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {f"{t:g}": dict(v) for t, v in sorted(scores.items())}


@contextmanager
def mask_output(path: Path, probs: Any, threshold: float, enabled: bool = True) -> Iterator[Any]:
    """A uint8 (Z, Y, X) mask zarr shaped like ``probs`` (C, Z, Y, X), written under a temporary
    name and renamed to ``path`` only when the block completes; yields None when not enabled."""
    if not enabled:
        yield None
        return
    with io.atomic_dir(Path(path), overwrite=True) as tmp:
        attrs = {"axes": list(io.AXES), "kind": "mask", "threshold": threshold}
        yield io.create_volume(tmp, probs.shape[1:], "uint8", chunks=probs.chunks[1:], attrs=attrs)
