"""Straightforward whole-volume instance decoders: the oracles of :mod:`mitoseg.watershed`.

What PyTorch Connectomics' ``bc_watershed`` does, on the whole volume at once:
``skimage.measure.label`` of the seed map (int64), small seeds removed, one
``skimage.segmentation.watershed`` of a float64 height with ``mask=``, small instances removed,
``relabel_sequential``. Two deliberate differences from PyTC, shared with the fast decoders: one
``connectivity`` for seeds and flooding (PyTC labels seeds 26-connected and floods 6-connected),
and seed voxels outside the mask are not seeds (PyTC drops them after labelling, which can leave
one seed id on several pieces). With ``tie_break=False`` the height is PyTC's ``-F`` (float64);
the default height orders equal-height seed voxels in C order (see :mod:`mitoseg.watershed`),
which skimage otherwise leaves to its heap layout.

Peak memory is roughly 30-45 bytes per voxel beyond the input: do not use on large volumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.measure import label
from skimage.segmentation import relabel_sequential, watershed

_RANK = {6: 1, 18: 2, 26: 3}
_TIE_BITS = 37
_FLOAT_LEVELS = 65535.0


def _above(x: np.ndarray, threshold: float) -> np.ndarray:
    if x.dtype == np.uint8:
        return x > threshold * 255.0
    return x.astype(np.float64) > threshold


def _below(x: np.ndarray, threshold: float) -> np.ndarray:
    if x.dtype == np.uint8:
        return x < threshold * 255.0
    return x.astype(np.float64) < threshold


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero the labels with fewer than ``min_size`` voxels (as remove_small_objects does)."""
    if min_size <= 1:
        return labels
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    labels[small[labels]] = 0
    return labels


def _height(score: np.ndarray, seeds: np.ndarray, tie_break: bool) -> np.ndarray:
    """float64 flood height: -score, or its exact integer form with the seed tie-break."""
    if not tie_break:
        return -score.astype(np.float64)
    height = score.astype(np.float64)
    if score.dtype == np.uint8:
        np.subtract(255.0, height, out=height)
    else:
        height *= _FLOAT_LEVELS
        np.subtract(_FLOAT_LEVELS, np.rint(height, out=height), out=height)
    height *= 2.0**_TIE_BITS
    ties = np.arange(score.size, dtype=np.float64).reshape(score.shape)
    ties[seeds == 0] = 2.0**_TIE_BITS - 1
    height += ties
    return height


def seeded_watershed(
    score: np.ndarray,
    contour: np.ndarray | None = None,
    *,
    seed_threshold: float,
    mask_threshold: float,
    contour_threshold: float = 1.0,
    min_seed_size: int = 32,
    min_size: int = 1024,
    connectivity: int = 26,
    tie_break: bool = True,
) -> np.ndarray:
    """Whole-volume seeded watershed; same arguments and result as the fast version.

    Args:
        score: (Z, Y, X) uint8 in [0, 255] or float in [0, 1].
        contour: None or (Z, Y, X) like score; seeds need contour < contour_threshold.
        tie_break: False floods PyTC's plain ``-score`` (equal-height seed voxels then tie
            by skimage's heap layout).

    Returns:
        uint32 (Z, Y, X), instances 1..N in C order of their seeds' first voxels.
    """
    rank = _RANK[connectivity]
    mask = _above(score, mask_threshold)
    seed_map = mask & _above(score, seed_threshold)
    if contour is not None:
        seed_map &= _below(contour, contour_threshold)
    seeds = _remove_small(label(seed_map, connectivity=rank), min_seed_size)
    del seed_map
    height = _height(score, seeds, tie_break)
    instances = watershed(height, seeds, mask=mask, connectivity=rank)
    del height, seeds, mask
    instances = _remove_small(instances, min_size)
    return relabel_sequential(instances)[0].astype(np.uint32)


def bc_watershed(
    probs: np.ndarray,
    seed_threshold: float = 0.85,
    contour_threshold: float = 0.6,
    mask_threshold: float = 0.8,
    min_seed_size: int = 32,
    min_size: int = 1024,
    connectivity: int = 26,
    tie_break: bool = True,
) -> np.ndarray:
    """PyTC's bc_watershed on probs (2, Z, Y, X) (foreground, contour), uint8 or float [0, 1]."""
    return seeded_watershed(
        probs[0],
        probs[1],
        seed_threshold=seed_threshold,
        contour_threshold=contour_threshold,
        mask_threshold=mask_threshold,
        min_seed_size=min_seed_size,
        min_size=min_size,
        connectivity=connectivity,
        tie_break=tie_break,
    )


def affinity_inside(affs: np.ndarray, offsets: Sequence[Sequence[int]]) -> np.ndarray:
    """Mean affinity of each voxel's nearest-neighbour edges, with whole-volume np.roll shifts.

    Args:
        affs: (C, Z, Y, X) uint8 or float in [0, 1]; channel i belongs to offsets[i].

    Returns:
        uint8 (mean rounded half up) for uint8 input, else float32; 0 where no edge exists.
    """
    shape = affs.shape[1:]
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.float64)
    for channel, offset in enumerate(offsets):
        if sorted(abs(v) for v in offset) != [0, 0, 1]:
            continue
        axis = int(np.flatnonzero(offset)[0])
        step = int(offset[axis])
        values = affs[channel].astype(np.float64)
        coord = np.arange(shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)])
        # edge p -- p+d is stored at p; edge p-d -- p at p-d, which np.roll brings to p
        for stored, partner in ((values, step), (np.roll(values, step, axis=axis), -step)):
            valid = (coord + partner >= 0) & (coord + partner < shape[axis])
            total += np.where(valid, stored, 0.0)
            count += np.broadcast_to(valid, shape)
    mean = np.divide(total, count, out=np.zeros(shape), where=count > 0)
    if affs.dtype == np.uint8:
        return np.floor(mean + 0.5).astype(np.uint8)
    return mean.astype(np.float32)


def affinity_watershed(
    affs: np.ndarray,
    seed_threshold: float = 0.9,
    mask_threshold: float = 0.5,
    min_seed_size: int = 32,
    min_size: int = 1024,
    connectivity: int = 6,
    offsets: Sequence[Sequence[int]] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1)),
    tie_break: bool = True,
) -> np.ndarray:
    """Seeded watershed of the affinity inside map; affs (len(offsets), Z, Y, X)."""
    return seeded_watershed(
        affinity_inside(affs, offsets),
        seed_threshold=seed_threshold,
        mask_threshold=mask_threshold,
        min_seed_size=min_seed_size,
        min_size=min_size,
        connectivity=connectivity,
        tie_break=tie_break,
    )


def ac_watershed(
    probs: np.ndarray,
    seed_threshold: float = 0.85,
    contour_threshold: float = 0.6,
    mask_threshold: float = 0.5,
    min_seed_size: int = 32,
    min_size: int = 1024,
    connectivity: int = 6,
    offsets: Sequence[Sequence[int]] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1)),
    tie_break: bool = True,
) -> np.ndarray:
    """As ``affinity_watershed`` with a last contour channel gating the seeds."""
    return seeded_watershed(
        affinity_inside(probs[:-1], offsets),
        probs[-1],
        seed_threshold=seed_threshold,
        contour_threshold=contour_threshold,
        mask_threshold=mask_threshold,
        min_seed_size=min_seed_size,
        min_size=min_size,
        connectivity=connectivity,
        tie_break=tie_break,
    )
