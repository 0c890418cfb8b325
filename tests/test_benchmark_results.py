"""benchmarks/results.py: record(); the committed results.json against BENCHMARKS.md."""

from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import results  # noqa: E402

REQUIRED = set(results.FIELDS)


def test_record_adds_a_record_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    entry = results.record(
        "speed", 1.5, "s", baseline=3.0, baseline_name="reference", notes="small", path=path
    )
    records = json.loads(path.read_text())
    assert records == [entry]
    assert REQUIRED <= entry.keys()
    assert entry["name"] == "speed" and entry["value"] == 1.5 and entry["unit"] == "s"
    assert entry["baseline"] == 3.0 and entry["baseline_name"] == "reference"
    assert entry["notes"] == "small"


def test_record_defaults_machine_date_and_command(tmp_path: Path) -> None:
    entry = results.record("memory", np.float64(12.0), "MiB", path=tmp_path / "r.json")
    assert entry["baseline"] is None and entry["baseline_name"] is None
    assert entry["date"] == datetime.date.today().isoformat()
    assert entry["machine"] == results.machine_description()
    assert "CPUs" in entry["machine"]
    assert entry["command"].startswith("python ")
    assert "notes" not in entry
    # numpy scalars are stored as plain JSON numbers
    assert json.loads((tmp_path / "r.json").read_text())[0]["value"] == 12.0


def test_record_replaces_by_name_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    results.record("a", 1, "s", machine="m", date="2026-01-01", command="c", path=path)
    results.record("b", 2, "s", machine="m", date="2026-01-01", command="c", path=path)
    results.record("a", 3, "s", baseline=4, machine="m", date="2026-01-02", command="d", path=path)
    records = json.loads(path.read_text())
    assert [r["name"] for r in records] == ["a", "b"]  # replaced in place, not appended
    assert records[0]["value"] == 3 and records[0]["baseline"] == 4
    assert records[0]["date"] == "2026-01-02" and records[0]["command"] == "d"
    assert records[1]["value"] == 2


def test_record_writes_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.json"
    results.record("a", 1, "s", path=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary left

    calls = []
    real_replace = results.os.replace

    def replace(src, dst):
        calls.append((Path(src), Path(dst)))
        assert Path(src).parent == path.parent and Path(src) != path  # a temporary beside it
        return real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", replace)
    results.record("b", 2, "s", path=path)
    assert len(calls) == 1 and calls[0][1] == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]

    # a failure while writing leaves the old file whole and no temporary behind
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        results.record("c", 3, "s", path=path)
    assert [r["name"] for r in json.loads(path.read_text())] == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_load_refuses_a_file_that_is_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"name": "a"}')
    with pytest.raises(ValueError, match="list"):
        results.record("a", 1, "s", path=path)


def committed_records() -> list[dict]:
    records = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    assert isinstance(records, list) and records
    return records


def test_committed_results_parse_with_the_required_keys() -> None:
    records = committed_records()
    names = [r["name"] for r in records]
    assert len(names) == len(set(names)), "record names must be unique"
    for r in records:
        assert REQUIRED <= r.keys(), (r.get("name"), REQUIRED - r.keys())
        assert isinstance(r["value"], int | float), r["name"]
        assert r["baseline"] is None or isinstance(r["baseline"], int | float), r["name"]
        assert (r["baseline"] is None) == (r["baseline_name"] is None), r["name"]
        assert r["unit"] and r["machine"] and r["command"], r["name"]
        datetime.date.fromisoformat(r["date"])


def test_benchmarks_table_names_every_record() -> None:
    text = (ROOT / "BENCHMARKS.md").read_text()
    header = "| task | figure | baseline in the same run | machine | date | command |"
    assert header in text
    table = text.split(header, 1)[1].split("\n\n", 1)[0]
    for r in committed_records():
        rows = [line for line in table.splitlines() if f"`{r['name']}`" in line]
        assert rows, f"BENCHMARKS.md's table does not name {r['name']}"
        assert r["date"] in rows[0], (r["name"], r["date"])


def test_benchmark_scripts_record_their_headline_figures() -> None:
    """Each benchmark script calls record() for the names committed in results.json."""
    names = {r["name"] for r in committed_records()}
    recorded = set()
    for script in (ROOT / "benchmarks").glob("*.py"):
        text = script.read_text()
        recorded |= set(re.findall(r'record\(\s*f?"([a-z0-9_{}.]+)"', text))
    # an f-string name: each {...} field stands for any run of name characters
    patterns = [re.sub(r"\\\{[^}]*\\\}", "[a-z0-9_]*", re.escape(n)) for n in recorded]
    # not from a script: make demo, one mitoseg-train run, the shipped model's run (its card)
    for name in names - {
        "demo_test_fg_iou",
        "synthetic_bc_test_ap75",
        "pretrained_lucchipp_test_fg_iou",
    }:
        assert any(re.fullmatch(pattern, name) for pattern in patterns), name
