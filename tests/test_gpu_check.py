"""benchmarks/gpu_check.sh: the prepared GPU check (issue 22.4) runs as is, and without a GPU it
runs every part small and says that no GPU was available."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mitoseg.datasets.synthetic import make_volume

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
ENV = {**os.environ, "PYTHON": sys.executable}


def fake_lucchi(root: Path) -> Path:
    """A folder laid out like Lucchi++ (train_im.tif, train_label.tif, test_*), tiny."""
    root.mkdir()
    for name, seed in (("train", 1), ("test", 2)):
        raw, labels = make_volume((32, 64, 96), seed=seed)
        tifffile.imwrite(root / f"{name}_im.tif", raw)
        tifffile.imwrite(root / f"{name}_label.tif", ((labels > 0) * 255).astype(np.uint8))
    return root


def check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=1200
    )


def test_dry_run_plans_every_part_within_ten_minutes(tmp_path: Path) -> None:
    result = check(
        str(tmp_path / "lucchi"), "--out", str(tmp_path / "out"), "--dry-run", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    steps = [line for line in lines if line.startswith("[")]
    names = [line[1:].split(",")[0] for line in steps]
    assert names == ["gpu tests", "train", "volume", "predict compile off", "predict compile on"]
    budgets = [float(line.split(", ")[1].split(" s]")[0]) for line in steps]
    assert sum(budgets) <= 540  # the parts' budgets, plus SIGTERM grace, fit in 10 minutes
    assert "-m gpu" in steps[0] and "test_gpu.py" in steps[0]
    assert "experiment=lucchipp_best" in steps[1] and f"data.root={tmp_path / 'lucchi'}" in steps[1]
    assert "trainer.precision=bf16-mixed" in steps[3] and "compile=false" in steps[3]
    assert "compile=true" in steps[4]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    import torch

    if not torch.cuda.is_available():
        assert lines[0].startswith("GPU check: no GPU was available")
        assert "trainer.accelerator=cpu" in steps[1] and "32 128 128" in steps[2]


def test_refuses_an_output_folder_of_something_else(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = check(str(tmp_path), "--out", str(out), cwd=tmp_path)
    assert result.returncode != 0 and "holds files of something else" in result.stderr
    assert (out / "keep.txt").read_text() == "precious"


@pytest.mark.slow
def test_without_a_gpu_every_part_runs_small_and_the_table_says_so(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the full check would run (benchmarks/gpu_check.sh)")
    data, out = fake_lucchi(tmp_path / "lucchi"), tmp_path / "out"
    budgets = ["--budget-train", "400", "--budget-predict", "300", "--budget-compile", "400"]
    result = check(str(data), "--out", str(out), *budgets, "--total", "1500", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (out / "gpu_check.md").read_text()
    assert table.startswith("GPU check: no GPU was available")
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[4:9]}
    assert "skipped" in rows["gpu tests"] and rows["gpu tests"].endswith("| ok |")
    assert "test fg_iou" in rows["train"] and "last.ckpt saved" in rows["train"]
    assert rows["volume"].endswith("| ok |")
    assert "Mvox/s" in rows["predict compile off"] and "bf16-mixed" in rows["predict compile off"]
    assert rows["predict compile off"].endswith("| ok |")
    assert "predict compile on" in rows  # CPU inductor may outlast its budget on a busy machine
    assert (out / "probs_compile_false.zarr").exists()
