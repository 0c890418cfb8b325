"""Reliability: bad input is refused with a message naming the file, key or shape and loses
nothing; a killed training resumes exactly; the same seed gives the same data, patches and (on
CPU) weights; results and checkpoints are written atomically; checkpoints never run code."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import tifffile
import torch
import zarr
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import open_dict
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from mitoseg import io
from mitoseg.cli.common import CheckpointError, compose_config, load_checkpoint
from mitoseg.cli.predict import predict
from mitoseg.cli.train import fill_compute, resume_checkpoint, train
from mitoseg.datasets.synthetic import make_volume
from mitoseg.datasets.volumes import FileVolumes, VolumePaths
from mitoseg.files import write_json_atomic
from mitoseg.geometry import Box
from mitoseg.train.augment import Augmenter
from mitoseg.train.checkpoints import (
    AtomicCheckpointIO,
    RngStateInCheckpoint,
    UnsafeCheckpointError,
)
from mitoseg.train.data import PatchDataset, TileDataset, VolumeDataModule
from mitoseg.train.sampling import EpochSampler, ResumableLoader
from mitoseg.train.targets import Semantic
from tests.test_cli import BIN, TINY, run
from tests.test_config import compose_train

# TINY with checkpoints every 2 steps, 4 epochs of 3 batches, no test-time evaluation.
STEPS = 12
RUN = [
    *[o for o in TINY if not o.startswith(("trainer.max_steps", "hydra.run.dir"))],
    f"trainer.max_steps={STEPS}",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "test=false",
]
COMPOSE = ["data.train.shape=[32,64,64]", "data.patch_shape=[16,32,32]", "model.widths=[4,8,16]"]


def _rand(shape=(6, 16, 16), dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(0).integers(1, 200, shape).astype(dtype)


def _zarr(path: Path, data: np.ndarray, chunks=(4, 8, 8)) -> Path:
    """A plain zarr array, as a user might hand one in (not written by mitoseg)."""
    zarr.create_array(store=str(path), data=data, chunks=chunks)
    return path


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- 1. bad input ------------------------------------------------------------------------


def test_missing_or_unreadable_file_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(io.VolumeError, match=r"nope\.tif does not exist"):
        io.convert(tmp_path / "nope.tif", tmp_path / "a.zarr")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(io.VolumeError, match=r"cannot read TIFF .*bad\.tif"):
        io.convert(tmp_path / "bad.tif", tmp_path / "b.zarr")
    with pytest.raises(io.VolumeError, match=r"input volume not found: .*gone\.tif"):
        FileVolumes("gone.tif", "gone_labels.tif").prepare(tmp_path / "cache", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif"]


def test_raw_and_labels_of_different_shapes_are_refused(tmp_path: Path) -> None:
    raw = _zarr(tmp_path / "raw.zarr", _rand((6, 16, 16)))
    labels = _zarr(tmp_path / "labels.zarr", np.ones((6, 16, 12), np.uint8))
    with pytest.raises(
        io.VolumeError, match=r"raw\.zarr.*\(6, 16, 16\).*labels\.zarr.*\(6, 16, 12\)"
    ):
        FileVolumes(str(raw), str(labels)).prepare(tmp_path / "cache")
    tifffile.imwrite(tmp_path / "raw.tif", _rand((6, 16, 16)))
    tifffile.imwrite(tmp_path / "labels.tif", np.ones((5, 16, 16), np.uint8))
    with pytest.raises(
        io.VolumeError, match=r"raw\.tif.*\(6, 16, 16\).*labels\.tif.*\(5, 16, 16\)"
    ):
        io.check_same_shape(tmp_path / "raw.tif", tmp_path / "labels.tif")


def test_non_numeric_nan_or_inf_images_are_refused_naming_file_and_place(tmp_path: Path) -> None:
    for bad, z in ((np.nan, 3), (np.inf, 1)):
        raw = _rand().astype(np.float32)
        raw[z, 2, 2] = bad
        tifffile.imwrite(tmp_path / "f.tif", raw)
        with pytest.raises(io.VolumeError, match=rf"f\.tif, slice {z}\b.*NaN or inf"):
            io.convert(tmp_path / "f.tif", tmp_path / "f.zarr")
        assert not (tmp_path / "f.zarr").exists()
    complex_raw = _zarr(tmp_path / "c.zarr", _rand().astype(np.complex64))
    with pytest.raises(io.VolumeError, match=r"c\.zarr, slice 0.*unsupported raw dtype complex64"):
        io.convert(complex_raw, tmp_path / "c_out.zarr")
    # zarr inputs are used as they are by training and prediction: checked there.
    with pytest.raises(io.VolumeError, match=r"raw .*c\.zarr has dtype complex64"):
        FileVolumes(str(complex_raw)).prepare(tmp_path / "cache")
    raw = _rand().astype(np.float32)
    raw[5, 15, 15] = -np.inf
    with pytest.raises(io.VolumeError, match=r"inf\.zarr holds NaN or inf values at z 4:6, y 8:16"):
        FileVolumes(str(_zarr(tmp_path / "inf.zarr", raw))).prepare(tmp_path / "cache")


def test_empty_or_constant_volume_is_refused(tmp_path: Path, caplog) -> None:
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f.create_dataset("raw", shape=(0, 8, 8), dtype=np.uint8)
    with pytest.raises(io.VolumeError, match=r"e\.h5 is empty: shape \(0, 8, 8\)"):
        io.convert(tmp_path / "e.h5", tmp_path / "e.zarr")
    assert not (tmp_path / "e.zarr").exists()
    constant = _zarr(tmp_path / "k.zarr", np.full((6, 16, 16), 7, np.uint8))
    with pytest.raises(io.VolumeError, match=r"k\.zarr is constant \(every voxel is 7"):
        FileVolumes(str(constant)).prepare(tmp_path / "cache")
    io.convert(constant, tmp_path / "k2.zarr")  # converting is fine, with a warning
    assert "k.zarr is constant" in caplog.text
    # Training labels without any foreground: nothing to learn.
    raw = _zarr(tmp_path / "raw.zarr", _rand((6, 16, 16)))
    labels = _zarr(tmp_path / "zeros.zarr", np.zeros((6, 16, 16), np.uint8))
    data = VolumeDataModule(
        FileVolumes(str(raw), str(labels)),
        target=Semantic(),
        cache_dir=str(tmp_path / "cache"),
        patch_shape=(4, 8, 8),
    )
    with pytest.raises(io.VolumeError, match=r"zeros\.zarr hold no foreground"):
        data.setup("fit")


def test_labels_with_unexpected_values_are_refused(tmp_path: Path) -> None:
    labels = np.zeros((6, 16, 16), np.float32)
    labels[4, 3, 3] = 0.5
    tifffile.imwrite(tmp_path / "l.tif", labels)
    with pytest.raises(io.VolumeError, match=r"l\.tif, slice 4.*non-integer"):
        io.convert(tmp_path / "l.tif", tmp_path / "l.zarr", labels=True)
    mask = np.zeros((6, 16, 16), np.uint8)
    mask[0, :2] = 255
    mask[3, :2] = 7
    tifffile.imwrite(tmp_path / "m.tif", mask)
    with pytest.raises(io.VolumeError, match=r"m\.tif, slice 3.*not a binary mask.*\{0, 7\}"):
        io.convert(tmp_path / "m.tif", tmp_path / "m.zarr", labels=True, binary=True)
    assert not (tmp_path / "l.zarr").exists() and not (tmp_path / "m.zarr").exists()
    raw = _zarr(tmp_path / "raw.zarr", _rand())
    float_labels = _zarr(tmp_path / "fl.zarr", np.ones((6, 16, 16), np.float32))
    with pytest.raises(io.VolumeError, match=r"labels .*fl\.zarr have dtype float32"):
        FileVolumes(str(raw), str(float_labels)).prepare(tmp_path / "cache")
    signed = np.ones((6, 16, 16), np.int16)
    signed[2, 9, 9] = -3
    signed_labels = _zarr(tmp_path / "neg.zarr", signed)
    with pytest.raises(io.VolumeError, match=r"neg\.zarr hold negative values \(min -3\) at z 0:4"):
        FileVolumes(str(raw), str(signed_labels)).prepare(tmp_path / "cache")


def test_corrupt_zarr_chunk_is_named_and_the_old_output_survives(tmp_path: Path) -> None:
    src = _zarr(tmp_path / "src.zarr", _rand((8, 16, 16)))
    io.convert(src, tmp_path / "out.zarr")
    before = io.open_volume(tmp_path / "out.zarr")[:]
    chunk = sorted(p for p in src.rglob("*") if p.is_file() and "c" in p.relative_to(src).parts)
    chunk[-1].write_bytes(b"garbage!" * 8)  # the last chunk: z 4:8, y 8:16, x 8:16
    with pytest.raises(io.VolumeError, match=r"cannot read slices 0\.\.7 of .*src\.zarr"):
        io.convert(src, tmp_path / "out.zarr", overwrite=True)
    np.testing.assert_array_equal(io.open_volume(tmp_path / "out.zarr")[:], before)
    assert _leftovers(tmp_path) == []
    tiles = TileDataset(VolumePaths(src), (4, 8, 8), overlap=0.0)
    with pytest.raises(io.VolumeError, match=r"cannot read .*src\.zarr at z 4:8, y 8:16, x 8:16"):
        [tiles[i] for i in range(len(tiles))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run of STEPS steps in ``ref/`` (checkpoints every 2 steps), no test stage."""
    cwd = tmp_path_factory.mktemp("reliability")
    run("mitoseg-train", *RUN, "hydra.run.dir=ref", cwd=cwd)
    return cwd


