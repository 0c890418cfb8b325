"""Probabilities -> masks (pure numpy/scipy functions; no torch).

``binarize_and_median`` is the reference "binarize and median" post-process: threshold, then a
median filter of the binary mask. On a binary mask the median over a k^3 box is 1 exactly when the
box holds more than half ones, so it is computed with three separable integer box sums instead of
a generic (sorting) median filter: identical output, far cheaper.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage

from mitoseg.decode.base import OutputKind


def binary_median(mask: np.ndarray, size: int = 7) -> np.ndarray:
    """Median filter of a binary mask with a ``size``^3 box, borders reflected.

    Equal to ``scipy.ndimage.median_filter(mask, size=size, mode="reflect")``.

    Args:
        mask: bool or {0, 1} integer (Z, Y, X).
        size: odd box edge in voxels; 0 or 1 returns the mask unchanged.

    Returns:
        bool (Z, Y, X).
    """
    if size <= 1:
        return mask.astype(bool)
    if size % 2 == 0:
        raise ValueError(f"median size must be odd, got {size}")
    counts = mask.astype(np.int16)
    box = np.ones(size, dtype=np.int16)
    for axis in range(mask.ndim):
        # int16 holds size**3 <= 32767 for size <= 31; 'reflect' here is scipy's half-sample
        # symmetric mode, the same one median_filter uses.
        counts = ndimage.convolve1d(counts, box, axis=axis, mode="reflect")
    return counts > (size**mask.ndim) // 2


def binarize(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Foreground where probability > threshold.

    Args:
        probs: (Z, Y, X) float in [0, 1], or uint8 in [0, 255] (probability times 255).
        threshold: in [0, 1].

    Returns:
        bool (Z, Y, X).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if probs.dtype == np.uint8:
        return probs > threshold * 255.0
    return probs > threshold


@dataclass(frozen=True)
class BinarizeMedian:
    """The semantic decoder: threshold, then a binary median filter.

    Args:
        threshold: probability above which a voxel is foreground.
        median_size: odd box edge of the median filter; 0 disables it.
    """

    kind: ClassVar[OutputKind] = OutputKind.MASK

    threshold: float = 0.5
    median_size: int = 7

    @property
    def n_channels(self) -> int:
        """Channels read: the foreground (channel 0; others are ignored)."""
        return 1

    @property
    def halo(self) -> tuple[int, int, int]:
        """Context in voxels a block needs on each side to give the whole-volume result."""
        return (self.median_size // 2,) * 3

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        """probs: (C, Z, Y, X) or (Z, Y, X); channel 0 is the foreground. Returns bool (Z, Y, X)."""
        foreground = probs[0] if probs.ndim == 4 else probs
        return binary_median(binarize(foreground, self.threshold), self.median_size)


def iter_slabs(depth: int, slab: int, halo: int) -> Iterator[tuple[slice, slice]]:
    """Yield (read, crop) z-slices: read ``read`` with halo, keep ``crop`` of what was read."""
    for z0 in range(0, depth, slab):
        z1 = min(z0 + slab, depth)
        r0, r1 = max(0, z0 - halo), min(depth, z1 + halo)
        yield slice(r0, r1), slice(z0 - r0, z0 - r0 + (z1 - z0))


def decode_slabwise(
    decoder: BinarizeMedian, probs: Any, out: Any | None = None, slab: int = 32
) -> Iterator[tuple[slice, np.ndarray]]:
    """Run ``decoder`` over z-slabs of ``probs`` (C, Z, Y, X) with enough halo to be exact.

    Yields (z-slice, mask slab) pairs and, when ``out`` (Z, Y, X) is given, writes them into it.
    A slab at the volume border reads no halo beyond it, so borders see the same reflection as a
    whole-volume call.
    """
    depth = probs.shape[1]
    for read, crop in iter_slabs(depth, slab, decoder.halo[0]):
        # Interior faces read a full halo and true volume borders are the same borders the
        # whole-volume filter reflects at, so every kept voxel matches the whole-volume result.
        mask = decoder(np.asarray(probs[:, read]))[crop]
        z = slice(read.start + crop.start, read.start + crop.stop)
        if out is not None:
            out[z] = mask.astype(np.uint8)
        yield z, mask
