"""Affinities -> what the affinity decoders (A, AC) flood: the mean nearest-neighbour affinity
of every voxel (the *inside* score) and the bitfields of strong edges whose components give
seeds and masks (numpy only; see :mod:`mitoseg.decode.watershed`)."""

from __future__ import annotations

import math

import numpy as np

from mitoseg.decode.watershed import _DIRECTION_BITS, _above, check_probs
from mitoseg.train.targets import DEFAULT_OFFSETS, Offset, normalize_offsets

_SLAB_VOXELS = 1 << 22


def _nearest_neighbour_channels(offsets: tuple[Offset, ...]) -> list[tuple[int, int, int]]:
    """(channel, axis, step) of each offset that is one step along one axis."""
    found = []
    for channel, offset in enumerate(offsets):
        axes = [a for a, v in enumerate(offset) if v != 0]
        if len(axes) == 1 and abs(offset[axes[0]]) == 1:
            found.append((channel, axes[0], offset[axes[0]]))
    if not found:
        raise ValueError(f"offsets {offsets} hold no nearest-neighbour offset (one +-1 step)")
    return found


def _edge_slices(
    shape: tuple[int, ...], axis: int, partner: int, source_shift: int, z0: int, z1: int
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slab voxels p (z in [z0, z1)) whose neighbour p + partner along ``axis`` is in the volume.

    Returns (target, source): target indexes the slab, source the volume at p + source_shift.
    """
    target, source = [], []
    for ax, size in enumerate(shape):
        lo, hi = (z0, z1) if ax == 0 else (0, size)
        start, stop, shift = lo, hi, 0
        if ax == axis:
            start, shift = max(lo, -partner), source_shift
            stop = max(min(hi, size - partner), start)
        target.append(slice(start - lo, stop - lo))
        source.append(slice(start + shift, stop + shift))
    return tuple(target), tuple(source)


def _inside_slab(affs: np.ndarray, nn: list[tuple[int, int, int]], z0: int, z1: int) -> np.ndarray:
    shape = affs.shape[1:]
    total = np.zeros((z1 - z0, *shape[1:]), np.uint32 if affs.dtype == np.uint8 else np.float64)
    count = np.zeros(total.shape, dtype=np.uint8)
    for channel, axis, step in nn:
        # edge p -- p+d is stored at p; edge p-d -- p is stored at p-d
        for partner, shift in ((step, 0), (-step, -step)):
            target, source = _edge_slices(shape, axis, partner, shift, z0, z1)
            total[target] += affs[channel][source]
            count[target] += 1
    if affs.dtype == np.uint8:  # mean rounded half up, in integers
        mean = (2 * total + count) // (2 * np.maximum(count, 1))
        return np.where(count > 0, mean, 0).astype(np.uint8)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)


def affinity_inside(affs: np.ndarray, offsets: tuple[Offset, ...] = DEFAULT_OFFSETS) -> np.ndarray:
    """Per-voxel inside score: the mean affinity of the nearest-neighbour edges at each voxel.

    Channel i with offset d (one +-1 step along one axis) adds affs[i, p] (edge p -- p+d) and
    affs[i, p-d] (edge p-d -- p) where the edge lies in the volume; longer offsets are ignored.
    Computed over z-slabs, so the extra memory is the output plus a few slab-sized arrays.

    Args:
        affs: (C, Z, Y, X) uint8 in [0, 255] or float in [0, 1]; channel i belongs to offsets[i].
        offsets: C distinct (dz, dy, dx) offsets.

    Returns:
        (Z, Y, X): uint8 (the mean rounded half up) for uint8 input, else float32 in [0, 1];
        0 where a voxel has no edge in the volume.
    """
    offsets = normalize_offsets(offsets)
    affs = check_probs(affs, len(offsets), f"({len(offsets)}, Z, Y, X) (one channel per offset)")
    nn = _nearest_neighbour_channels(offsets)
    out = np.empty(affs.shape[1:], dtype=np.uint8 if affs.dtype == np.uint8 else np.float32)
    depth = max(1, _SLAB_VOXELS // max(1, math.prod(out.shape[1:])))
    for z0 in range(0, out.shape[0], depth):
        z1 = min(z0 + depth, out.shape[0])
        out[z0:z1] = _inside_slab(affs, nn, z0, z1)
    return out


def strong_edges(
    affs: np.ndarray, threshold: float, offsets: tuple[Offset, ...] = DEFAULT_OFFSETS
) -> np.ndarray:
    """The graph of nearest-neighbour edges with affinity > threshold, as voxel bits.

    Args:
        affs: (C, Z, Y, X) uint8 in [0, 255] or float in [0, 1]; channel i belongs to offsets[i].
        threshold: probability in [0, 1].
        offsets: C distinct (dz, dy, dx) offsets; only one-step offsets make edges.

    Returns:
        uint8 (Z, Y, X) bitfield in cc3d's 6-connected voxel-graph convention: bits 1 / 2 for the
        edge to z + 1 / z - 1, 4 / 8 for y, 16 / 32 for x. 1 byte per voxel.
    """
    offsets = normalize_offsets(offsets)
    affs = check_probs(affs, len(offsets), f"({len(offsets)}, Z, Y, X) (one channel per offset)")
    graph = np.zeros(affs.shape[1:], dtype=np.uint8)
    for channel, axis, step in _nearest_neighbour_channels(offsets):
        lower = [slice(None)] * 3  # p with p + step in the volume
        upper = [slice(None)] * 3  # p + step
        lower[axis] = slice(max(0, -step), graph.shape[axis] - max(0, step))
        upper[axis] = slice(max(0, step), graph.shape[axis] - max(0, -step))
        strong = _above(affs[channel][tuple(lower)], threshold)
        plus, minus = _DIRECTION_BITS[axis]
        forward, backward = (plus, minus) if step > 0 else (minus, plus)
        graph[tuple(lower)] |= strong * np.uint8(forward)
        graph[tuple(upper)] |= strong * np.uint8(backward)
    return graph
