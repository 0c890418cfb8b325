"""The one geometry of mitoseg: boxes, block grids and tile grids in voxel coordinates, (z, y, x)
order (numpy only).

Words as in daisy: a volume's ``total_roi`` is cut into blocks; each block owns its ``write_roi``
(the blocks tile the volume without overlap) and reads its ``read_roi`` (the write_roi grown by a
``halo``, clipped to the volume, or the bounding box of the tiles that cover it when predicting).
Prediction, blockwise decoding and evaluation, measuring and tiling all use these types.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class Box:
    """An axis-aligned box: ``offset`` and ``shape`` in voxels, (z, y, x)."""

    offset: Shape3
    shape: Shape3

    @property
    def stop(self) -> Shape3:
        o, s = self.offset, self.shape
        return (o[0] + s[0], o[1] + s[1], o[2] + s[2])

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + s) for o, s in zip(self.offset, self.shape, strict=True))  # type: ignore[return-value]

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def shift(self, delta: Sequence[int]) -> Box:
        return Box(tuple(o + d for o, d in zip(self.offset, delta, strict=True)), self.shape)  # type: ignore[arg-type]

    @classmethod
    def whole(cls, shape: Sequence[int]) -> Box:
        return cls((0, 0, 0), tuple(int(s) for s in shape))  # type: ignore[arg-type]


def axis_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start positions of windows of length ``tile`` covering [0, size).

    Windows step by ``stride``; the last one is moved back to end exactly at ``size`` so no
    window leaves the volume. A volume smaller than the tile gets the single start 0 (the caller
    pads). Starts are sorted and unique.
    """
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile ({tile}) and stride ({stride}) must be positive")
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return sorted(set(starts))


