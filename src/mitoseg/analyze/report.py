"""Atomic result files and the score tables printed by the entry points (no torch)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mitoseg import io
from mitoseg.evaluate.semantic import format_table

SEMANTIC_COLUMNS = ("fg_iou", "mean_iou", "precision", "recall", "f1")
INSTANCE_COLUMNS = ("ap75", "ap50", "accuracy75", "are", "voi_split", "voi_merge", "n_pred")


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    The result appears complete or not at all; on any error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` (synced), then rename it into place."""

    def write(tmp: Path) -> None:
        with tmp.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    return write_atomic(path, write)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def columns_of(scores: Mapping[str, Any]) -> tuple[str, ...]:
    """The main score columns of a row: semantic (fg_iou, ...) or instance (ap75, ...)."""
    return SEMANTIC_COLUMNS if "fg_iou" in scores else INSTANCE_COLUMNS


def results_table(metrics: Mapping[str, Any]) -> str:
    """The test-time sweep of ``metrics.json``: one row per set and parameter combination, the
    selected combination marked with '*', then the final row."""
    swept, selected = metrics["swept"], metrics["selected"]
    rows = []
    for name in ("val", "test"):
        for row in metrics.get(name, []):
            mark = "*" if all(row[k] == selected[k] for k in swept) else ""
            cells = {"set": f"{name}{mark}", **{k: row[k] for k in swept}}
            rows.append(cells | {k: row.get(k, "") for k in columns_of(row)})
    final = metrics["final"]
    rows.append(
        {"set": f"final: {final['set']}", **{k: final[k] for k in swept}}
        | {k: final.get(k, "") for k in columns_of(final)}
    )
    return format_table(rows, list(rows[0]))


def voxel_size_of(volume: Any) -> dict[str, Any]:
    """``{"voxel_size_nm": [...]}`` of a volume that has it, else ``{}`` (to pass it on)."""
    voxel_size = dict(getattr(volume, "attrs", {})).get("voxel_size_nm")
    return {} if voxel_size is None else {"voxel_size_nm": list(voxel_size)}


@contextmanager
def mask_output(path: Path, probs: Any, threshold: float, enabled: bool = True) -> Iterator[Any]:
    """A uint8 (Z, Y, X) mask zarr shaped like ``probs`` (C, Z, Y, X), written under a temporary
    name and renamed to ``path`` only when the block completes; yields None when not enabled."""
    if not enabled:
        yield None
        return
    with io.atomic_dir(Path(path), overwrite=True) as tmp:
        attrs = {"axes": list(io.AXES), "kind": "mask", "threshold": threshold}
        attrs |= voxel_size_of(probs)
        yield io.create_volume(tmp, probs.shape[1:], "uint8", chunks=probs.chunks[1:], attrs=attrs)
