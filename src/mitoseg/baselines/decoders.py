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
from scipy import ndimage
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


def _depth(region: np.ndarray, in_plane: bool) -> np.ndarray:
    """Chessboard distance to the nearest voxel outside ``region`` by repeated erosion (the
    volume's border is not outside); in-plane erosions with ``in_plane``."""
    structure = np.ones((3, 3, 3), dtype=bool)
    if in_plane:
        structure[0] = structure[2] = False
    depth = np.zeros(region.shape, dtype=np.int64)
    current = region
    for _ in range(max(region.shape) + 1):
        depth += current
        if not current.any():
            return depth
        current = ndimage.binary_erosion(current, structure, border_value=1)
    depth[current] = np.iinfo(np.int32).max  # never reached: nothing outside
    return depth


def _merge_necks(
    instances: np.ndarray, seeds: np.ndarray, regions: np.ndarray, in_plane: bool
) -> np.ndarray:
    """mitoseg.decode.watershed.merge_necks by loops: in each mask region, instances whose
    shared faces are no deeper than both seeds' shallowest voxel become the smallest id."""
    out = instances.copy()
    for region in range(1, int(regions.max()) + 1):
        where = regions == region
        ids = [int(i) for i in np.unique(instances[where]) if i > 0]
        if len(ids) < 2:
            continue
        depth = _depth(where, in_plane)
        seed_min = {i: int(depth[seeds == i].min()) for i in ids}
        iface: dict[tuple[int, int], int] = {}
        for axis in range(3):
            a = np.moveaxis(instances, axis, 0)
            d = np.moveaxis(depth, axis, 0)
            w = np.moveaxis(where, axis, 0)
            for k in range(a.shape[0] - 1):
                face = w[k] & w[k + 1] & (a[k] != a[k + 1]) & (a[k] > 0) & (a[k + 1] > 0)
                pairs = zip(a[k][face], a[k + 1][face], d[k][face], d[k + 1][face], strict=True)
                for p, q, dp, dq in pairs:
                    key = (min(int(p), int(q)), max(int(p), int(q)))
                    iface[key] = max(iface.get(key, 0), int(dp), int(dq))
        root = {i: i for i in ids}
        for (p, q), deepest in sorted(iface.items()):
            if deepest <= min(seed_min[p], seed_min[q]):
                rp, rq = p, q
                while root[rp] != rp:
                    rp = root[rp]
                while root[rq] != rq:
                    rq = root[rq]
                root[max(rp, rq)] = min(rp, rq)
        for i in ids:
            r = i
            while root[r] != r:
                r = root[r]
            out[where & (instances == i)] = r
    return out


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
    merge_necks: bool = False,
    in_plane: bool = False,
) -> np.ndarray:
    """Whole-volume seeded watershed; same arguments and result as the fast version.

    Args:
        score: (Z, Y, X) uint8 in [0, 255] or float in [0, 1].
        contour: None or (Z, Y, X) like score; seeds need contour < contour_threshold.
        tie_break: False floods PyTC's plain ``-score`` (equal-height seed voxels then tie
            by skimage's heap layout).
        merge_necks, in_plane: join regions split by a neck (the BC / AC decoders' default;
            PyTC does not), necks measured per z-slice with ``in_plane``.

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
    if merge_necks:
        instances = _merge_necks(instances, seeds, label(mask, connectivity=rank), in_plane)
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
    merge_necks: bool = True,
    in_plane: bool = False,
) -> np.ndarray:
    """PyTC's bc_watershed on probs (2, Z, Y, X) (foreground, contour), uint8 or float [0, 1],
    and the neck merge of :func:`_merge_necks` (``merge_necks=False``: PyTC's)."""
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
        merge_necks=merge_necks,
        in_plane=in_plane,
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
    everywhere = np.ones(inside.shape, dtype=bool)
    regions = _graph_labels(affs, offsets, settings["mask_threshold"], everywhere)
    mask = regions > 0  # voxels with a strong edge
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
    if settings.get("merge_necks"):
        instances = _merge_necks(instances, seeds, regions, settings.get("in_plane", False))
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
    merge_necks: bool = True,
    in_plane: bool = False,
) -> np.ndarray:
    """As ``affinity_watershed`` with a last contour channel gating the seeds, and the neck
    merge of :func:`_merge_necks`."""
    settings = dict(
        merge_necks=merge_necks,
        in_plane=in_plane,
        seed_threshold=seed_threshold,
        mask_threshold=mask_threshold,
        min_seed_size=min_seed_size,
        min_size=min_size,
        connectivity=connectivity,
        contour_threshold=contour_threshold,
    )
    return _affinity_decode(probs[:-1], probs[-1], offsets, settings, tie_break)
