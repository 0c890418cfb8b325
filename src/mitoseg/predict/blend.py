"""Tiles -> blended, chunk-aligned writes into a (C, Z, Y, X) output (numpy only).

Tile predictions arrive in z-major order (see :func:`mitoseg.geometry.tile_grid`). The
:class:`Stitcher` keeps one tile-deep slab of weighted sums; once no later tile can touch a slice,
that slice is normalised and handed to a :class:`SlabWriter`, which writes whole zarr chunks
along z. Memory is O(C x tile_z x Y x X), independent of the volume's depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np

from mitoseg.geometry import Box


class BlendMode(str, Enum):
    """How overlapping tiles are weighted."""

    GAUSSIAN = "gaussian"
    CONSTANT = "constant"


def blend_weight(
    tile_shape: Sequence[int],
    mode: BlendMode | str = BlendMode.GAUSSIAN,
    sigma_scale: float = 0.125,
) -> np.ndarray:
    """Per-voxel blending weight of one tile.

    Returns float32 (Z, Y, X) in (0, 1]: a separable Gaussian centred on the tile with sigma
    ``sigma_scale * size`` per axis, clipped below at 1e-3 so that border voxels still count,
    or all ones for ``constant``.
    """
    mode = BlendMode(mode)
    if mode is BlendMode.CONSTANT:
        return np.ones(tuple(tile_shape), dtype=np.float32)
    weight = np.ones((1, 1, 1), dtype=np.float64)
    for axis, size in enumerate(tile_shape):
        coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
        profile = np.exp(-0.5 * (coords / max(sigma_scale * size, 1e-6)) ** 2)
        shape = [1, 1, 1]
        shape[axis] = size
        weight = weight * profile.reshape(shape)
    weight /= weight.max()
    return np.maximum(weight, 1e-3).astype(np.float32)


def to_storage(probs: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """Convert float probabilities in [0, 1] to the output dtype (uint8 means round(255 p))."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return np.rint(np.clip(probs, 0.0, 1.0) * 255.0).astype(np.uint8)
    return probs.astype(dtype)


class SlabWriter:
    """Collect finished z-slices and write them to ``out`` in whole chunks along z.

    Args:
        out: array-like (C, Z, Y, X) supporting slice assignment (zarr or numpy).
        chunk_z: chunk depth of ``out`` along z; writes start on multiples of it.
    """

    def __init__(self, out: Any, chunk_z: int) -> None:
        self.out = out
        self.chunk_z = max(1, int(chunk_z))
        self._pending: list[np.ndarray] = []
        self._start = 0
        self._depth = 0

    @property
    def written(self) -> int:
        """Slices [0, written) are in ``out``."""
        return self._start

    def push(self, slab: np.ndarray) -> None:
        """Append slices (C, z, Y, X) that directly follow the previous ones."""
        self._pending.append(slab)
        self._depth += slab.shape[1]
        full = (self._depth // self.chunk_z) * self.chunk_z
        if full:
            self._write(full)

    def close(self) -> None:
        """Write what is left (the volume's last, partial chunk)."""
        if self._depth:
            self._write(self._depth)

    def _write(self, depth: int) -> None:
        data = np.concatenate(self._pending, axis=1)
        self.out[:, self._start : self._start + depth] = data[:, :depth]
        rest = data[:, depth:]
        self._pending = [rest] if rest.shape[1] else []
        self._start += depth
        self._depth -= depth


class Stitcher:
    """Blend tile predictions into ``out``, aggregating in z-major order.

    Args:
        out: array-like (C, Z, Y, X), zarr or numpy; its dtype sets the storage (uint8 means
            probabilities times 255).
        tile_shape: (z, y, x) of a full tile.
        blend: a :class:`BlendMode`.
        chunk_z: depth of the writes; defaults to ``out.chunks[1]`` when ``out`` has chunks.
    """

    def __init__(
        self,
        out: Any,
        tile_shape: Sequence[int],
        blend: BlendMode | str = BlendMode.GAUSSIAN,
        chunk_z: int | None = None,
    ) -> None:
        channels, _, height, width = out.shape
        self.out = out
        self.tile_shape = tuple(int(t) for t in tile_shape)
        self.weight = blend_weight(self.tile_shape, blend)
        depth = self.tile_shape[0]
        self._sum = np.zeros((channels, depth, height, width), dtype=np.float32)
        self._weight_sum = np.zeros((depth, height, width), dtype=np.float32)
        self._base = 0
        if chunk_z is None:
            chunk_z = getattr(out, "chunks", (1, depth))[1]
        self._writer = SlabWriter(out, chunk_z)

    def aggregate(self, values: np.ndarray, boxes: Sequence[Box]) -> None:
        """Add a batch of tile predictions.

        Args:
            values: float32 (N, C, tz, ty, tx) probabilities of full tiles; only the part inside
                each box (at the tile's start) is used, so padded tiles of small volumes work.
            boxes: where each tile lies in the output volume; z starts must not decrease.
        """
        for value, box in zip(values, boxes, strict=True):
            z0 = box.offset[0]
            if z0 < self._base:
                raise ValueError(f"tile at z={z0} arrived after z={self._base} was finished")
            self._advance(z0)
            dz, dy, dx = box.shape
            local = (slice(z0 - self._base, z0 - self._base + dz), *box.slices[1:])
            weight = self.weight[:dz, :dy, :dx]
            self._sum[(slice(None), *local)] += value[:, :dz, :dy, :dx] * weight
            self._weight_sum[local] += weight

    def finalize(self) -> None:
        """Write every remaining slice. Call once after the last tile."""
        self._advance(self.out.shape[1])
        self._writer.close()

    def _advance(self, z: int) -> None:
        """Finish slices [base, z): no tile starting at or after z touches them."""
        done = min(z, self.out.shape[1]) - self._base
        if done <= 0:
            return
        if done > self._sum.shape[1]:
            first = self._base + self._sum.shape[1]
            raise ValueError(f"slices {first}..{self._base + done} were covered by no tile")
        with np.errstate(invalid="ignore", divide="ignore"):
            slab = self._sum[:, :done] / self._weight_sum[:done]
        if not np.all(self._weight_sum[:done] > 0):
            raise ValueError(f"slices {self._base}..{self._base + done} were covered by no tile")
        self._writer.push(to_storage(slab, self.out.dtype))
        self._sum = np.roll(self._sum, -done, axis=1)
        self._weight_sum = np.roll(self._weight_sum, -done, axis=0)
        self._sum[:, -done:] = 0.0
        self._weight_sum[-done:] = 0.0
        self._base += done
