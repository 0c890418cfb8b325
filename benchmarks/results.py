"""Headline figures of the benchmarks, kept machine-readable in ``benchmarks/results.json``.

The file is a JSON list of records, one per headline figure, each with the keys of ``FIELDS``:
``name`` (unique), ``value`` and ``unit``, ``baseline`` (the reference's value measured in the
same run, or null) and ``baseline_name``, ``machine``, ``date`` (ISO) and ``command``, plus
``notes`` when given. BENCHMARKS.md shows the same figures as a table.

A benchmark script calls :func:`record` at the end of a run; scripts run as
``python benchmarks/x.py`` find this module because Python puts the script's folder first on
``sys.path``::

    from results import record

    record("bc_watershed_seconds", 10.8, "s", baseline=70.9, baseline_name="skimage version")
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"
FIELDS = ("name", "value", "unit", "baseline", "baseline_name", "machine", "date", "command")


def machine_description() -> str:
    """A short description of this machine: CPU model (or architecture), CPU count, system."""
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                "",
            )
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"


def _number(value: Any) -> Any:
    """numpy scalars and other numbers -> int / float; None and the rest unchanged."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def load(path: str | os.PathLike[str] = RESULTS) -> list[dict[str, Any]]:
    """The records of ``path``; an empty list when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    records = json.loads(path.read_text())
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of records, got {type(records).__name__}")
    return records


def record(
    name: str,
    value: float | None,
    unit: str,
    *,
    baseline: float | None = None,
    baseline_name: str | None = None,
    machine: str | None = None,
    date: str | None = None,
    command: str | None = None,
    notes: str | None = None,
    path: str | os.PathLike[str] = RESULTS,
) -> dict[str, Any]:
    """Add the record ``name`` to ``path``, or replace the record of that name in place.

    Args:
        name: the figure's stable name, e.g. "bc_watershed_seconds".
        value: the figure (numpy scalars are stored as float).
        unit: its unit, e.g. "s", "MiB", "IoU".
        baseline: the reference's value measured in the same run, or None.
        baseline_name: what the reference is.
        machine: default: :func:`machine_description`.
        date: ISO date; default today.
        command: default: the command line of this process (``python`` + ``sys.argv``).
        notes: optional free text (size, conditions, ratio).
        path: the JSON file; written atomically (a temporary file in the same folder, then
            ``os.replace``), so a reader never sees a half-written file.

    Returns:
        The record as written.
    """
    entry: dict[str, Any] = {
        "name": name,
        "value": _number(value),
        "unit": unit,
        "baseline": _number(baseline),
        "baseline_name": baseline_name,
        "machine": machine or machine_description(),
        "date": date or datetime.date.today().isoformat(),
        "command": command or shlex.join(["python", *sys.argv]),
    }
    if notes:
        entry["notes"] = notes
    path = Path(path)
    records = load(path)
    index = next((i for i, r in enumerate(records) if r.get("name") == name), None)
    if index is None:
        records.append(entry)
    else:
        records[index] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(records, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"recorded {name} = {entry['value']} {unit} in {path}")
    return entry
