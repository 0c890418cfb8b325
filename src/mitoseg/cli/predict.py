"""``mitoseg-predict``: tile-predict a volume with a checkpoint into a probability zarr."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from mitoseg import io
from mitoseg.callbacks import TilePredictionWriter
from mitoseg.cli.common import CONFIG_PATH, build_net, load_checkpoint
from mitoseg.data import FileVolumes, TileDataset
from mitoseg.module import SegmentationModule

log = logging.getLogger(__name__)

PREDICT_KEYS = ("tile_shape", "overlap", "tta", "dtype", "batch_size", "blend")


def predict_settings(cfg: DictConfig, stored: DictConfig) -> DictConfig:
    """The checkpoint's ``predict`` section with the non-null command-line values on top."""
    settings = OmegaConf.to_container(stored.predict, resolve=True)
    assert isinstance(settings, dict)
    for key in PREDICT_KEYS:
        if cfg.get(key) is not None:
            settings[key] = (
                OmegaConf.to_container(cfg[key]) if OmegaConf.is_config(cfg[key]) else cfg[key]
            )
    return OmegaConf.create(settings)


def predict(cfg: DictConfig) -> Path:
    """Run the tile prediction; returns the output path."""
    output = Path(cfg.output).expanduser()
    if output.exists() and not cfg.overwrite:
        raise io.VolumeError(f"output {output} already exists; pass overwrite=true to replace it")
    stored, weights = load_checkpoint(cfg.ckpt)
    net = build_net(stored, weights, str(cfg.ckpt))
    settings = predict_settings(cfg, stored)
    voxel_size = cfg.voxel_size_nm or stored.get("data", {}).get("voxel_size_nm") or (1.0, 1.0, 1.0)
    paths = FileVolumes(cfg.input, raw_dataset=cfg.dataset, voxel_size_nm=voxel_size).prepare(
        Path(cfg.cache_dir)
    )
    dataset = TileDataset(paths, settings.tile_shape, settings.overlap)
    loader = DataLoader(dataset, batch_size=settings.batch_size, num_workers=cfg.num_workers)
    module = SegmentationModule(net, loss=None, optimizer=None, tta=settings.tta)
    writer = TilePredictionWriter(
        [output],
        list(stored.target.channels),
        tuple(settings.tile_shape),
        settings.dtype,
        settings.blend,
    )
    trainer = pl.Trainer(
        **cfg.trainer, logger=False, callbacks=[writer], enable_checkpointing=False
    )
    start = time.perf_counter()
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    seconds = time.perf_counter() - start
    voxels = dataset.shape[0] * dataset.shape[1] * dataset.shape[2]
    print(
        f"wrote {output}: {len(stored.target.channels)} x {dataset.shape} {settings.dtype}, "
        f"{len(dataset)} tiles in {seconds:.1f} s ({voxels / seconds / 1e6:.2f} Mvox/s)"
    )
    return output


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def _main(cfg: DictConfig) -> None:
    predict(cfg)


def main() -> None:
    _main()
