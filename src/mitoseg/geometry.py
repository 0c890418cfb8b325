"""Boxes and tile grids in voxel coordinates, (z, y, x) order (numpy only)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
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


def block_grid(volume: Sequence[int], block: Sequence[int]) -> list[Box]:
    """Blocks tiling ``volume`` without overlap in z-major order; the last ones are clipped.

    A block is a unit of distributed work: its box is the ``write_roi``; the region read to
    compute it (``read_roi``) is larger, see :func:`tiles_touching`.
    """
    if any(int(b) <= 0 for b in block):
        raise ValueError(f"block shape {tuple(block)} must be positive")
    per_axis = [range(0, int(v), int(b)) for v, b in zip(volume, block, strict=True)]
    return [
        Box(
            start,  # type: ignore[arg-type]
            tuple(min(int(b), int(v) - s) for s, b, v in zip(start, block, volume, strict=True)),  # type: ignore[arg-type]
        )
        for start in itertools.product(*per_axis)
    ]


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

    A block blended from exactly these tiles, in this order, equals the same voxels of a
    whole-volume run: every voxel's weighted sum has the same terms in the same order. Their
    bounding box is the block's ``read_roi``.
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
