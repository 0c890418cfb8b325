"""Lucchi++ crops through the whole pipeline: convert, train a few steps, predict, evaluate."""

import json
from pathlib import Path

import numpy as np
import pytest

from mitoseg import io
from tests.conftest import LUCCHI
from tests.test_cli import run

pytestmark = pytest.mark.realdata


def lucchi_crop(name: str, dst: Path, labels: bool) -> Path:
    """Slices 0-23 of a Lucchi++ TIFF via mitoseg-convert, then a 128 x 160 in-plane crop."""
    full = dst.with_suffix(".full.zarr")
    io.convert(
        LUCCHI / f"{name}.tif", full, labels=labels, z_range=(0, 24), voxel_size_nm=(5, 5, 5)
    )
    crop = io.open_volume(full)
    io.write_volume(dst, crop[:, 300:428, 400:560], chunks=(8, 64, 64), attrs=dict(crop.attrs))
    return dst


def test_lucchi_crop_trains_predicts_and_scores(tmp_path: Path) -> None:
    paths = {
        name: lucchi_crop(name, tmp_path / f"{name}.zarr", labels="label" in name)
        for name in ("train_im", "train_label", "test_im", "test_label")
    }
    labels = io.open_volume(paths["train_label"])
    assert labels.dtype == np.uint8 and set(np.unique(labels[:])) == {0, 1}
    run(
        "mitoseg-train",
        "data=files",
        f"data.train.raw={paths['train_im']}",
        f"data.train.labels={paths['train_label']}",
        f"data.test.raw={paths['test_im']}",
        f"data.test.labels={paths['test_label']}",
        "data.patch_shape=[16,32,32]",
        "model.widths=[4,8,16]",
        "trainer.max_steps=4",
        "data.samples_per_epoch=4",
        "trainer.enable_progress_bar=false",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    final = metrics["final"]
    assert final["set"] == "test" and 0.0 <= final["fg_iou"] <= 1.0
    assert io.open_volume(tmp_path / "run" / "test_mask.zarr").shape == (24, 128, 160)


def test_lucchi_volumes_match_their_documented_shape() -> None:
    for name in ("train_im", "train_label", "test_im", "test_label"):
        assert io.volume_shape(LUCCHI / f"{name}.tif") == (165, 768, 1024)
