"""Blockwise prediction: no seams, resume after a crash, one output for any block shape."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from mitoseg import io
from mitoseg.files import partial_path
from mitoseg.geometry import (
    block_grid,
    bounding_box,
    overlap_stride,
    tile_grid,
    tiles_touching,
)
from mitoseg.predict.blend import blend_weight
from mitoseg.predict.blocks import (
    NOTHING,
    BlockDataset,
    BlockJournal,
    BlockPlan,
    BlockSampler,
    journal_path,
)
from mitoseg.predict.tiles import BlockBlender
from mitoseg.predict.writer import BlockPredictData, BlockWriter, PredictJob
from mitoseg.train.module import SegmentationModule

SHAPE = (24, 40, 36)


def plan_for(raw: Path, block, tile=(8, 16, 16), overlap=0.5, dtype="float32", chunk=(4, 8, 12)):
    return BlockPlan(
        raw=str(raw),
        shape=SHAPE,
        channels=("a", "b"),
        dtype=dtype,
        block_shape=tuple(block),
        tile_shape=tuple(tile),
        overlap=overlap,
        blend="gaussian",
        tta="none",
        checkpoint="test",
        chunk_shape=tuple(chunk),
    )


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    data = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    path = tmp_path / "raw.zarr"
    io.write_volume(path, data, chunks=(8, 16, 16))
    return path


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 3, padding=1))


class Logit(nn.Module):
    """Identity in probability space: sigmoid(net(x)) == x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(1e-6, 1 - 1e-6)
        return torch.cat([torch.logit(x), torch.logit(1 - x)], dim=1)


def run_blocks(plan: BlockPlan, output: Path, net: nn.Module, **kwargs) -> np.ndarray:
    module = SegmentationModule(net, channels=plan.channels, tile_batch=3)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        callbacks=[BlockWriter([PredictJob(plan, output)], progress=False)],
    )
    data = BlockPredictData(PredictJob(plan, output), **kwargs)
    trainer.predict(module, datamodule=data, return_predictions=False)
    return io.open_volume(output)[:]


def test_tiles_touching_is_the_brute_force_selection() -> None:
    volume, tile = (23, 41, 17), (8, 16, 16)
    stride = overlap_stride(tile, 0.5)
    tiles = tile_grid(volume, tile, stride)
    for block in (b.write_roi for b in block_grid(volume, (8, 12, 10))):
        expected = [
            t
            for t in tiles
            if all(t.offset[i] < block.stop[i] and block.offset[i] < t.stop[i] for i in range(3))
        ]
        assert tiles_touching(volume, tile, stride, block) == expected


def test_block_grid_covers_every_voxel_once() -> None:
    count = np.zeros((23, 41, 17), dtype=int)
    for block in (b.write_roi for b in block_grid(count.shape, (8, 12, 10))):
        count[block.slices] += 1
    assert (count == 1).all()


@pytest.mark.parametrize("block", [(4, 8, 12), (8, 16, 24), (12, 40, 36)])
def test_blockwise_equals_single_block_run(tmp_path: Path, raw: Path, block) -> None:
    whole = run_blocks(plan_for(raw, SHAPE), tmp_path / "whole.zarr", small_net())
    blocks = run_blocks(plan_for(raw, block), tmp_path / "blocks.zarr", small_net())
    assert whole.shape == (2, *SHAPE)
    np.testing.assert_allclose(blocks, whole, rtol=0, atol=1e-6)
    assert not partial_path(tmp_path / "blocks.zarr").exists()
    assert not journal_path(tmp_path / "blocks.zarr").exists()


def test_identity_net_returns_its_input(tmp_path: Path, raw: Path) -> None:
    out = run_blocks(plan_for(raw, (8, 16, 12), tile=(8, 16, 16)), tmp_path / "p.zarr", Logit())
    expected = io.open_volume(raw)[:].astype(np.float32) / 255.0
    np.testing.assert_allclose(out[0], np.clip(expected, 1e-6, 1 - 1e-6), atol=2e-6)


def test_volume_smaller_than_a_tile(tmp_path: Path, raw: Path) -> None:
    plan = plan_for(raw, (8, 16, 12), tile=(32, 64, 64))
    out = run_blocks(plan, tmp_path / "p.zarr", Logit())
    expected = io.open_volume(raw)[:].astype(np.float32) / 255.0
    np.testing.assert_allclose(out[0], np.clip(expected, 1e-6, 1 - 1e-6), atol=2e-6)


