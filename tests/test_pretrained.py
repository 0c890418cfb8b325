"""Pretrained models (issue 21.1, 21.2): a registry entry made from a checkpoint, loaded
weights-only with its sha256 checked, ``mitoseg-predict pretrained=<name>`` equal to
``ckpt=<the checkpoint>``, and ``mitoseg-train init=<name or checkpoint>`` (fine-tuning: matching
weights copied, the layers of another target reinitialised and listed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from mitoseg import pretrained
from mitoseg.cli.common import CONFIG_PATH, CheckpointError, load_checkpoint
from mitoseg.cli.train import train

TINY = [
    "data.train.shape=[24,48,48]",
    "data.patch_shape=[16,32,32]",
    "model.widths=[4,8]",
    "data.samples_per_epoch=2",
    "data.augment=null",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


def compose_train(overrides: list[str], output_dir: Path):
    """The config mitoseg-train composes, run folder ``output_dir``, without Hydra's own node."""
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


def _train(folder: Path, *overrides: str) -> Path:
    """A tiny in-process run in ``folder``; returns its last checkpoint."""
    cfg = compose_train([*TINY, f"data.cache_dir={folder.parent / 'cache'}", *overrides], folder)
    train(cfg)
    return folder / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 2-step semantic run, tested (metrics.json: the threshold chosen on validation)."""
    run = tmp_path_factory.mktemp("pretrained") / "run"
    return _train(run, "trainer.max_steps=2", "evaluate.sweep.threshold=[0.3,0.5]")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[1]


# --- init= -------------------------------------------------------------------------------------


def test_init_from_a_checkpoint_copies_weights_and_lists_the_reinitialised_output_layer(
    tiny: Path, tmp_path: Path, caplog
) -> None:
    """semantic (1 channel) -> bc (2 channels): every tensor but the output convolution's is
    the source's at step 0; the output layer is listed in the log, the checkpoint's run config
    and metrics.json."""
    source = _tensors(tiny)
    with caplog.at_level(logging.INFO, logger="mitoseg"):
        last = _train(
            tmp_path / "bc", f"init={tiny}", "target=bc", "trainer.max_steps=1", "test=false",
            "module.optimizer.lr=0",
        )  # fmt: skip
    tuned = _tensors(last)
    reshaped = sorted(k for k in source if source[k].shape != tuned[k].shape)
    assert reshaped and all(k.rsplit(".", 1)[0] == reshaped[0].rsplit(".", 1)[0] for k in reshaped)
    layer = reshaped[0].rsplit(".", 1)[0]
    for name, tensor in source.items():  # lr=0: the weights are still those copied
        if name.rsplit(".", 1)[0] != layer and "running" not in name and "batches" not in name:
            torch.testing.assert_close(tuned[name], tensor, msg=name)
    assert f"1 layer(s) reinitialised as their shapes do not fit: {layer}" in caplog.text
    run = torch.load(last, weights_only=True)["mitoseg"]["run"]
    report = run["init_weights"]
    assert report["source"] == str(tiny) and report["reinitialised"] == [layer]
    assert report["target"] == {"source": "semantic", "here": "bc"}
    assert report["copied_tensors"] == len(source) - len(reshaped)


def test_init_with_another_network_is_refused_naming_the_settings(tiny: Path, tmp_path) -> None:
    cfg = compose_train([*TINY, f"init={tiny}", "model.widths=[4,16]"], tmp_path)
    with pytest.raises(CheckpointError, match=r"init=.*last\.ckpt.*another network.*model\.widths"):
        train(cfg)


def test_init_with_an_unknown_name_lists_the_available_ones(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(pretrained.ENV, str(tmp_path / "registry"))
    (tmp_path / "registry" / "mine").mkdir(parents=True)
    (tmp_path / "registry" / "mine" / pretrained.MANIFEST).write_text("{}")
    cfg = compose_train([*TINY, "init=lucchi"], tmp_path)
    with pytest.raises(
        pretrained.PretrainedError, match=r"unknown pretrained model 'lucchi'; available: .*mine"
    ):
        train(cfg)
    cfg = compose_train([*TINY, "init=runs/nothing.ckpt"], tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint not found: runs/nothing\.ckpt"):
        train(cfg)
