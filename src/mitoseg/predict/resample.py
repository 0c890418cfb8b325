"""Resample volumes between voxel grids, block by block (numpy and zarr; no torch).

Used by ``mitoseg-predict resample=true``: the input is resampled to the model's voxel size,
predicted there, and the probabilities are resampled back onto the input's grid.

Voxel ``i`` of an axis of ``n`` voxels covers ``[i, i + 1)`` of that axis's extent, so output
voxel ``j`` of ``m`` samples the input at ``(j + 0.5) * n / m - 0.5`` (voxel centres aligned,
the extent kept, as ``scipy.ndimage.zoom(grid_mode=True)``), linearly interpolated along each
axis with the border repeated. Each output voxel depends on the two input voxels beside it per
axis, so a block reads its footprint plus one voxel and the blockwise result is identical to
resampling the whole volume at once. Halving an axis this way averages voxel pairs (the mean of
2); stronger downsampling samples without a low-pass filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mitoseg.geometry import BlockGrid, Box


def resampled_shape(
    shape: Sequence[int], from_nm: Sequence[float], to_nm: Sequence[float]
) -> tuple[int, ...]:
    """``(Z, Y, X)`` of a volume of ``shape`` voxels of ``from_nm`` on a grid of ``to_nm``
    voxels: the same extent, rounded to whole voxels (at least 1)."""
    return tuple(
        max(1, round(int(n) * float(a) / float(b)))
        for n, a, b in zip(shape, from_nm, to_nm, strict=True)
    )


def _axis_samples(n_in: int, n_out: int, start: int, stop: int) -> tuple[np.ndarray, ...]:
    """Left and right input index and the right weight of output voxels ``[start, stop)``."""
    centres = (np.arange(start, stop, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    centres = np.clip(centres, 0.0, n_in - 1)
    left = np.floor(centres).astype(np.int64)
    right = np.minimum(left + 1, n_in - 1)
    return left, right, (centres - left).astype(np.float32)


def resample_region(source: Any, out_shape: Sequence[int], region: Sequence[slice]) -> np.ndarray:
    """The output voxels ``region`` of ``source`` resampled to ``out_shape``.

    Args:
        source: array-like (zarr, numpy) of shape ``(..., Z, Y, X)``; leading axes (channels)
            are kept whole.
        out_shape: ``(Z, Y, X)`` of the whole resampled volume.
        region: one slice per spatial axis, within ``out_shape``.

    Returns:
        float32 ``(..., region Z, Y, X)``; reads only the region's footprint in ``source``.
    """
    spatial = tuple(int(n) for n in source.shape[-3:])
    samples = [
        _axis_samples(n, int(m), r.start, r.stop)
        for n, m, r in zip(spatial, out_shape, region, strict=True)
    ]
    lead = source.ndim - 3
    read = tuple(slice(int(left[0]), int(right[-1]) + 1) for left, right, _ in samples)
    data = np.asarray(source[(slice(None),) * lead + read], dtype=np.float32)
    for axis, ((left, right, weight), box) in enumerate(zip(samples, read, strict=True)):
        shape = [1] * data.ndim
        shape[lead + axis] = len(weight)
        w = weight.reshape(shape)
        low = np.take(data, left - box.start, axis=lead + axis)
        high = np.take(data, right - box.start, axis=lead + axis)
        data = low * (1 - w) + high * w
    return data


def _store(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 values in ``dtype``: integers rounded and clipped to their range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def resample_volume(source: Any, out: Any, block_shape: Sequence[int]) -> None:
    """Fill ``out`` (zarr, ``(..., Z, Y, X)``) with ``source`` resampled to its grid, one block
    of whole ``out`` chunks at a time.

    Memory: about 3 float32 copies of a block and of its footprint in ``source`` (times the
    leading axes), whatever the volume's size.
    """
    spatial = tuple(int(n) for n in out.shape[-3:])
    chunks = tuple(int(c) for c in out.chunks[-3:])
    block_shape = tuple(max(c, int(b) // c * c) for b, c in zip(block_shape, chunks, strict=True))
    lead = (slice(None),) * (out.ndim - 3)
    dtype = np.dtype(out.dtype)
    for block in BlockGrid(Box.whole(spatial), block_shape):
        region = block.write_roi.slices
        out[lead + region] = _store(resample_region(source, spatial, region), dtype)
