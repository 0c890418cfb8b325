"""Small things users notice (issue 21, point 6): progress inside a block, every command says
where it wrote, the conversion cache in the user's cache folder, x / y sections at the voxel
aspect ratio, and ``--help`` that describes the keys users set."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from mitoseg import io
from mitoseg.geometry import Box
from mitoseg.predict.blocks import BlockPlan
from mitoseg.predict.tiles import BlockBlender
from mitoseg.predict.writer import BlockPredictData, BlockWriter, PredictJob
from mitoseg.train.module import SegmentationModule

# --- (a) progress inside a block ---------------------------------------------------------------


def test_blender_reports_tiles_done_after_each_batch() -> None:
    tile = (4, 8, 8)
    tiles = [Box((z, y, x), tile) for z in (0, 4) for y in (0, 8) for x in (0, 8)]
    seen: list[tuple[int, int]] = []
    blender = BlockBlender(torch.ones(tile), batch_size=3, progress=lambda *d: seen.append(d))
    raw = torch.rand(8, 16, 16)
    probs = blender(lambda x: x, raw, tiles, Box((0, 0, 0), (8, 16, 16)))
    assert seen == [(3, 8), (6, 8), (8, 8)]
    torch.testing.assert_close(probs[0], raw)  # progress changes nothing


def test_a_one_block_prediction_shows_its_tiles(tmp_path, capfd, monkeypatch) -> None:
    shape = (8, 32, 32)
    data = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    io.write_volume(tmp_path / "raw.zarr", data)
    plan = BlockPlan(
        raw=str(tmp_path / "raw.zarr"), shape=shape, channels=("fg",), dtype="uint8",
        block_shape=shape, tile_shape=(8, 16, 16), overlap=0.5, blend="gaussian", tta="none",
        checkpoint="test", chunk_shape=shape,
    )  # fmt: skip
    assert len(plan.blocks()) == 1
    job = PredictJob(plan, tmp_path / "probs.zarr")
    seen: list[tuple[int, int]] = []
    tiles_done = BlockWriter._tiles_done

    def record(self, done: int, total: int) -> None:
        seen.append((done, total))
        tiles_done(self, done, total)

    monkeypatch.setattr(BlockWriter, "_tiles_done", record)
    torch.manual_seed(0)
    module = SegmentationModule(nn.Conv3d(1, 1, 3, padding=1), channels=("fg",), tile_batch=4)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        use_distributed_sampler=False, callbacks=[BlockWriter([job], progress=True)],
    )  # fmt: skip
    trainer.predict(module, datamodule=BlockPredictData(job), return_predictions=False)
    # 3 x 3 tiles in y-x, one in z: three batches of at most 4, before the block is written
    assert seen == [(4, 9), (8, 9), (9, 9)]
    assert "tiles of block" in capfd.readouterr().err
    assert io.open_volume(tmp_path / "probs.zarr").shape == (1, *shape)