def overlap_stride(tile: Sequence[int], overlap: float) -> Shape3:
    """Stride per axis for a fractional ``overlap`` in [0, 1) between neighbouring tiles."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return tuple(max(1, round(t * (1.0 - overlap))) for t in tile)  # type: ignore[return-value]


def tile_grid(volume: Sequence[int], tile: Sequence[int], stride: Sequence[int]) -> list[Box]:
    """Tiles covering ``volume`` in z-major order (all tiles of one z start, then the next).

    Each tile is clipped to the volume where the volume is smaller than the tile.
    """
    per_axis = [axis_starts(v, t, s) for v, t, s in zip(volume, tile, stride, strict=True)]
    shape = tuple(min(v, t) for v, t in zip(volume, tile, strict=True))
    return [Box(start, shape) for start in itertools.product(*per_axis)]  # type: ignore[arg-type]


def split_axis(box: Box, axis: int, fraction: float) -> tuple[Box, Box]:
    """Split ``box`` along ``axis``: the first part keeps 1 - fraction, the second ``fraction``."""
    length = box.shape[axis]
    held = int(round(length * fraction))
    if not 0 < held < length:
        raise ValueError(f"cannot hold out {fraction} of {length} voxels along axis {axis}")
    first_shape, second_shape = list(box.shape), list(box.shape)
    first_shape[axis] = length - held
    second_shape[axis] = held
    second_offset = list(box.offset)
    second_offset[axis] += length - held
    return (
        Box(box.offset, tuple(first_shape)),  # type: ignore[arg-type]
        Box(tuple(second_offset), tuple(second_shape)),  # type: ignore[arg-type]
    )


class BoxView:
    """Read-only view of ``box`` inside a (Z, Y, X) array-like; reads are relative to the box.

    ``view[z0:z1]`` reads ``array[box.z0 + z0 : box.z0 + z1, box y-range, box x-range]``.
    """

    def __init__(self, array: object, box: Box) -> None:
        self.array, self.box = array, box
        self.shape = box.shape

    def __getitem__(self, key: slice) -> object:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("BoxView supports a single z-slice with step 1")
        start, stop, _ = key.indices(self.shape[0])
        z = slice(self.box.offset[0] + start, self.box.offset[0] + stop)
        return self.array[(z, *self.box.slices[1:])]  # type: ignore[index]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        """The whole box as a numpy array (``np.asarray(view)``)."""
        return np.asarray(self[:], dtype=dtype)


def check_block_shape(block: Sequence[int], chunk: Sequence[int], key: str = "block_shape") -> None:
    """Blocks must be whole chunks so that no two blocks (ranks) ever write the same chunk."""
    bad = [(b, c) for b, c in zip(block, chunk, strict=True) if int(b) % int(c)]
    if bad:
        raise ValueError(
            f"{key} {tuple(int(b) for b in block)} must be a multiple of the output chunk shape "
            f"{tuple(int(c) for c in chunk)} along every axis"
        )


def tiles_touching(
    volume: Sequence[int], tile: Sequence[int], stride: Sequence[int], block: Box
) -> list[Box]:
    """The tiles of ``tile_grid(volume, tile, stride)`` that cover a voxel of ``block``, in grid
    order.

    A block blended from exactly these tiles equals the same voxels of a whole-volume run:
    every voxel's weighted sum has the same terms.
    """
    per_axis = []
    for v, t, s, lo, hi in zip(volume, tile, stride, block.offset, block.stop, strict=True):
        size = min(int(v), int(t))
        per_axis.append(
            [a for a in axis_starts(int(v), int(t), int(s)) if a < hi and a + size > lo]
        )
    shape = tuple(min(int(v), int(t)) for v, t in zip(volume, tile, strict=True))
    return [Box(start, shape) for start in itertools.product(*per_axis)]  # type: ignore[arg-type]


def bounding_box(boxes: Sequence[Box]) -> Box:
    """The smallest box holding every one of ``boxes`` (at least one)."""
    start = tuple(min(b.offset[i] for b in boxes) for i in range(3))
    stop = tuple(max(b.stop[i] for b in boxes) for i in range(3))
    return Box(start, tuple(e - s for s, e in zip(start, stop, strict=True)))  # type: ignore[arg-type]


def _shape3(values: Sequence[int], name: str, low: int) -> Shape3:
    out = tuple(int(v) for v in values)
    if len(out) != 3 or any(v < low for v in out):
        raise ValueError(f"{name} must be three integers >= {low} (z, y, x), got {list(values)}")
    return out  # type: ignore[return-value]


def intersect(a: Box, b: Box) -> Box | None:
    """The overlap of two boxes, or None when they do not overlap."""
    start = tuple(max(x, y) for x, y in zip(a.offset, b.offset, strict=True))
    stop = tuple(min(x, y) for x, y in zip(a.stop, b.stop, strict=True))
    if any(s >= e for s, e in zip(start, stop, strict=True)):
        return None
    return Box(start, tuple(e - s for s, e in zip(start, stop, strict=True)))  # type: ignore[arg-type]


def grow(box: Box, margin: Sequence[int], within: Box) -> Box:
    """``box`` grown by ``margin`` voxels on every side, clipped to ``within``."""
    start = tuple(max(o - m, w) for o, m, w in zip(box.offset, margin, within.offset, strict=True))
    stop = tuple(min(e + m, w) for e, m, w in zip(box.stop, margin, within.stop, strict=True))
    return Box(start, tuple(e - s for s, e in zip(start, stop, strict=True)))  # type: ignore[arg-type]


def local_slices(inner: Box, outer: Box) -> tuple[slice, slice, slice]:
    """Slices of ``inner`` within an array that holds ``outer`` (``inner`` inside ``outer``)."""
    return tuple(
        slice(i - o, i - o + s)
        for i, o, s in zip(inner.offset, outer.offset, inner.shape, strict=True)
    )  # type: ignore[return-value]


@dataclass(frozen=True)
class Block:
    """One unit of work.

    Attributes:
        id: position in the grid's raster (z-major) order, 0..n_blocks - 1.
        index: (iz, iy, ix) position in the grid.
        write_roi: the voxels this block writes; the write_rois tile the total_roi.
        read_roi: write_roi grown by the halo, clipped to the total_roi.
    """

    id: int
    index: Shape3
    write_roi: Box
    read_roi: Box


def block_counts(shape: Sequence[int], block_shape: Sequence[int]) -> Shape3:
    """Blocks of ``block_shape`` along each axis of ``shape`` (the last one clipped)."""
    return tuple(math.ceil(n / b) for n, b in zip(shape, block_shape, strict=True))  # type: ignore[return-value]


@dataclass(frozen=True)
class BlockGrid:
    """Blocks of ``block_shape`` tiling ``total_roi`` from its origin; the last ones are clipped."""

    total_roi: Box
    block_shape: Shape3
    halo: Shape3 = (0, 0, 0)

    @property
    def counts(self) -> Shape3:
        """Blocks along z, y and x."""
        return block_counts(self.total_roi.shape, self.block_shape)

    def __len__(self) -> int:
        return math.prod(self.counts)

    def block(self, index: Sequence[int]) -> Block:
        """The block at grid position ``index`` (iz, iy, ix)."""
        index = tuple(int(i) for i in index)
        if any(not 0 <= i < n for i, n in zip(index, self.counts, strict=True)):
            raise IndexError(f"block index {index} outside the grid {self.counts}")
        origin = self.total_roi.offset
        start = tuple(o + i * b for o, i, b in zip(origin, index, self.block_shape, strict=True))
        core = intersect(Box(start, self.block_shape), self.total_roi)  # type: ignore[arg-type]
        assert core is not None
        block_id = (index[0] * self.counts[1] + index[1]) * self.counts[2] + index[2]
        return Block(block_id, index, core, grow(core, self.halo, self.total_roi))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Block]:
        for index in itertools.product(*(range(n) for n in self.counts)):
            yield self.block(index)

    def blocks_in(self, box: Box) -> list[Block]:
        """Blocks whose write_roi overlaps ``box``, in raster order."""
        ranges = []
        for o, s, t, b in zip(
            box.offset, box.shape, self.total_roi.offset, self.block_shape, strict=True
        ):
            ranges.append(range(max(0, (o - t) // b), (o + s - 1 - t) // b + 1))
        counts = self.counts
        return [
            self.block(i)
            for i in itertools.product(*ranges)
            if all(0 <= v < n for v, n in zip(i, counts, strict=True))
        ]


def sweep_order(shape: Sequence[int]) -> Shape3:
    """The axes from the longest to the shortest (ties keep z, y, x order): the order in which
    :class:`BlockSweep` nests them, outermost first. Sweeping the longest axis outermost keeps
    the sums waiting behind the sweep front (a tile deep, across the other two axes) smallest.
    """
    return tuple(sorted(range(3), key=lambda axis: -int(shape[axis])))  # type: ignore[return-value]


@dataclass(frozen=True)
class BlockSweep:
    """Blocks of ``block_shape`` tiling a volume of ``shape`` from its origin (the last ones
    clipped), numbered 0..n-1 in sweep order: the axes nested as ``order`` says, outermost
    first (``(0, 1, 2)`` is z-major raster order).

    In any such order, the block holding a box's first voxel comes before every other block
    the box overlaps: a tile is first needed by the block that holds its start (:meth:`owner`).
    """

    shape: Shape3
    block_shape: Shape3
    order: Shape3 = (0, 1, 2)

    @property
    def counts(self) -> Shape3:
        """Blocks along z, y and x."""
        return block_counts(self.shape, self.block_shape)

    def __len__(self) -> int:
        return math.prod(self.counts)

    def index(self, position: Sequence[int]) -> int:
        """Sweep number of the block at grid ``position`` (iz, iy, ix)."""
        counts, number = self.counts, 0
        for axis in self.order:
            number = number * counts[axis] + int(position[axis])
        return number

    def position(self, index: int) -> Shape3:
        """Grid position (iz, iy, ix) of block number ``index``."""
        counts, found, rest = self.counts, [0, 0, 0], int(index)
        for axis in reversed(self.order):
            found[axis], rest = rest % counts[axis], rest // counts[axis]
        return tuple(found)  # type: ignore[return-value]

    def box(self, index: int) -> Box:
        """Block number ``index``, clipped to the volume."""
        start = [p * b for p, b in zip(self.position(index), self.block_shape, strict=True)]
        shape = [min(b, n - s) for s, b, n in zip(start, self.block_shape, self.shape, strict=True)]
        return Box(tuple(start), tuple(shape))  # type: ignore[arg-type]

    def boxes(self) -> list[Box]:
        """Every block, in sweep order."""
        return [self.box(i) for i in range(len(self))]

    def owner(self, point: Sequence[int]) -> int:
        """Sweep number of the block holding voxel ``point``."""
        return self.index([int(p) // b for p, b in zip(point, self.block_shape, strict=True)])

    def touching(self, box: Box) -> list[int]:
        """Sweep numbers of the blocks that ``box`` overlaps, ascending."""
        ranges = [
            range(max(0, o // b), min(n, (o + s - 1) // b + 1))
            for o, s, b, n in zip(box.offset, box.shape, self.block_shape, self.counts, strict=True)
        ]
        return sorted(self.index(p) for p in itertools.product(*ranges))


def block_grid(
    shape: Sequence[int],
    block_shape: Sequence[int],
    halo: Sequence[int] = (0, 0, 0),
    chunks: Sequence[int] | None = None,
) -> BlockGrid:
    """A grid over a (Z, Y, X) volume of ``shape``.

    Args:
        shape: the volume (the total_roi starts at the origin).
        block_shape: write_roi shape; rounded up to a multiple of ``chunks`` and capped at the
            volume (a block covering an axis needs no rounding).
        halo: voxels of context each block reads on every side.
        chunks: the chunk shape of the arrays blocks write, or None.
    """
    shape = _shape3(shape, "shape", 0)
    block = _shape3(block_shape, "block_shape", 1)
    halo = _shape3(halo, "halo", 0)
    if chunks is not None:
        chunks = _shape3(chunks, "chunks", 1)
        block = tuple(math.ceil(b / c) * c for b, c in zip(block, chunks, strict=True))  # type: ignore[assignment]
    block = tuple(max(1, min(b, s)) for b, s in zip(block, shape, strict=True))  # type: ignore[assignment]
    return BlockGrid(Box.whole(shape), block, halo)
