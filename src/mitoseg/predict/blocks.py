"""Blockwise, resumable, multi-process prediction into a probability zarr (Lightning glue).

The volume is split into blocks made of whole output chunks (:func:`geometry.block_grid`). Each
block is one item of :class:`BlockDataset`: the raw data of its ``read_roi`` and the tiles that
cover it; ``SegmentationModule.predict_step`` blends them (:func:`mitoseg.predict.tiles.predict_block`)
and :class:`BlockWriter` writes the block, then records it in a :class:`BlockJournal`. A block
is recorded only after its chunks are written, so a run killed at any point and started again
redoes unfinished blocks only. Under DDP every rank takes a contiguous range of blocks:
disjoint sets of whole chunks, so no two ranks write the same chunk. Global rank 0 creates (or
checks) the output before any rank starts, and finalises it once every rank is done.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mitoseg import io
from mitoseg.analyze.report import write_json_atomic
from mitoseg.geometry import (
    Box,
    block_grid,
    bounding_box,
    check_block_shape,
    overlap_stride,
    tiles_touching,
)
from mitoseg.io.checks import read_box
from mitoseg.predict.tiles import to_storage
from mitoseg.train.callbacks import create_probs
from mitoseg.train.data import to_float

log = logging.getLogger(__name__)

CHUNK_SHAPE = (32, 256, 256)  # (z, y, x) chunks of the probabilities zarr
NOTHING = -1  # the index of an empty work item


@dataclass(frozen=True)
class BlockPlan:
    """Everything a blockwise prediction's output depends on; stored in the journal so that a
    resumed run continues only the same job.
    """

    raw: str
    shape: tuple[int, int, int]
    channels: tuple[str, ...]
    dtype: str
    block_shape: tuple[int, int, int]
    tile_shape: tuple[int, int, int]
    overlap: float
    blend: str
    tta: str
    checkpoint: str
    chunk_shape: tuple[int, int, int] = CHUNK_SHAPE

    @property
    def stride(self) -> tuple[int, int, int]:
        return overlap_stride(self.tile_shape, self.overlap)

    @property
    def chunks(self) -> tuple[int, int, int]:
        return tuple(min(c, s) for c, s in zip(self.chunk_shape, self.shape, strict=True))  # type: ignore[return-value]

    def blocks(self) -> list[Box]:
        check_block_shape(self._block, self.chunks)
        return block_grid(self.shape, self._block)

    @property
    def _block(self) -> tuple[int, int, int]:
        return tuple(min(b, s) for b, s in zip(self.block_shape, self.shape, strict=True))  # type: ignore[return-value]

    def next_along_z(self, index: int) -> int | None:
        """The index of the block after ``index`` along z (same y/x), or None at the end."""
        per_z = math.prod(
            math.ceil(s / b) for s, b in zip(self.shape[1:], self._block[1:], strict=True)
        )
        following = index + per_z
        return following if following < len(self.blocks()) else None

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class BlockJournal:
    """Which blocks of an output are written: one marker file per block, made after its data.

    Args:
        path: the journal's directory (next to the partial output).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def _manifest(self) -> Path:
        return self.path / "plan.json"

    def create(self, plan: BlockPlan) -> None:
        (self.path / "done").mkdir(parents=True, exist_ok=True)
        write_json_atomic(self._manifest, plan.to_json())

    def check(self, plan: BlockPlan, output: Path) -> None:
        """Refuse to continue a partial output that another job (other settings) started."""
        if not self._manifest.exists():
            raise io.VolumeError(
                f"{output}: a partial output without a journal ({self._manifest}) is in the "
                "way; pass overwrite=true to start again"
            )
        stored = json.loads(self._manifest.read_text())
        wanted = plan.to_json()
        differ = sorted(k for k in wanted if stored.get(k) != wanted[k])
        if differ:
            details = "; ".join(f"{k}: {stored.get(k)} -> {wanted[k]}" for k in differ)
            raise io.VolumeError(
                f"{output}: the unfinished run there used other settings ({details}); pass "
                "overwrite=true to start again, or the same settings to resume"
            )

    def done(self) -> set[int]:
        folder = self.path / "done"
        return (
            {int(p.name) for p in folder.iterdir() if p.name.isdigit()}
            if folder.exists()
            else set()
        )

    def mark(self, index: int) -> None:
        """Record block ``index`` as written; call only once its data is in the output."""
        marker = self.path / "done" / str(index)
        tmp = marker.with_name(f".{index}.tmp")
        tmp.write_bytes(b"")
        tmp.replace(marker)


