"""Blockwise prediction jobs: the plan, the journal of finished blocks, and the blocks as
data-loader items (torch; the Lightning side is in :mod:`mitoseg.predict.writer`).

A volume (or a region of one, e.g. the validation part of a training volume) is split into
blocks made of whole output chunks (:class:`mitoseg.geometry.BlockGrid`), numbered in sweep
order (:attr:`BlockPlan.sweep`). Each block is one item of :class:`BlockDataset`: the tiles
that cover it and the raw data of those it runs; ``SegmentationModule.predict_step`` /
``test_step`` blend them (:class:`mitoseg.predict.tiles.BlockBlender`), and
:class:`mitoseg.predict.writer.BlockWriter` writes the block, then records it in a
:class:`BlockJournal`. A block is recorded only after its chunks are written, so a run killed
at any point and started again redoes unfinished blocks only. :class:`BlockSampler` hands every
DDP rank a contiguous range of blocks: disjoint sets of whole chunks, so no two ranks write the
same chunk. This is the one predictor: ``mitoseg-predict`` and the test-time evaluation of
``mitoseg-train`` both run it.
"""

from __future__ import annotations

import json
import logging
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
    BlockSweep,
    Box,
    bounding_box,
    check_block_shape,
    overlap_stride,
    sweep_order,
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

    @property
    def sweep(self) -> BlockSweep:
        """The blocks in the order they are predicted: the region's longest axis outermost
        (:func:`mitoseg.geometry.sweep_order`), which keeps the sums carried between blocks
        smallest."""
        return BlockSweep(self.shape, self.grid.block_shape, sweep_order(self.shape))

    def blocks(self) -> list[Box]:
        """The blocks (in the output's coordinates), numbered in sweep order."""
        return self.sweep.boxes()

    def to_json(self) -> dict[str, Any]:
        found = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        found["order"] = list(self.sweep.order)  # the numbering of the journal's blocks
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
        stored.setdefault("order", [0, 1, 2])  # and before blocks ran in sweep order
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
    """Items are blocks, indexed by their number in the plan's sweep order
    (:attr:`BlockPlan.sweep`):

    - ``tiles``: int64 (n, 6) offset + shape of every tile that covers a voxel of the block
      (in the output's coordinates, grid order), ``run``: bool (n,), those to run for it: the
      block's own tiles (those starting in it) and the tiles of earlier blocks that the same
      pass does not run (``pending``); the others are carried
      (:class:`mitoseg.predict.tiles.BlockBlender`);
    - ``raw``: (Zr, Yr, Xr) raw data of the tiles to run (their bounding box, padded to a tile
      where the volume is smaller; empty when all are carried), starting at ``origin``: uint8
      as stored when its normalisation is ``/ 255`` (done on the device), else float32
      normalised by the plan's :class:`~mitoseg.io.intensity.Normalization`, about [0, 1];
    - ``write``: int64 (6,) the block; ``index``; ``sweep``: the plan's
      :class:`~mitoseg.geometry.BlockSweep` as a tuple; ``stride``: the tile stride; ``job``:
      which volume and region (a blender's carried sums belong to one).

    Index :data:`NOTHING` gives an empty item.

    Args:
        plan: the job.
        pending: the blocks one pass runs, in order (a rank's unfinished blocks,
            :class:`BlockSampler`); None: all of them.
    """

    def __init__(self, plan: BlockPlan, pending: Sequence[int] | None = None) -> None:
        self.plan = plan
        self.sweep = plan.sweep
        self.blocks = self.sweep.boxes()
        self.pending = None if pending is None else frozenset(int(i) for i in pending)
        self._raw: Any = None
        self._normalization = plan.normalization

    def __len__(self) -> int:
        return len(self.blocks)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_raw": None}  # each worker opens the zarr itself

    def _carried(self, owner: int, index: int) -> bool:
        """Whether a tile of block ``owner`` was run earlier in the pass that runs ``index``."""
        return owner < index and (self.pending is None or owner in self.pending)

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
        run = [not self._carried(self.sweep.owner(t.offset), index) for t in tiles]
        todo = [t for t, r in zip(tiles, run, strict=True) if r]
        if todo:
            read = bounding_box(todo)
            raw = read_box(self._raw, read.shift(plan.offset), Path(plan.raw))
            if not (raw.dtype == np.uint8 and self._normalization.is_uint8_scale):
                raw = self._normalization(raw)
            raw = _pad_to(raw, plan.tile_shape)
        else:
            read = Box(block.offset, (0, 0, 0))
            raw = np.zeros((0, 0, 0), dtype=np.uint8)
        return {
            "raw": torch.from_numpy(np.ascontiguousarray(raw)),
            "origin": read.offset,
            "tiles": torch.tensor([[*t.offset, *t.shape] for t in tiles]),
            "run": torch.tensor(run, dtype=torch.bool),
            "write": torch.tensor([*block.offset, *block.shape]),
            "tile_shape": plan.tile_shape,
            "stride": plan.stride,
            "sweep": (self.sweep.shape, self.sweep.block_shape, self.sweep.order),
            "job": f"{plan.raw}@{list(plan.offset)}+{list(plan.shape)}",
            "index": index,
        }


class BlockSampler(DistributedSampler):
    """The blocks one rank runs: a contiguous range of the plan's blocks, less those done.

    Ownership goes by index, not by what is left, so ranks never need to agree on the journal;
    a rank runs each tile of its range once (the blender carries what a tile adds to later
    blocks), and only the tiles it shares with another rank's blocks twice. A rank with nothing
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
        BlockDataset(plan, sampler.pending),
        prefetch,
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
    )