def test_checkpoint_of_another_target_or_model_is_refused(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "ref" / "checkpoints" / "last.ckpt"
    same = compose_train([*COMPOSE, f"ckpt={ckpt}"], tmp_path)
    assert resume_checkpoint(same) == str(ckpt)
    other_target = compose_train([*COMPOSE, f"ckpt={ckpt}", "target=bc"], tmp_path)
    with pytest.raises(CheckpointError, match=r"last\.ckpt was trained for target 'semantic'"):
        resume_checkpoint(other_target)
    other_model = compose_train([*COMPOSE, f"ckpt={ckpt}", "model.widths=[4,8,8]"], tmp_path)
    with pytest.raises(
        CheckpointError, match=r"last\.ckpt holds another model.*model\.widths=\[4, 8, 16\] there"
    ):
        resume_checkpoint(other_model)


def test_unknown_or_misspelt_config_key_is_rejected(tmp_path: Path) -> None:
    """What the entry points compose (Hydra's struct mode): an unknown key is an error naming
    it, at the top level, in a group and deep in a nested section; so is a misspelt group."""
    for override in (
        "seeed=1",
        "data.patch_shap=[8,8,8]",
        "callbacks.model_checkpoint.every_n_train_step=2",
        "module.optimizer.lrr=0.1",
    ):
        key = override.split("=")[0]
        with pytest.raises(ConfigCompositionException, match=rf"Could not override '{key}'"):
            compose_train([override], tmp_path)
    with pytest.raises(ConfigCompositionException, match="resunett"):
        compose_train(["model=resunett"], tmp_path)
    with pytest.raises(ConfigCompositionException, match="overwrit"):
        compose_config("predict", ["ckpt=a", "input=b", "output=c", "overwrit=true"])


def test_patch_larger_than_the_volume_is_refused_at_setup(small_zarr) -> None:
    raw, labels = small_zarr  # (24, 48, 56); the training region is x 0:42
    data = VolumeDataModule(
        FileVolumes(str(raw), str(labels)),
        target=Semantic(),
        cache_dir=str(raw.parent / "cache"),
        patch_shape=(32, 16, 16),
        val_fraction=0.25,
    )
    with pytest.raises(
        io.VolumeError,
        match=r"patch_shape \(32, 16, 16\) is larger than the training region \(24, 48, 42\) "
        r".*raw\.zarr, shape \(24, 48, 56\)",
    ):
        data.setup("fit")


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _rand())
    tifffile.imwrite(tmp_path / "b.tif", _rand() // 2)
    io.convert(tmp_path / "a.tif", tmp_path / "o.zarr")
    with pytest.raises(io.VolumeError, match=r"o\.zarr already exists; pass overwrite"):
        io.convert(tmp_path / "b.tif", tmp_path / "o.zarr")
    np.testing.assert_array_equal(io.open_volume(tmp_path / "o.zarr")[:], _rand())
    io.convert(tmp_path / "b.tif", tmp_path / "o.zarr", overwrite=True)
    np.testing.assert_array_equal(io.open_volume(tmp_path / "o.zarr")[:], _rand() // 2)
    # mitoseg-predict refuses before it loads anything.
    cfg = compose_config("predict", ["ckpt=x", "input=y", f"output={tmp_path / 'o.zarr'}"])
    with pytest.raises(io.VolumeError, match=r"output .*o\.zarr already exists; pass overwrite"):
        predict(cfg)


# --- 2. resume ---------------------------------------------------------------------------


def test_killed_training_resumes_from_last_with_optimizer_scheduler_and_data_order(
    trained: Path,
) -> None:
    """SIGKILL once last.ckpt exists, then ``ckpt=last``: the run ends with the weights,
    optimiser and scheduler state of the uninterrupted run (bit for bit on CPU)."""
    env = {**os.environ, "MITOSEG_CACHE": str(trained / "cache")}
    last = trained / "killed" / "checkpoints" / "last.ckpt"
    with (trained / "killed.log").open("w") as log:
        process = subprocess.Popen(
            [str(BIN / "mitoseg-train"), *RUN, "hydra.run.dir=killed"],
            cwd=trained,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        while not last.exists() and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    saved = _checkpoint(last)
    step = saved["global_step"]
    assert 0 < step < STEPS
    position = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert position["epoch"] * 3 + position["batches"] == step  # 3 batches per epoch
    run("mitoseg-train", *RUN, "hydra.run.dir=killed", "ckpt=last", cwd=trained)
    resumed, reference = _checkpoint(last), _checkpoint(trained / "ref/checkpoints/last.ckpt")
    assert resumed["global_step"] == reference["global_step"] == STEPS
    # Adam's step count goes on from the checkpoint's: its state was restored, not restarted.
    adam, adam_ref = resumed["optimizer_states"][0], reference["optimizer_states"][0]
    assert [int(s["step"]) for s in adam["state"].values()] == [STEPS] * len(adam["state"])
    for key, state in adam["state"].items():
        _assert_same_tensors(state, adam_ref["state"][key])
    assert adam["param_groups"] == adam_ref["param_groups"]
    assert resumed["lr_schedulers"] == reference["lr_schedulers"]
    assert resumed["lr_schedulers"][0]["last_epoch"] == STEPS
    # Same weights: the same patches in the same order, the same optimiser steps.
    _assert_same_tensors(resumed["state_dict"], reference["state_dict"])
    assert resumed["callbacks"]["RngStateInCheckpoint"]["torch"].dtype == torch.uint8


def test_ckpt_last_without_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    cfg = compose_train(["ckpt=last"], tmp_path)
    with pytest.raises(CheckpointError, match=r"ckpt=last: there is no .*checkpoints/last\.ckpt"):
        resume_checkpoint(cfg)


class _Indices(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> int:
        return index


class _Recorder(pl.LightningModule):
    """Records the sample indices it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[int] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen += batch.tolist()
        return ((self.weight - batch.float()) ** 2).mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit_indices(root: Path, ckpt: Path | None = None, save: bool = False) -> list[int]:
    callbacks = []
    if save:  # a checkpoint after every step, and one after every validation (epoch end)
        callbacks = [
            ModelCheckpoint(root / "steps", "s{step}", every_n_train_steps=1, save_top_k=-1),
            ModelCheckpoint(root / "epochs", "e{epoch}-s{step}", save_top_k=-1),
        ]
    module = _Recorder()
    trainer = pl.Trainer(
        max_steps=8,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=save,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    train = ResumableLoader(_Indices(), batch_size=2, sampler=EpochSampler(6))
    val = DataLoader(_Indices(), batch_size=6)
    trainer.fit(module, train, val, ckpt_path=ckpt, weights_only=True)
    return module.seen


def test_resumed_run_trains_on_the_samples_the_uninterrupted_run_would_have(tmp_path) -> None:
    full = _fit_indices(tmp_path, save=True)
    assert full == list(range(16))  # EpochSampler: epoch * 6 + i
    checkpoints = sorted(tmp_path.glob("*/*.ckpt"))
    assert len(checkpoints) >= 8 + 2
    for ckpt in checkpoints:
        step = _checkpoint(ckpt)["global_step"]
        resumed = _fit_indices(tmp_path / "resumed" / ckpt.stem, ckpt)
        assert resumed == full[2 * step :], ckpt.name


def test_global_rng_states_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    callback = RngStateInCheckpoint()
    torch.save({"rng": callback.state_dict()}, tmp_path / "rng.ckpt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    callback.load_state_dict(_checkpoint(tmp_path / "rng.ckpt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


# --- 3. determinism ----------------------------------------------------------------------


def test_same_seed_same_synthetic_volume() -> None:
    raw, labels = make_volume((16, 48, 48), seed=7)
    raw2, labels2 = make_volume((16, 48, 48), seed=7)
    np.testing.assert_array_equal(raw, raw2)
    np.testing.assert_array_equal(labels, labels2)
    assert not np.array_equal(raw, make_volume((16, 48, 48), seed=8)[0])


def test_same_seed_same_augmented_patches(small_zarr) -> None:
    def patches(seed: int) -> list[torch.Tensor]:
        region = Box((0, 0, 0), (24, 48, 40))
        dataset = PatchDataset(
            VolumePaths(*small_zarr), region, (8, 16, 16), Semantic(), Augmenter(), seed=seed
        )
        return [t for i in (0, 5, 123) for t in dataset[i].values()]

    for a, b in zip(patches(3), patches(3), strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(patches(3), patches(4), strict=True))


def test_same_seed_same_trained_weights_on_cpu(trained: Path, tmp_path: Path, monkeypatch) -> None:
    """A second run with the same seed, here in this process, against the reference run of the
    console script: the same weights, bit for bit (CPU; trainer.deterministic is not needed)."""
    monkeypatch.setenv("MITOSEG_CACHE", str(trained / "cache"))
    cfg = compose_train(RUN, tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]  # as in the entry point, which never sees the hydra section
    assert train(cfg) == {}
    again = _checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    reference = _checkpoint(trained / "ref" / "checkpoints" / "last.ckpt")
    assert again["global_step"] == STEPS
    _assert_same_tensors(again["state_dict"], reference["state_dict"])


# --- 4. atomic outputs -------------------------------------------------------------------


def test_checkpoints_and_metrics_are_replaced_atomically(tmp_path: Path, monkeypatch) -> None:
    cfg = compose_train(["trainer.accelerator=cpu"], tmp_path)
    fill_compute(cfg)  # trainer.precision=auto resolved, as mitoseg-train does
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    ckpt_io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    ckpt_io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    write_json_atomic(tmp_path / "metrics.json", {"fg_iou": 0.5})

    def killed(fd: int) -> None:  # the process dies after writing, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt_io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(tmp_path / "metrics.json", {"fg_iou": 0.9})
    assert _checkpoint(path)["global_step"] == 1
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"fg_iou": 0.5}
    assert _leftovers(tmp_path) == []


# --- 5. untrusted checkpoints ------------------------------------------------------------


class _Payload:
    """Unpickling it would create ``marker``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt cannot be loaded safely"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt"):
        AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=False"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt cannot be loaded safely"):
        resume_checkpoint(compose_train([f"ckpt={path}"], tmp_path))
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really runs code when trusted
    assert marker.exists()


def test_a_fresh_run_refuses_a_folder_holding_an_earlier_run(tmp_path) -> None:
    from mitoseg.cli.train import refuse_finished_run

    refuse_finished_run(tmp_path, overwrite=False)  # empty: fine
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a run.*ckpt=last.*overwrite=true"):
        refuse_finished_run(tmp_path, overwrite=False)
    refuse_finished_run(tmp_path, overwrite=True)
