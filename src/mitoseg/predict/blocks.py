"""Blockwise prediction jobs: the plan, the journal of finished blocks, and the blocks as
data-loader items (torch; the Lightning side is in :mod:`mitoseg.predict.writer`).

A volume (or a region of one, e.g. the validation part of a training volume) is split into
blocks made of whole output chunks (:class:`mitoseg.geometry.BlockGrid`). Each block is one item
of :class:`BlockDataset`: the raw data of its ``read_roi`` and the tiles that cover it;
``SegmentationModule.predict_step`` / ``test_step`` blend them
(:class:`mitoseg.predict.tiles.BlockBlender`), and :class:`mitoseg.predict.writer.BlockWriter`
writes the block, then records it in a :class:`BlockJournal`. A block is recorded only after its
chunks are written, so a run killed at any point and started again redoes unfinished blocks
only. :class:`BlockSampler` hands every DDP rank a contiguous range of blocks: disjoint sets of
whole chunks, so no two ranks write the same chunk. This is the one predictor: ``mitoseg-predict``
and the test-time evaluation of ``mitoseg-train`` both run it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mitoseg import io
from mitoseg.files import check_replaceable, mark_folder, write_atomic, write_json_atomic
from mitoseg.geometry import (
    BlockGrid,
    Box,
    bounding_box,
    check_block_shape,
    overlap_stride,
    tiles_touching,
)
from mitoseg.io.checks import read_box
from mitoseg.io.intensity import Normalization, measure
from mitoseg.predict.background import Prefetcher

log = logging.getLogger(__name__)

CHUNK_SHAPE = (32, 256, 256)  # (z, y, x) chunks of the probabilities zarr
NOTHING = -1  # the index of an empty work item


@dataclass(frozen=True)
class BlockPlan:
    """Everything a blockwise prediction's output depends on; stored in the journal so that a
    resumed run continues only the same job.

    ``shape`` is the predicted region's, which starts at ``offset`` in the volume at ``raw``
    (the whole volume by default); the output holds the region alone. ``normalization`` maps
    the raw values to the network's input; None chooses it from the volume's own dtype and
    range (:func:`mitoseg.io.intensity.measure`), as the CLIs do before they make the plan.
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
    offset: tuple[int, int, int] = (0, 0, 0)
    normalization: Normalization | None = None

    @property
    def stride(self) -> tuple[int, int, int]:
        return overlap_stride(self.tile_shape, self.overlap)

    @property
    def chunks(self) -> tuple[int, int, int]:
        return tuple(min(c, s) for c, s in zip(self.chunk_shape, self.shape, strict=True))  # type: ignore[return-value]

    @property
    def grid(self) -> BlockGrid:
        """Blocks (their write_roi) over the region, in the output's coordinates."""
        block = tuple(min(b, s) for b, s in zip(self.block_shape, self.shape, strict=True))
        # A block spanning a whole axis is whole chunks along it (the last one clipped), e.g. 40
        # slices in blocks of 64 and chunks of 32 (refused before, as 40 is no multiple of 32).
        if any(b % c for b, c, s in zip(block, self.chunks, self.shape, strict=True) if b < s):
            check_block_shape(block, self.chunks)
        return BlockGrid(Box.whole(self.shape), block)  # type: ignore[arg-type]

    def blocks(self) -> list[Box]:
        return [b.write_roi for b in self.grid]

    def next_along_z(self, index: int) -> int | None:
        """The index of the block after ``index`` along z (same y/x), or None at the end."""
        counts = self.grid.counts
        following = index + counts[1] * counts[2]
        return following if following < math.prod(counts) else None

    def to_json(self) -> dict[str, Any]:
        found = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if self.normalization is not None:
            found["normalization"] = self.normalization.to_dict()
        return found


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
        mark_folder(self.path)

    def check_ours(self) -> None:
        """Refuse to remove a journal folder that mitoseg did not write (one from before the
        marker counts by its ``plan.json``)."""
        if not self._manifest.is_file():
            check_replaceable(self.path)

    def check(self, plan: BlockPlan, output: Path) -> None:
        """Refuse to continue a partial output that another job (other settings) started."""
        if not self._manifest.exists():
            raise io.VolumeError(
                f"{output}: a partial output without a journal ({self._manifest}) is in the "
                "way; pass overwrite=true to start again"
            )
        stored = json.loads(self._manifest.read_text())
        stored.setdefault("offset", [0, 0, 0])  # journals written before regions existed
        stored.setdefault("normalization", None)  # and before raw ranges were chosen
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
        write_atomic(self.path / "done" / str(index), lambda tmp: tmp.write_bytes(b""))


