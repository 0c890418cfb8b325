"""How overlapping tiles are weighted when they are blended (numpy only).

The blending itself happens block by block on the model's device
(:class:`mitoseg.predict.tiles.BlockBlender`), the one stitcher of test-time prediction and of
``mitoseg-predict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import numpy as np


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
