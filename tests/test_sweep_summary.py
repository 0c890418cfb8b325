"""The table after a multirun holds every run, also when runs have different columns (e.g. a
sweep over targets, whose decoders have different settings)."""

from __future__ import annotations

import csv

from mitoseg.cli.common import write_sweep_summary


def test_runs_with_different_decoder_settings_share_one_table(tmp_path, capsys) -> None:
    rows = [
        {"run": "0", "overrides": "target=a", "seed_threshold": 0.9, "ap75": 0.5},
        {"run": "1", "overrides": "target=bc", "seed_threshold": 0.85, "contour_threshold": 0.6,
         "ap75": 0.7},
    ]  # fmt: skip
    write_sweep_summary(tmp_path, rows, "ap75", plot=False)
    table = list(csv.DictReader((tmp_path / "sweep_summary.csv").open()))
    assert [r["contour_threshold"] for r in table] == ["", "0.6"]
    assert [r["best"] for r in table] == ["", "*"]
    assert "contour_threshold" in (tmp_path / "sweep_summary.md").read_text()
    assert "sweep summary" in capsys.readouterr().out
