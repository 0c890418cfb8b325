"""One block's probabilities from its tiles, blended on the model's device (torch).

A block (``write``) is computed from every tile of the volume's tile grid that covers one of its
voxels, in grid order (:func:`mitoseg.geometry.tiles_touching`); the raw data read for it is
those tiles' bounding box (``read_roi``). Sums are kept for the block's own voxels only, so a
blockwise run adds, for every voxel, the same weighted terms in the same order as a
whole-volume run: there are no seams. Memory: the raw ``read_roi`` plus (C + 1) x 4 bytes per
voxel of the block, plus C x 4 bytes per voxel of the slices carried to the next block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mitoseg.geometry import Box, intersect, local_slices

# Called after each batch of tiles with (tiles done, tiles to run) of the current block.
TileProgress = Callable[[int, int], None]


def raw_to_float(raw: torch.Tensor) -> torch.Tensor:
    """uint8 raw data -> float32 ``raw / 255`` (its normalisation, done here on the device);
    anything else is already normalised (:class:`mitoseg.predict.blocks.BlockDataset`)."""
    if raw.dtype == torch.uint8:
        return raw.float() / 255.0
    return raw.float()


def gather_tiles(raw: torch.Tensor, boxes: Sequence[Box], shape: Sequence[int]) -> torch.Tensor:
    """The network's input: float32 (N, 1, *shape) of the tiles starting at ``boxes``' offsets
    in ``raw`` (Zr, Yr, Xr), normalised as :func:`raw_to_float` (the same values): each tile is
    copied and converted in one pass, not stacked, converted and divided (half the time)."""
    tz, ty, tx = (int(s) for s in shape)
    x = torch.empty((len(boxes), 1, tz, ty, tx), dtype=torch.float32, device=raw.device)
    for i, box in enumerate(boxes):
        z, y, x0 = box.offset
        x[i, 0].copy_(raw[z : z + tz, y : y + ty, x0 : x0 + tx])
    return x.div_(255.0) if raw.dtype == torch.uint8 else x


def to_storage(probs: torch.Tensor, dtype: str, inplace: bool = False) -> torch.Tensor:
    """Float probabilities in [0, 1] -> the output dtype (uint8 means round(255 p)), on their
    device. ``inplace``: compute in ``probs``'s memory (its values change), a third of the time
    of a block's conversion and no float temporaries."""
    if dtype == "uint8":
        if inplace:
            return probs.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
        return torch.round(probs.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return probs.to(getattr(torch, dtype))


def boxes_from_batch(batch_boxes: torch.Tensor) -> list[Box]:
    """int64 (N, 6) offsets and shapes -> list of :class:`Box`."""
    return [Box(tuple(b[:3]), tuple(b[3:])) for b in batch_boxes.tolist()]  # type: ignore[arg-type]


def _overlap(tile: Box, region: Box) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of the part of ``tile`` inside ``region``: (in tile coordinates, in region's)."""
    part = intersect(tile, region)
    if part is None:
        empty = (slice(0, 0),) * 3
        return empty, empty
    return local_slices(part, tile), local_slices(part, region)


class WeightSums:
    """The last block's per-voxel sum of tile weights, reused by the next block whose tiles lie
    the same way around it (all inner blocks of a regular grid): a third less blending work.
    Computed by the same additions in the same order, so results do not change.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._sums: torch.Tensor | None = None

    def __call__(self, tiles: Sequence[Box], write: Box, weight: torch.Tensor) -> torch.Tensor:
        key = (write.shape, tuple((b.shift([-o for o in write.offset]), b.shape) for b in tiles))
        if key != self._key or self._sums is None:
            sums = torch.zeros(write.shape, dtype=torch.float32, device=weight.device)
            for box in tiles:
                in_tile, in_write = _overlap(box, write)
                sums[in_write].add_(weight[in_tile])
            if not tiles or not bool((sums > 0).all()):
                raise ValueError(f"block {write} is not covered by its tiles")
            self._key, self._sums = key, sums
        return self._sums


@dataclass(frozen=True)
class Carry:
    """What the tiles run so far add to the blocks that follow along z: weighted sums over
    ``box`` (global coordinates: from the next block's first slice to the deepest reach of those
    tiles, which passes beyond the next block when blocks are shallower than a tile) and the
    tiles (global) already added.
    """

    box: Box
    sums: torch.Tensor
    tiles: frozenset[Box]


class BlockBlender:
    """Blend the tile predictions covering a block (see the module docstring).

    Tiles that straddle a block's lower z border were already run for the blocks before it; when
    the block before was this blender's previous one, their weighted sums are carried over
    instead of running them again, over as many blocks as a tile spans (blocks shallower than a
    tile run each tile of a column once too). Every voxel still gets its terms in grid order, so
    results do not depend on which blocks a process ran before.

    Args:
        weight: float32 (tz, ty, tx) blend weight, on the model's device.
        batch_size: tiles per call of the network.
        progress: called after each batch of tiles with (done, total) of the block's tiles to
            run, so a large block shows progress before it is written; None: silent.
    """

    def __init__(
        self, weight: torch.Tensor, batch_size: int = 1, progress: TileProgress | None = None
    ) -> None:
        self.weight, self.batch_size = weight, max(1, int(batch_size))
        self.progress = progress
        self.weight_sums = WeightSums()
        self.carry: Carry | None = None

    def __call__(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        raw: torch.Tensor,
        tiles: Sequence[Box],
        write: Box,
        origin: Sequence[int] = (0, 0, 0),
        next_write: Box | None = None,
    ) -> torch.Tensor:
        """Probabilities of the block.

        Args:
            predict: float32 (N, 1, tz, ty, tx) -> probabilities float32 (N, C, tz, ty, tx).
            raw: (Zr, Yr, Xr) raw of the read region (uint8, or normalised float), at least one
                tile large along every axis (padded where the volume is smaller than a tile).
            tiles: tile boxes in read-region coordinates, in grid order; a box smaller than
                the tile (a volume smaller than the tile) uses the tile's leading part.
            write: the block in read-region coordinates.
            origin: global offset of the read region.
            next_write: the global box of the next block along z (same y/x), if any.

        Returns:
            float32 (C, *write.shape) probabilities in [0, 1].
        """
        sums = self.weight_sums(tiles, write, self.weight)
        back = [-o for o in origin]
        carry, self.carry = self.carry, None
        if carry is not None and carry.box.shift(back).offset != write.offset:
            carry = None
        done = carry.tiles if carry is not None else frozenset()
        todo = [t for t in tiles if t.shift(origin) not in done]
        outgoing = self._outgoing(tiles, origin, next_write)
        total, passed = self._blend(predict, raw, todo, write, carry, outgoing, back)
        if outgoing is not None and passed is not None:
            self.carry = Carry(outgoing[0], passed, outgoing[1])
        return total.div_(sums)

    @staticmethod
    def _outgoing(
        tiles: Sequence[Box], origin: Sequence[int], next_write: Box | None
    ) -> tuple[Box, frozenset[Box]] | None:
        """The region below this block that its tiles reach (from the next block's first slice
        to their deepest slice) and those tiles (global), carried ones included."""
        if next_write is None:
            return None
        reaching = [t.shift(origin) for t in tiles if t.stop[0] + origin[0] > next_write.offset[0]]
        if not reaching:
            return None
        depth = max(t.stop[0] for t in reaching) - next_write.offset[0]
        box = Box(next_write.offset, (depth, *next_write.shape[1:]))
        return box, frozenset(reaching)

    def _blend(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        raw: torch.Tensor,
        tiles: Sequence[Box],
        write: Box,
        carry: Carry | None,
        outgoing: tuple[Box, frozenset[Box]] | None,
        back: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weighted sums over ``write`` (and over the outgoing box) of ``tiles``' predictions."""
        total: torch.Tensor | None = None
        passed: torch.Tensor | None = None
        out_box = outgoing[0].shift(back) if outgoing is not None else None
        for start in range(0, len(tiles), self.batch_size):
            batch = tiles[start : start + self.batch_size]
            probs = predict(gather_tiles(raw, batch, self.weight.shape))
            if total is None:
                total = self._start(probs.shape[1], write, carry, raw.device)
                passed = self._passing(probs.shape[1], write, carry, out_box, raw.device)
            for value, box in zip(probs, batch, strict=True):
                _add(total, value, box, write, self.weight)
                if passed is not None and out_box is not None and box.stop[0] > out_box.offset[0]:
                    _add(passed, value, box, out_box, self.weight)
            if self.progress is not None:
                self.progress(start + len(batch), len(tiles))
        if total is None:  # every tile was carried over
            assert carry is not None
            total = self._start(carry.sums.shape[0], write, carry, raw.device)
            passed = self._passing(carry.sums.shape[0], write, carry, out_box, raw.device)
        return total, passed

    @staticmethod
    def _passing(
        channels: int,
        write: Box,
        carry: Carry | None,
        out_box: Box | None,
        device: torch.device,
    ) -> torch.Tensor | None:
        """The sums passed on below the block: those carried past it (tiles deeper than the
        block), to which this block's tiles add theirs."""
        if out_box is None:
            return None
        passed = torch.zeros((channels, *out_box.shape), dtype=torch.float32, device=device)
        if carry is not None and carry.box.shape[0] > write.shape[0]:
            beyond = carry.sums[:, write.shape[0] :]
            passed[:, : beyond.shape[1]] = beyond
        return passed

    @staticmethod
    def _start(
        channels: int, write: Box, carry: Carry | None, device: torch.device
    ) -> torch.Tensor:
        total = torch.zeros((channels, *write.shape), dtype=torch.float32, device=device)
        if carry is not None:
            depth = min(carry.box.shape[0], write.shape[0])
            total[:, :depth] = carry.sums[:, :depth]
        return total


def _add(
    total: torch.Tensor, value: torch.Tensor, box: Box, region: Box, weight: torch.Tensor
) -> None:
    """total[region part of box] += value * weight, for the part of ``box`` inside ``region``."""
    in_tile, in_region = _overlap(box, region)
    total[(slice(None), *in_region)].addcmul_(
        value[(slice(None), *in_tile)].float(), weight[in_tile]
    )
