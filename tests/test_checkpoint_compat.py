"""Checkpoints written before the stage-package move keep loading, resuming and predicting.

``fixtures/layout_v0.ckpt`` was written by the flat layout (commit fc86f7d): its stored configs
name ``mitoseg.nets.ResidualUNet3D``, ``mitoseg.targets.Semantic``, ``mitoseg.postprocess...``.
It was made with::

    mitoseg-train data.train.shape=[32,64,64] data.patch_shape=[16,32,32] model.widths=[4,8] \\
        trainer.max_steps=4 data.samples_per_epoch=4 logger=none test=false
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from mitoseg import io
from mitoseg.cli.common import build_net, load_checkpoint
from mitoseg.train.checkpoints import upgrade_targets

FIXTURE = Path(__file__).parent / "fixtures" / "layout_v0.ckpt"
BIN = Path(sys.executable).parent
RUN = [
    "data.train.shape=[32,64,64]",
    "data.patch_shape=[16,32,32]",
    "model.widths=[4,8]",
    "data.samples_per_epoch=4",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "evaluate.sweep.threshold=[0.5]",
    "hydra.run.dir=run",
]


def _run(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MITOSEG_CACHE": str(cwd / "cache")}
    result = subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, (
        f"{tool} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def test_old_targets_are_rewritten_to_the_new_modules() -> None:
    stored = torch.load(FIXTURE, weights_only=True)["mitoseg"]["config"]
    assert stored["model"]["_target_"] == "mitoseg.nets.ResidualUNet3D"  # the old layout
    config = upgrade_targets(stored)
    assert config["model"]["_target_"] == "mitoseg.train.nets.ResidualUNet3D"
    assert config["target"]["transform"]["_target_"] == "mitoseg.train.targets.Semantic"
    assert config["postprocess"]["_target_"] == "mitoseg.decode.masks.BinarizeMedian"
    assert upgrade_targets({"_target_": "mitoseg.datasets.x"}) == {"_target_": "mitoseg.datasets.x"}
    # an instance checkpoint of the flat layout names its decoder in mitoseg.watershed
    old = {"postprocess": {"_target_": "mitoseg.watershed.BCWatershed", "min_size": 8}}
    new = upgrade_targets(old)["postprocess"]
    assert new == {"_target_": "mitoseg.decode.instances.BCWatershed", "min_size": 8}


def test_old_checkpoint_loads_its_weights() -> None:
    config, weights = load_checkpoint(FIXTURE)
    net = build_net(config, weights, str(FIXTURE))
    state = torch.load(FIXTURE, weights_only=True)["state_dict"]
    for name, value in net.state_dict().items():
        assert torch.equal(value, state[f"net.{name}"])


def test_old_checkpoint_resumes_training_and_predicts(tmp_path: Path) -> None:
    result = _run("mitoseg-train", *RUN, "trainer.max_steps=6", f"ckpt={FIXTURE}", cwd=tmp_path)
    assert "chosen on validation" in result.stdout
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6  # went on from step 4
    raw = tmp_path / "raw.zarr"
    io.write_volume(raw, np.random.default_rng(0).integers(0, 255, (20, 40, 40), np.uint8))
    _run("mitoseg-predict", f"ckpt={FIXTURE}", f"input={raw}", "output=probs.zarr",
         "trainer.enable_progress_bar=false", cwd=tmp_path)  # fmt: skip
    probs = io.open_volume(tmp_path / "probs.zarr")
    assert probs.shape == (1, 20, 40, 40) and probs.dtype == np.uint8
