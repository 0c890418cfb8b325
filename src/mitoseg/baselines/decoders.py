"""Straightforward whole-volume instance decoders: the oracles of :mod:`mitoseg.decode.watershed`.

What PyTorch Connectomics' ``bc_watershed`` does, on the whole volume at once:
``skimage.measure.label`` of the seed map (int64), small seeds removed, one
``skimage.segmentation.watershed`` of a float64 height with ``mask=``, small instances removed,
``relabel_sequential``. Two deliberate differences from PyTC, shared with the fast decoders: one
``connectivity`` for seeds and flooding (PyTC labels seeds 26-connected and floods 6-connected),
and seed voxels outside the mask are not seeds (PyTC drops them after labelling, which can leave
one seed id on several pieces). With ``tie_break=False`` the height is PyTC's ``-F`` (float64);
the default height orders equal-height seed voxels in C order (see :mod:`mitoseg.decode.watershed`),
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


def _graph_labels(
    affs: np.ndarray, offsets: Sequence[Sequence[int]], threshold: float, voxels: np.ndarray
) -> np.ndarray:
    """Components of ``voxels`` joined by nearest-neighbour edges with affinity > threshold,
    by union-find over the whole volume (int64 labels, 0 where a voxel has no such edge)."""
    shape = voxels.shape
    parent = np.arange(voxels.size, dtype=np.int64)
    has_edge = np.zeros(voxels.size, dtype=bool)

    def find(i: np.ndarray) -> np.ndarray:
        while True:
            up = parent[i]
            if np.array_equal(up, i):
                return i
            i = up

    index = np.arange(voxels.size, dtype=np.int64).reshape(shape)
    pairs = []
    for channel, offset in enumerate(offsets):
        if sorted(abs(v) for v in offset) != [0, 0, 1]:
            continue
        axis = int(np.flatnonzero(offset)[0])
        step = int(offset[axis])
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis] = slice(max(0, -step), shape[axis] - max(0, step))
        upper[axis] = slice(max(0, step), shape[axis] - max(0, -step))
        keep = _above(affs[channel][tuple(lower)], threshold)
        keep &= voxels[tuple(lower)] & voxels[tuple(upper)]
        pairs.append((index[tuple(lower)][keep], index[tuple(upper)][keep]))
    for a, b in pairs:
        has_edge[a] = has_edge[b] = True
    changed = True
    while changed:  # label propagation: every voxel takes the smallest root of its edges
        changed = False
        for a, b in pairs:
            ra, rb = find(a), find(b)
            low = np.minimum(ra, rb)
            if np.any(ra != low) or np.any(rb != low):
                changed = True
                np.minimum.at(parent, ra, low)
                np.minimum.at(parent, rb, low)
    roots = find(np.arange(voxels.size, dtype=np.int64))
    roots[~has_edge] = -1
    labels = np.zeros(voxels.size, dtype=np.int64)
    kept = roots >= 0
    _, labels[kept] = np.unique(roots[kept], return_inverse=True)
    labels[kept] += 1
    return label(labels.reshape(shape), connectivity=1)  # renumbered in raster order


def _affinity_decode(
    affs: np.ndarray,
    contour: np.ndarray | None,
    offsets: Sequence[Sequence[int]],
    settings: dict,
    tie_break: bool,
) -> np.ndarray:
    """Graph seeds and regions, one whole-volume watershed per region (as mitoseg.decode.watershed
    does)."""
    rank = _RANK[settings["connectivity"]]
    inside = affinity_inside(affs, offsets)
    mask = _above(inside, settings["mask_threshold"])
    regions = _graph_labels(affs, offsets, settings["mask_threshold"], mask)
    seed_voxels = mask if contour is None else mask & _below(contour, settings["contour_threshold"])
    seeds = _remove_small(
        _graph_labels(affs, offsets, settings["seed_threshold"], seed_voxels),
        settings["min_seed_size"],
    )
    height = _height(inside, seeds, tie_break)
    instances = np.zeros(inside.shape, dtype=np.int64)
    for region in range(1, int(regions.max()) + 1):
        where = regions == region
        flooded = watershed(height, np.where(where, seeds, 0), mask=where, connectivity=rank)
        instances[where] = flooded[where]
    instances = _remove_small(instances, settings["min_size"])
    return relabel_sequential(instances)[0].astype(np.uint32)


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
    """The affinity watershed on whole volumes; affs (len(offsets), Z, Y, X)."""
    settings = dict(
        seed_threshold=seed_threshold,
        mask_threshold=mask_threshold,
        min_seed_size=min_seed_size,
        min_size=min_size,
        connectivity=connectivity,
        contour_threshold=1.0,
    )
    return _affinity_decode(affs, None, offsets, settings, tie_break)


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
    settings = dict(
        seed_threshold=seed_threshold,
        mask_threshold=mask_threshold,
        min_seed_size=min_seed_size,
        min_size=min_size,
        connectivity=connectivity,
        contour_threshold=contour_threshold,
    )
    return _affinity_decode(probs[:-1], probs[-1], offsets, settings, tie_break)
