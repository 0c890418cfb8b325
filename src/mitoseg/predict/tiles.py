"""One block's probabilities from its tiles, blended on the model's device (torch).

Blocks come in the plan's sweep order (:class:`mitoseg.geometry.BlockSweep`). Each tile of the
volume's tile grid runs once in a pass: for the first block it covers (the one holding its first
voxel), where :class:`BlockBlender` also adds its weighted prediction to the sums of the later
blocks it covers, kept until their turn. Memory: one block's sums and its tiles' raw data, plus
the sums waiting for later blocks, under a tile deep behind the sweep front (the longest axis
outermost: :func:`mitoseg.geometry.sweep_order`). A volume of 96 x 1024^2 in blocks of
64 x 256^2 and tiles of 96^3 keeps about 15 Mvox of them, a float32 whole-volume blend 100.

Sums are fixed point: each weighted probability (a float32 product) is scaled by 2^k, rounded
and added as an int32, so a voxel's sum is the same in whatever order its tiles come. k leaves
room for the largest sum of tile weights on a voxel (:func:`fixed_point_scale`; a Gaussian
blend's weights sum to about 1: k = 30); rounding costs at most 2^-(k+1) per tile, within
float32 rounding where the weights sum to about 1 and under 5e-7 where a voxel's only tile
weighs 1e-3 (the smallest Gaussian weight, at the volume's corners). As the order does not
matter, a block's output does not depend on which earlier blocks the same process ran (a
resumed run, a block at the border of two DDP ranks' ranges), only on its tiles' predictions (a
tile run in another batch, as a resumed run does for the tiles of blocks already done, may
differ in the last bit of a float32). int32 rather than int64 halves the memory of the sums
waiting for later blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mitoseg.geometry import BlockSweep, Box, axis_starts, intersect, local_slices

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


# The sums' integer type; fixed_point_scale keeps them below its maximum.
SUM_DTYPE = torch.int32
SUM_LIMIT = 2**31 - 1


def fixed_point_scale(
    weight: torch.Tensor, starts: Sequence[Sequence[int]], shape: Sequence[int]
) -> float:
    """2^k for the fixed-point sums: the largest k for which no voxel's sum can pass 2^31.

    A voxel's sum is at most 2^k times the sum W of its tiles' weights (probabilities are at
    most 1), plus 1/2 per tile for the rounding. W is bounded per axis: the weight is at most the
    product of its maxima along each axis (``profile``) plus ``slack`` (0 for a separable
    weight, 1e-3 for the clipped Gaussian of :func:`mitoseg.predict.blend.blend_weight`), so
    W <= prod_axis max_x sum_tiles profile + slack * tiles; ``starts`` (the tile grid's starts
    per axis) and ``shape`` (the volume's) give the sums exactly. A Gaussian blend gets k = 30
    (its weights sum to about 1), a constant one the room for the most tiles on a voxel.
    """
    w = weight.detach().to("cpu", torch.float64)
    profiles = [w.amax(dim=[b for b in range(w.ndim) if b != a]) for a in range(w.ndim)]
    product = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    slack = float((w - product).clamp(min=0).max())
    peak, most = 1.0, 1
    for profile, axis_start, size in zip(profiles, starts, shape, strict=True):
        length = max(int(size), max(axis_start) + profile.numel())
        sums = torch.zeros(length, dtype=torch.float64)
        count = torch.zeros(length, dtype=torch.int64)
        for start in axis_start:
            sums[start : start + profile.numel()] += profile
            count[start : start + profile.numel()] += 1
        peak *= float(sums.max())
        most *= int(count.max())
    bound = (peak + slack * most) * (1 + 1e-6)  # float32 products may round up
    k = min(30, math.floor(math.log2((SUM_LIMIT - most) / bound)))
    if k < 16:
        raise ValueError(
            f"tiles {tuple(w.shape)}: up to {most} cover a voxel, their weights summing to "
            f"{bound:.0f}, too many for the blend's fixed-point sums; use a smaller overlap"
        )
    return float(2**k)


class WeightSums:
    """The per-voxel sum of the tile weights over a block, in the fixed point of the sums (so
    that probabilities of 1 blend to exactly 1, and a voxel's sum is the same in any block); the
    last block's is reused by the next whose tiles lie the same way around it.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._sums: torch.Tensor | None = None

    def __call__(self, tiles: Sequence[Box], write: Box, weight: torch.Tensor) -> torch.Tensor:
        key = (write.shape, tuple((b.shift([-o for o in write.offset]), b.shape) for b in tiles))
        if key != self._key or self._sums is None:
            self._sums = None  # freed before the next one is made
            sums = torch.zeros(write.shape, dtype=weight.dtype, device=weight.device)
            for box in tiles:
                in_tile, in_write = _overlap(box, write)
                sums[in_write].add_(weight[in_tile])
            if not tiles or not bool((sums > 0).all()):
                raise ValueError(f"block {write} is not covered by its tiles")
            self._key, self._sums = key, sums
        return self._sums


@dataclass
class Waiting:
    """Sums that tiles run so far add to a later block, and the tiles in them: one slab per
    axis (``parts``): the block from its first slice along that axis to as deep as the tiles
    starting before it reach, whole along the other two. A tile starting before the block
    along several axes goes to the slab of the outermost of them in the sweep, which the block
    has anyway (a slab per combination of axes would double the memory)."""

    parts: dict[int, tuple[Box, torch.Tensor]] = field(default_factory=dict)
    tiles: set[Box] = field(default_factory=set)


class BlockBlender:
    """Blend the tile predictions covering a block (see the module docstring).

    The blocks of one pass must come in sweep order; a block whose earlier blocks this blender
    did not run (another rank's, or done before a resume) gets their tiles run for it (its data
    loader item says which: :class:`mitoseg.predict.blocks.BlockDataset`). A new pass (a block
    number not above the last, or another job) starts afresh.

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
        self._pass: tuple | None = None
        self._last = -1
        self._waiting: dict[int, Waiting] = {}
        self._scaled_weight = weight  # times 2^k for the fixed point: set per pass (_begin)
        self._fixed_weight = weight  # the same, rounded to the sums' integers
        self._starts: list[list[int]] = []  # the tile grid's starts per axis, set per pass
        self._shape: tuple[int, ...] = ()  # the volume's, set per pass

    def reset(self) -> None:
        """Forget the sums kept for later blocks (the next block starts a pass)."""
        self._pass, self._last, self._waiting = None, -1, {}
        self.weight_sums = WeightSums()

    def __call__(
        self, predict: Callable[[torch.Tensor], torch.Tensor], item: dict[str, Any]
    ) -> torch.Tensor:
        """Probabilities of the block of ``item`` (:class:`mitoseg.predict.blocks.BlockDataset`).

        Args:
            predict: float32 (N, 1, tz, ty, tx) -> probabilities float32 (N, C, tz, ty, tx)
                in [0, 1].
            item: the block's data-loader item (its ``raw`` on the model's device).

        Returns:
            float32 (C, *block shape) probabilities in [0, 1].

        Raises:
            RuntimeError: a tile of the block was neither carried nor given to run (blocks out
                of sweep order in one pass).
        """
        tiles = boxes_from_batch(item["tiles"].cpu())
        run = {t for t, r in zip(tiles, item["run"].tolist(), strict=True) if r}
        write = boxes_from_batch(item["write"][None].cpu())[0]
        index = int(item["index"])
        sweep = BlockSweep(*(tuple(int(v) for v in part) for part in item["sweep"]))  # type: ignore[arg-type]
        self._begin(item["job"], index, sweep.shape, tuple(int(s) for s in item["stride"]))
        waiting = self._waiting.pop(index, Waiting())
        todo = [t for t in tiles if t not in waiting.tiles]
        missing = [t for t in todo if t not in run]
        if missing:
            raise RuntimeError(
                f"block {index} of {item['job']}: {len(missing)} of its tiles (the first at "
                f"{missing[0].offset}) were neither run for an earlier block of this pass nor "
                "read for this one; a pass must run its blocks in sweep order"
            )
        sums = self.weight_sums(tiles, write, self._fixed_weight)
        origin = tuple(int(o) for o in item["origin"])
        total = self._blend(predict, item["raw"], origin, todo, write, index, sweep, waiting)
        probs = total.to(torch.float32)
        del total
        return probs.div_(sums)

    def _begin(self, job: Any, index: int, shape: Sequence[int], stride: tuple[int, ...]) -> None:
        """Start a pass when the job changes or the block numbers start again; drop the sums
        of blocks this pass has passed (another rank's or done ones)."""
        key = (job, tuple(shape), stride)
        if key != self._pass or index <= self._last:
            self.reset()
            self._pass, self._shape = key, tuple(shape)
            tile = self.weight.shape
            self._starts = [axis_starts(*a) for a in zip(shape, tile, stride, strict=True)]
            scale = fixed_point_scale(self.weight, self._starts, shape)
            self._scaled_weight = self.weight * scale  # exact: scale is a power of 2
            self._fixed_weight = self._scaled_weight.round().to(SUM_DTYPE)
        self._last = index
        for passed in [k for k in self._waiting if k < index]:
            del self._waiting[passed]

    def _blend(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        raw: torch.Tensor,
        origin: Sequence[int],
        tiles: Sequence[Box],
        write: Box,
        index: int,
        sweep: BlockSweep,
        waiting: Waiting,
    ) -> torch.Tensor:
        """Fixed-point sums over ``write``: the carried ones plus ``tiles``' (run here), which
        also go to the later blocks they cover."""
        total: torch.Tensor | None = None
        for box, part in waiting.parts.values():
            if total is None:
                total = self._zeros(part.shape[0], write.shape, part.device)
            total[(slice(None), *local_slices(box, write))].add_(part)
        back = [-o for o in origin]
        for start in range(0, len(tiles), self.batch_size):
            batch = tiles[start : start + self.batch_size]
            probs = predict(gather_tiles(raw, [t.shift(back) for t in batch], self.weight.shape))
            if total is None:
                total = self._zeros(probs.shape[1], write.shape, probs.device)
            for value, tile in zip(probs, batch, strict=True):
                fixed = self._to_fixed(value)
                _add(total, fixed, tile, write)
                for later in sweep.touching(tile):
                    if later > index:
                        self._carry(later, sweep.box(later), fixed, tile, sweep.order)
            if self.progress is not None:
                self.progress(start + len(batch), len(tiles))
        if total is None:
            raise ValueError(f"block {write} is not covered by its tiles")
        return total

    @staticmethod
    def _zeros(channels: int, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        return torch.zeros((channels, *shape), dtype=SUM_DTYPE, device=device)

    def _to_fixed(self, value: torch.Tensor) -> torch.Tensor:
        """(C, tz, ty, tx) probabilities -> int32 round(float32(p * weight) * 2^k)."""
        return value.float().clamp(0.0, 1.0).mul_(self._scaled_weight).round_().to(SUM_DTYPE)

    def _reach(self, axis: int, block: Box) -> int:
        """How far into ``block`` along ``axis`` the tiles starting before it reach."""
        starts, start = self._starts[axis], block.offset[axis]
        size = min(int(self.weight.shape[axis]), self._shape[axis])
        deepest = max(a + size for a in starts if a < start)
        return min(block.shape[axis], deepest - start)

    def _carry(
        self, later: int, block: Box, fixed: torch.Tensor, tile: Box, order: Sequence[int]
    ) -> None:
        """Add a tile's fixed-point sums to a waiting slab of ``block`` (number ``later``)."""
        waiting = self._waiting.setdefault(later, Waiting())
        axis = next(a for a in order if tile.offset[a] < block.offset[a])
        if axis not in waiting.parts:
            shape = list(block.shape)
            shape[axis] = self._reach(axis, block)
            box = Box(block.offset, tuple(shape))  # type: ignore[arg-type]
            waiting.parts[axis] = (box, self._zeros(fixed.shape[0], shape, fixed.device))
        box, part = waiting.parts[axis]
        _add(part, fixed, tile, box)
        waiting.tiles.add(tile)


def _add(total: torch.Tensor, fixed: torch.Tensor, tile: Box, region: Box) -> None:
    """total[region part of tile] += fixed, for the part of ``tile`` inside ``region``."""
    in_tile, in_region = _overlap(tile, region)
    total[(slice(None), *in_region)].add_(fixed[(slice(None), *in_tile)])
