"""The score tables printed by the entry points (no torch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mitoseg.decode.base import INSTANCE_COLUMNS, SEMANTIC_COLUMNS
from mitoseg.evaluate.semantic import format_table


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


def settings_text(values: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``key=value, ...`` of decoder settings as a user would type them back as overrides:
    numbers short (``0.75``), flags ``true`` / ``false``, an unset one ``null``."""

    def text(value: Any) -> str:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float | int):
            return f"{value:g}"
        return str(value)

    return ", ".join(f"{k}={text(values[k])}" for k in keys)