def journal_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.blocks")


def _pad_to(data: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Reflect-pad a read region smaller than one tile (a volume smaller than the tile)."""
    pad = [(0, max(0, int(t) - s)) for t, s in zip(shape, data.shape, strict=True)]
    if not any(p[1] for p in pad):
        return data
    return np.pad(data, pad, mode="reflect" if min(data.shape) > 1 else "edge")


class BlockDataset(Dataset):
    """Items are blocks, indexed by their number in the plan: ``raw`` (Zr, Yr, Xr) of the read
    region (uint8 as stored when its normalisation is ``/ 255``, done on the device, else float32
    normalised by the plan's :class:`~mitoseg.io.intensity.Normalization`, about [0, 1]),
    ``tiles`` int64 (n, 6) and ``write`` int64
    (6,) as offset + shape in read-region coordinates, ``origin`` (the read region's offset in
    the output), ``next_write`` (the next block along z as an offset + shape, or None), and
    ``index``. Index :data:`NOTHING` gives an empty item.
    """

    def __init__(self, plan: BlockPlan) -> None:
        self.plan = plan
        self.blocks = plan.blocks()
        self._raw: Any = None
        self._normalization = plan.normalization

    def __len__(self) -> int:
        return len(self.blocks)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_raw": None}  # each worker opens the zarr itself

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index == NOTHING:
            return {"index": NOTHING}
        if self._raw is None:
            self._raw = io.open_volume(self.plan.raw)
        if self._normalization is None:  # the same in every worker: a fixed subsample
            self._normalization = measure(self._raw, self.plan.raw).normalization
        block = self.blocks[index]
        plan = self.plan
        tiles = tiles_touching(plan.shape, plan.tile_shape, plan.stride, block)
        read = bounding_box(tiles)
        raw = read_box(self._raw, read.shift(plan.offset), Path(plan.raw))
        if not (raw.dtype == np.uint8 and self._normalization.is_uint8_scale):
            raw = self._normalization(raw)
        raw = _pad_to(raw, plan.tile_shape)
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


class BlockSampler(DistributedSampler):
    """The blocks one rank runs: a contiguous range of the plan's blocks, less those done.

    Ownership goes by index, not by what is left, so ranks never need to agree on the journal;
    consecutive blocks follow their z-neighbour, whose tiles they reuse. A rank with nothing
    left still yields one empty item (:data:`NOTHING`): Lightning skips the hooks of an empty
    loader, and the other ranks would wait for it at the end. (A DistributedSampler, so that
    Lightning keeps it instead of wrapping it in its own.)

    Args:
        n_blocks: blocks in the plan.
        rank, world_size: this process among all.
        done: blocks already written (a resumed run).
    """

    def __init__(
        self, n_blocks: int, rank: int = 0, world_size: int = 1, done: set[int] | None = None
    ) -> None:
        super().__init__(range(n_blocks), num_replicas=world_size, rank=rank, shuffle=False)
        mine = range(n_blocks * rank // world_size, n_blocks * (rank + 1) // world_size)
        self.pending = [i for i in mine if i not in (done or set())]

    def __len__(self) -> int:
        return max(1, len(self.pending))

    def __iter__(self) -> Iterator[int]:
        return iter(self.pending or [NOTHING])


class BlockLoader(DataLoader):
    """One item per block of ``sampler`` (blocks are batches of tiles already), read ``prefetch``
    blocks ahead in a background thread (:class:`mitoseg.predict.background.Prefetcher`) while
    the network computes; ``prefetch=0`` reads each block when it is asked for.

    Attributes:
        reader: the latest iteration, or None; its ``wait_seconds`` is the time the network
            waited for blocks.
    """

    def __init__(self, dataset: BlockDataset, prefetch: int = 1, **kwargs: Any) -> None:
        # DataLoader's arguments as keywords: Lightning makes a copy with some of them changed
        super().__init__(dataset, **kwargs)
        self.prefetch = prefetch
        self.reader: Prefetcher | None = None

    def __iter__(self) -> Iterator[Any]:
        self.reader = Prefetcher(super().__iter__(), self.prefetch)
        return self.reader


def block_loader(
    plan: BlockPlan, sampler: BlockSampler, num_workers: int = 0, prefetch: int = 1
) -> BlockLoader:
    """The blocks of ``sampler``, ``prefetch`` read ahead in a thread (0: none)."""
    return BlockLoader(
        BlockDataset(plan), prefetch, batch_size=None, sampler=sampler, num_workers=num_workers
    )
