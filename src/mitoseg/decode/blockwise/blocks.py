"""Block grids for distributed work, in daisy's words (numpy only).

The ``total_roi`` (the whole volume) is cut into blocks. Each block owns its ``write_roi`` (the
core: the blocks tile the volume without overlap) and reads its ``read_roi`` (the core grown by a
``halo``, clipped to the volume). Block shapes are multiples of the output's chunk shape, so no two
blocks ever write to one zarr chunk.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mitoseg.geometry import Box, Shape3


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


@dataclass(frozen=True)
class BlockGrid:
    """Blocks of ``block_shape`` tiling ``total_roi`` from its origin; the last ones are clipped."""

    total_roi: Box
    block_shape: Shape3
    halo: Shape3 = (0, 0, 0)

    @property
    def counts(self) -> Shape3:
        """Blocks along z, y and x."""
        return tuple(
            math.ceil(n / b) for n, b in zip(self.total_roi.shape, self.block_shape, strict=True)
        )  # type: ignore[return-value]

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