def partial_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.partial")


def journal_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.blocks")


def _pad_to(data: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Reflect-pad a read region smaller than one tile (a volume smaller than the tile)."""
    pad = [(0, max(0, int(t) - s)) for t, s in zip(shape, data.shape, strict=True)]
    if not any(p[1] for p in pad):
        return data
    return np.pad(data, pad, mode="reflect" if min(data.shape) > 1 else "edge")


class BlockDataset(Dataset):
    """Items are blocks: ``raw`` (Zr, Yr, Xr) of the read region (uint8 as stored, else float32
    in [0, 1]), ``tiles`` int64 (n, 6) and ``write`` int64 (6,) as offset + shape in read-region
    coordinates, ``origin`` (the read region's global offset), ``next_write`` (the next block
    along z as a global offset + shape, or None), and ``index``, the block's number in the plan.
    """

    def __init__(self, plan: BlockPlan, indices: Sequence[int]) -> None:
        self.plan = plan
        self.blocks = plan.blocks()
        self.indices = list(indices)
        self._raw: Any = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_raw": None}  # each worker opens the zarr itself

    def __getitem__(self, item: int) -> dict[str, Any]:
        index = self.indices[item]
        if index == NOTHING:
            return {"index": NOTHING}
        if self._raw is None:
            self._raw = io.open_volume(self.plan.raw)
        block = self.blocks[index]
        plan = self.plan
        tiles = tiles_touching(plan.shape, plan.tile_shape, plan.stride, block)
        read = bounding_box(tiles)
        raw = read_box(self._raw, read, Path(plan.raw))
        raw = _pad_to(raw if raw.dtype == np.uint8 else to_float(raw), plan.tile_shape)
        origin = np.array(read.offset)
        following = self.plan.next_along_z(index)
        next_write = None
        if following is not None:
            box = self.blocks[following]
            next_write = torch.tensor([*box.offset, *box.shape])
        return {
            "raw": torch.from_numpy(np.ascontiguousarray(raw)),
            "tiles": torch.tensor([[*(np.array(t.offset) - origin), *t.shape] for t in tiles]),
            "write": torch.tensor([*(np.array(block.offset) - origin), *block.shape]),
            "tile_shape": plan.tile_shape,
            "origin": read.offset,
            "next_write": next_write,
            "index": index,
        }


class BlockPredictData(pl.LightningDataModule):
    """Creates or checks the output (global rank 0, before any rank predicts) and serves each
    rank its unfinished blocks.

    Args:
        plan: the job.
        output: final zarr path of the probabilities.
        overwrite: start again, discarding a finished or unfinished output at ``output``.
        voxel_size_nm: stored in the output's attributes.
        num_workers: data-loader workers reading blocks.
    """

    prepare_data_per_node = False  # one shared file system: only global rank 0 prepares

    def __init__(
        self,
        plan: BlockPlan,
        output: Path,
        overwrite: bool = False,
        voxel_size_nm: Sequence[float] | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.plan, self.output, self.overwrite = plan, Path(output), overwrite
        self.voxel_size_nm, self.num_workers = voxel_size_nm, num_workers
        self.journal = BlockJournal(journal_path(self.output))
        self.pending: list[int] = []

    def prepare_data(self) -> None:
        partial, plan = partial_path(self.output), self.plan
        if self.overwrite:
            for path in (partial, self.journal.path):
                if path.exists():
                    shutil.rmtree(path)
        elif self.output.exists():
            raise io.VolumeError(
                f"output {self.output} already exists; pass overwrite=true to replace it"
            )
        if partial.exists():
            self.journal.check(plan, self.output)
            log.info(
                "resuming %s: %d blocks already written", self.output, len(self.journal.done())
            )
            return
        if self.journal.path.exists():
            shutil.rmtree(self.journal.path)  # a journal without its output records nothing
        create_probs(
            partial, plan.channels, plan.shape, plan.dtype, self.voxel_size_nm, plan.chunks
        )
        self.journal.create(plan)

    def setup(self, stage: str) -> None:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        done = self.journal.done()
        n = len(self.plan.blocks())
        # Ownership by index, not by what is left: ranks never need to agree on the journal.
        # Consecutive blocks per rank: a block follows its z-neighbour, whose tiles it reuses.
        mine = range(n * rank // world, n * (rank + 1) // world)
        self.pending = [i for i in mine if i not in done]

    def predict_dataloader(self) -> DataLoader:
        # A rank with nothing left still runs one empty step: Lightning skips the hooks of an
        # empty loader, and the other ranks would wait for it at the end.
        dataset = BlockDataset(self.plan, self.pending or [NOTHING])
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers)


class BlockWriter(pl.Callback):
    """Write each predicted block into the partial output, record it, show progress; rank 0
    finalises (pyramid, rename) once every block of every rank is recorded.

    Args:
        plan: the job.
        output: final zarr path.
        progress: show a progress bar (rank 0: its blocks done / total, Mvox/s).
    """

    def __init__(self, plan: BlockPlan, output: Path, progress: bool = True) -> None:
        self.plan, self.output, self.progress = plan, Path(output), progress
        self.blocks = plan.blocks()
        self.journal = BlockJournal(journal_path(self.output))
        self.summary: dict[str, Any] = {}
        self._out: Any = None
        self._bar: Any = None
        self._voxels = 0
        self._written = 0
        self._start = 0.0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._out = io.open_volume_writable(partial_path(self.output))
        mine = len(trainer.datamodule.pending)
        self._bar = tqdm(
            total=mine,
            unit="block",
            desc=f"predict rank {trainer.global_rank}" if trainer.world_size > 1 else "predict",
            disable=not self.progress or trainer.global_rank != 0,
        )
        self._voxels, self._written, self._start = 0, 0, time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # type: ignore[no-untyped-def]
        index = int(outputs["index"])
        if index == NOTHING:
            return
        block = self.blocks[index]
        probs = to_storage(outputs["probs"], str(self._out.dtype)).cpu().numpy()
        self._out[(slice(None), *block.slices)] = probs
        self.journal.mark(index)
        self._voxels += block.size
        self._written += 1
        seconds = time.perf_counter() - self._start
        self._bar.set_postfix_str(f"{self._voxels / max(seconds, 1e-9) / 1e6:.2f} Mvox/s")
        self._bar.update(1)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._bar.close()
        seconds = time.perf_counter() - self._start
        trainer.strategy.barrier("mitoseg-blocks-written")
        if trainer.global_rank == 0:
            self.finish()
        trainer.strategy.barrier("mitoseg-output-final")
        self.summary = {
            "blocks": len(self.blocks),
            "voxels": int(np.prod(self.plan.shape)),
            "rank_blocks": self._written,
            "rank_seconds": seconds,
        }

    def finish(self) -> None:
        """Check that every block is recorded, build the pyramid and move the output in place."""
        n = len(self.blocks)
        missing = sorted(set(range(n)) - self.journal.done())
        if missing:
            raise RuntimeError(
                f"{self.output}: blocks {missing[:10]} of {n} were not written; run again to "
                "finish them"
            )
        partial = partial_path(self.output)
        io.finalize_volume(partial)
        if self.output.exists():
            shutil.rmtree(self.output)
        partial.rename(self.output)
        shutil.rmtree(self.journal.path)
