"""End to end through the console scripts, as a user runs them (small synthetic data)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mitoseg import io

BIN = Path(sys.executable).parent
TINY = [
    "data.train.shape=[32,64,64]",
    "data.patch_shape=[16,32,32]",
    "model.widths=[4,8,16]",
    "trainer.max_steps=6",
    "data.samples_per_epoch=6",
    "trainer.enable_progress_bar=false",
    "evaluate.sweep.threshold=[0.3,0.5]",
    "hydra.run.dir=run",
]


def run(tool: str, *args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "MITOSEG_CACHE": str(cwd / "cache")}
    result = subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if ok and result.returncode != 0:
        raise AssertionError(f"{tool} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("train")
    result = run("mitoseg-train", *TINY, cwd=cwd)
    assert "test fg_iou" in result.stdout and "chosen on validation" in result.stdout
    return cwd


def test_train_writes_metrics_probs_mask_checkpoint_and_logs(trained: Path) -> None:
    out = trained / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selected"]["threshold"] in (0.3, 0.5) and metrics["swept"] == ["threshold"]
    assert set(metrics) >= {"val", "test", "final"} and metrics["final"]["set"] == "test"
    assert [row["threshold"] for row in metrics["val"]] == [0.3, 0.5]
    probs = io.open_volume(out / "test_probs.zarr")
    assert probs.shape == (1, 32, 64, 64) and probs.dtype == np.uint8
    assert set(np.unique(io.open_volume(out / "test_mask.zarr")[:])) <= {0, 1}
    assert (
        io.open_volume(out / "val_labels.zarr").shape
        == io.open_volume(out / "val_probs.zarr").shape[1:]
    )
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    stored = checkpoint["mitoseg"]["config"]
    assert stored["model"]["widths"] == [4, 8, 16] and stored["target"]["channels"] == [
        "foreground"
    ]
    # The whole training config and the library versions travel with the weights.
    run_config, versions = checkpoint["mitoseg"]["run"], checkpoint["mitoseg"]["versions"]
    assert run_config["data"]["patch_shape"] == stored["predict"]["tile_shape"]
    assert run_config["module"]["optimizer"]["lr"] > 0 and "augment" in run_config["data"]
    assert run_config["trainer"]["max_steps"] == 6 and run_config["seed"] == 0
    assert versions["torch"] == torch.__version__ and versions["monai"] != "not installed"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_predict_from_checkpoint_alone_and_refuse_overwrite(trained: Path) -> None:
    raw = next((trained / "cache").glob("synthetic-*seed1000*")) / "raw.zarr"
    # the best checkpoint, which the test evaluation used
    (ckpt,) = (trained / "run" / "checkpoints").glob("step*.ckpt")
    args = [
        f"ckpt={ckpt}",
        f"input={raw}",
        "output=probs.zarr",
        "trainer.enable_progress_bar=false",
    ]
    result = run("mitoseg-predict", *args, cwd=trained)
    assert "Mvox/s" in result.stdout
    # Same checkpoint, same settings, the same blockwise predictor: the probabilities that the
    # test-time evaluation wrote, bit for bit.
    expected = io.open_volume(trained / "run" / "test_probs.zarr")
    predicted = io.open_volume(trained / "probs.zarr")
    np.testing.assert_array_equal(predicted[:], expected[:])
    assert dict(predicted.attrs) == dict(expected.attrs)
    refused = run("mitoseg-predict", *args, cwd=trained, ok=False)
    assert (
        refused.returncode != 0 and "probs.zarr already exists" in refused.stderr + refused.stdout
    )


def test_segment_sweep_reuses_probabilities_and_writes_one_table(trained: Path) -> None:
    probs = trained / "run" / "test_probs.zarr"
    labels = next((trained / "cache").glob("synthetic-*seed1000*")) / "labels.zarr"
    result = run(
        "mitoseg-segment",
        "-m",
        f"probs={probs}",
        f"labels={labels}",
        "postprocess.threshold=0.3,0.5",
        "hydra.sweep.dir=sweep",
        cwd=trained,
    )
    assert "sweep summary" in result.stdout
    rows = list(csv.DictReader((trained / "sweep" / "sweep_summary.csv").open()))
    assert [r["overrides"] for r in rows] == [
        "postprocess.threshold=0.3",
        "postprocess.threshold=0.5",
    ]
    assert sum(r["best"] == "*" for r in rows) == 1
    # Equal to the scores the training run computed at the same thresholds.
    metrics = json.loads((trained / "run" / "metrics.json").read_text())
    by_threshold = {row["threshold"]: row for row in metrics["test"]}
    for row in rows:
        expected = by_threshold[float(row["threshold"])]["fg_iou"]
        assert float(row["fg_iou"]) == pytest.approx(expected)


def test_train_sweep_writes_one_table_best_by_validation(tmp_path: Path) -> None:
    """``mitoseg-train -m``: one run per value, then one table whose best row is chosen by the
    validation score (the test columns are there to read, not to choose by)."""
    tiny = [a for a in TINY if not a.startswith("hydra.run.dir")]
    result = run(
        "mitoseg-train", "-m", *tiny, "logger=none", "module.optimizer.lr=0.01,0.0001",
        "hydra.sweep.dir=sweep", cwd=tmp_path,
    )  # fmt: skip
    assert "sweep summary" in result.stdout
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep_summary.csv").open()))
    assert [r["overrides"] for r in rows] == [
        "module.optimizer.lr=0.01",
        "module.optimizer.lr=0.0001",
    ]
    for row, job in zip(rows, ("0", "1"), strict=True):
        metrics = json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())
        assert row["checkpoint"] == metrics["checkpoint"] and row["checkpoint"].endswith(".ckpt")
        assert (tmp_path / "sweep" / job / "checkpoints" / row["checkpoint"]).is_file()
        assert float(row["threshold"]) == metrics["selected"]["threshold"]
        (val,) = [r for r in metrics["val"] if r["threshold"] == metrics["selected"]["threshold"]]
        assert float(row["val_fg_iou"]) == pytest.approx(val["fg_iou"])
        assert float(row["test_fg_iou"]) == pytest.approx(metrics["final"]["fg_iou"])
    best = max(rows, key=lambda r: float(r["val_fg_iou"]))
    assert [r["best"] for r in rows] == ["*" if r is best else "" for r in rows]