def test_block_shape_must_be_whole_chunks(raw: Path) -> None:
    with pytest.raises(ValueError, match=r"block_shape \(6, 8, 12\) must be a multiple"):
        plan_for(raw, (6, 8, 12)).blocks()


class Killed(Exception):
    pass


class FailAt(BlockJournal):
    """Dies after block ``n``'s data is written but before it is recorded."""

    fail_at: int = -1

    def mark(self, index: int) -> None:
        if index == self.fail_at:
            raise Killed("killed between write and record")
        super().mark(index)


def test_block_written_but_not_recorded_is_redone(tmp_path: Path, raw: Path, monkeypatch) -> None:
    plan = plan_for(raw, (4, 8, 12), dtype="uint8")
    expected = run_blocks(plan, tmp_path / "whole.zarr", small_net())
    output = tmp_path / "p.zarr"
    FailAt.fail_at = 7
    monkeypatch.setattr("mitoseg.predict.writer.BlockJournal", FailAt)
    with pytest.raises(Killed):
        run_blocks(plan, output, small_net())
    done = BlockJournal(journal_path(output)).done()
    assert done == set(range(7)) and not output.exists()
    # Garbage in the unrecorded block and in a never-written one: both must be redone.
    partial = io.open_volume_writable(partial_path(output))
    for index in (7, 20):
        partial[(slice(None), *plan.blocks()[index].slices)] = 77
    FailAt.fail_at = -1
    resumed = run_blocks(plan, output, small_net())
    np.testing.assert_array_equal(resumed, expected)


def test_resume_refuses_other_settings(tmp_path: Path, raw: Path, monkeypatch) -> None:
    output = tmp_path / "p.zarr"
    FailAt.fail_at = 3
    monkeypatch.setattr("mitoseg.predict.writer.BlockJournal", FailAt)
    with pytest.raises(Killed):
        run_blocks(plan_for(raw, (4, 8, 12)), output, small_net())
    FailAt.fail_at = -1
    other = plan_for(raw, (4, 8, 12), overlap=0.25)
    with pytest.raises(io.VolumeError, match=r"other settings \(overlap: 0.5 -> 0.25\)"):
        run_blocks(other, output, small_net())
    # overwrite=true starts again from scratch with the new settings
    out = run_blocks(other, output, small_net(), overwrite=True)
    expected = run_blocks(other, tmp_path / "fresh.zarr", small_net())
    np.testing.assert_array_equal(out, expected)


def test_a_journal_from_before_the_sweep_order_resumes_only_in_that_order(
    tmp_path: Path, raw: Path, monkeypatch
) -> None:
    """Journals written before blocks were swept longest axis first numbered them z-major: an
    unfinished run of a volume now swept otherwise is refused (its numbers mean other blocks)."""
    output = tmp_path / "p.zarr"
    FailAt.fail_at = 3
    monkeypatch.setattr("mitoseg.predict.writer.BlockJournal", FailAt)
    plan = plan_for(raw, (4, 8, 12))
    with pytest.raises(Killed):
        run_blocks(plan, output, small_net())
    FailAt.fail_at = -1
    manifest = journal_path(output) / "plan.json"
    stored = json.loads(manifest.read_text())
    assert stored.pop("order") == [1, 2, 0]  # SHAPE (24, 40, 36): y, then x, then z
    manifest.write_text(json.dumps(stored))
    with pytest.raises(io.VolumeError, match=r"order: \[0, 1, 2\] -> \[1, 2, 0\]"):
        run_blocks(plan, output, small_net())


def test_finished_output_is_refused_without_overwrite(tmp_path: Path, raw: Path) -> None:
    plan = plan_for(raw, (8, 16, 12))
    run_blocks(plan, tmp_path / "p.zarr", small_net())
    with pytest.raises(io.VolumeError, match="already exists"):
        run_blocks(plan, tmp_path / "p.zarr", small_net())


def test_block_reads_only_the_tiles_it_runs(raw: Path) -> None:
    """A block reads the bounding box of the tiles it runs: all of them for the first block of
    a pass, its own (those starting in it) when the blocks before it ran in the same pass."""
    plan = plan_for(raw, (4, 8, 12))
    blocks = plan.blocks()
    sweep = plan.sweep
    volume = io.open_volume(raw)[:]
    for pending, index in ((None, 0), (None, 13), (None, len(blocks) - 1), ([13, 14], 13)):
        item = BlockDataset(plan, pending)[index]
        tiles = tiles_touching(plan.shape, plan.tile_shape, plan.stride, blocks[index])
        own = [t for t in tiles if sweep.owner(t.offset) == index]
        run = tiles if index == 0 or pending is not None else own
        assert item["run"].tolist() == [t in run for t in tiles]
        assert len(item["tiles"]) == len(tiles)
        assert item["write"].tolist() == [*blocks[index].offset, *blocks[index].shape]
        if not run:
            assert item["raw"].numel() == 0
            continue
        read = bounding_box(run)
        assert tuple(item["origin"]) == read.offset
        np.testing.assert_array_equal(item["raw"].numpy(), volume[read.slices])


def test_a_region_plan_reads_its_region_of_the_volume(raw: Path) -> None:
    """The validation part of a training volume is predicted as a plan with an offset: its
    blocks read the region's voxels, and its output has the region's shape."""
    region = dataclasses.replace(plan_for(raw, (4, 8, 12)), shape=(16, 24, 24), offset=(4, 8, 12))
    volume = io.open_volume(raw)[:]
    for index in (0, len(region.blocks()) - 1):
        item = BlockDataset(region, [index])[index]  # the first of its pass: reads all tiles
        read = bounding_box(
            tiles_touching(region.shape, region.tile_shape, region.stride, region.blocks()[index])
        )
        expected = volume[read.shift(region.offset).slices]
        np.testing.assert_array_equal(item["raw"].numpy(), expected)


def test_block_sampler_gives_ranks_contiguous_disjoint_unfinished_blocks() -> None:
    ranks = [list(BlockSampler(10, rank, 3, done={1, 7})) for rank in range(3)]
    assert ranks == [[0, 2], [3, 4, 5], [6, 8, 9]]
    # A rank with nothing left still takes one step, an empty item.
    assert list(BlockSampler(10, 0, 3, done={0, 1, 2})) == [NOTHING]
    assert BlockDataset.__getitem__(None, NOTHING) == {"index": NOTHING}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("block", "tile"),
    [
        ((8, 40, 36), (8, 16, 16)),
        ((16, 40, 36), (8, 16, 16)),
        ((8, 16, 24), (8, 16, 16)),
        ((4, 40, 36), (8, 16, 16)),
        ((4, 40, 36), (12, 16, 16)),  # a tile spans three blocks
        ((4, 40, 36), (16, 16, 16)),  # and four
        ((4, 8, 12), (8, 16, 16)),
        ((24, 8, 12), (8, 16, 16)),  # blocks in-plane only, tiles spanning 3 x 2 of them
    ],
)
def test_every_tile_runs_once_in_a_pass(raw: Path, block, tile) -> None:
    """Blocks run in sweep order carry what a tile adds to the later blocks it covers, along
    every axis and diagonally: each tile of the grid runs once, and the result equals one
    block. A pass over a part of the blocks (a rank's range, or a resumed run) runs the tiles
    it shares with the others too, and gives the same values."""
    net = small_net()
    seen: list[int] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        with torch.no_grad():
            return torch.sigmoid(net(x))

    def blend(plan: BlockPlan, pending: list[int] | None = None) -> np.ndarray:
        dataset = BlockDataset(plan, pending)
        blender = BlockBlender(torch.from_numpy(blend_weight(plan.tile_shape)), batch_size=3)
        out = np.zeros((2, *SHAPE), dtype=np.float32)
        for index, box in enumerate(plan.blocks()):
            if pending is None or index in pending:
                out[(slice(None), *box.slices)] = blender(predict, dataset[index]).numpy()
        return out

    whole = blend(plan_for(raw, SHAPE, tile=tile))
    seen.clear()
    plan = plan_for(raw, block, tile=tile)
    np.testing.assert_allclose(blend(plan), whole, rtol=0, atol=1e-6)
    assert sum(seen) == len(tile_grid(SHAPE, plan.tile_shape, plan.stride))  # every tile once
    n = len(plan.blocks())
    if n > 2:
        later = list(range(n // 2, n))
        part = blend(plan, later)
        for index in later:
            where = (slice(None), *plan.blocks()[index].slices)
            np.testing.assert_allclose(part[where], whole[where], rtol=0, atol=1e-6)
