"""Probabilities -> instance ids: the seeded watershed behind the BC, A and AC decoders (numpy
only). The decoders themselves are in :mod:`mitoseg.decode.instances`; the affinity graphs of A
and AC in :mod:`mitoseg.decode.affinity`.

Every decoder reduces to :func:`seeded_watershed` of an *inside* score S (the foreground for BC,
the mean nearest-neighbour affinity for A and AC) and an optional contour C:

1. seeds: components of (S > seed_threshold) & (C < contour_threshold) & mask, those under
   ``min_seed_size`` voxels dropped; the mask is S > mask_threshold;
2. flood: seeded watershed of -S within the mask; instances under ``min_size`` voxels removed;
3. ids 1..N numbered in C order of each instance's seed's first voxel (``measure.label`` +
   ``relabel_sequential`` order). One ``connectivity`` (6, 18, 26) serves mask, seeds and flood.

Exact and fast. A flood within a mask never crosses between the mask's components, so the mask is
labelled once (cc3d, uint32) and each component is decoded on its bounding box: components under
``min_size`` are dropped; with no seed a component is background, with one seed it is that
instance (one flood fills a connected mask); only multi-seed components run skimage's watershed,
on their crop. skimage pops the lowest (height, push age) first and a component's pushes keep
their relative order whatever else is queued, so a crop floods like the whole volume, except that
all seed voxels are queued with age 0: equal-height seed voxels tie and the binary heap breaks the
tie by its layout, which depends on everything queued. So this module and
``mitoseg.baselines.decoders`` both flood the exact integer float64 height ``level * 2**37 + tie``,
level = 255 - S (uint8) or 65535 - rint(65535 S) (float), tie = raster index on seed voxels and
2**37 - 1 elsewhere: the order of -S, with equal-height seed voxels in C order and before non-seed
voxels of that height (as skimage does). Thresholds compare exact values.

The affinity decoders (A, AC) differ in two places: seeds are components of the graph of
nearest-neighbour edges with affinity > seed_threshold (cc3d's voxel-graph labelling), and the
components decoded one by one are those of the graph of edges > mask_threshold: the mask is every
voxel with at least one such edge (not a threshold on the mean, which drops an object's corner
voxels), and two touching objects whose shared edges are weak are never flooded into each other.
Perfect affinities thus decode exactly, at any mask_threshold below 1.

With ``merge_necks`` (BC, AC, BCD), the flooded regions of a multi-seed component that only a
neck separates (thinner than the contour band, or than the distance seeds' threshold) are joined
after the flood (:func:`merge_necks`), before the ``min_size`` filter.

Peak memory beyond the input: about 5 bytes per voxel (bool mask + uint32 components), plus for
A/AC the inside map (1 byte per voxel for uint8, 4 for float) and two edge bitfields (1 byte per
voxel each), plus ~40 bytes per voxel of the largest
multi-seed component's bounding box (skimage's copies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import cc3d
import fastremap
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

_RANK = {6: 1, 18: 2, 26: 3}  # cc3d connectivity -> skimage connectivity (max orthogonal steps)
TIE_BITS = 37  # raster indices below 2**37 (137 Gvox); 65535 levels * 2**37 < 2**53 stays exact
_NON_SEED = float(2**TIE_BITS - 1)
_DIRECTION_BITS = ((1, 2), (4, 8), (16, 32))  # cc3d's edge bits: (+, -) along z, y, x
FLOAT_LEVELS = 65535
# cc3d's 6-connected voxel-graph bits per axis of a C-ordered (Z, Y, X) array: (+1 step, -1 step)


class _Settings(NamedTuple):
    seed_threshold: float
    contour_threshold: float
    mask_threshold: float
    min_seed_size: int
    min_size: int
    connectivity: int
    merge_necks: bool = False  # join flooded regions split only by a neck (see merge_necks)
    in_plane: bool = False  # necks measured per z-slice (anisotropic data, in-plane contour)


# --------------------------------------------------------------------------- validation


def _check_settings(s: _Settings) -> None:
    for name in ("seed_threshold", "contour_threshold", "mask_threshold"):
        value = getattr(s, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    for name in ("min_seed_size", "min_size"):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if s.connectivity not in _RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {s.connectivity!r}")


def _check_values(array: np.ndarray, name: str) -> None:
    """uint8 (0-255) or float in [0, 1]; anything else is a ValueError."""
    if array.dtype == np.uint8 or array.size == 0:
        return
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 (0-255) or float in [0, 1], got {array.dtype}")
    low, high = float(array.min()), float(array.max())
    if not (low >= 0.0 and high <= 1.0):  # also catches NaN
        raise ValueError(
            f"{name} is float {array.shape} with values in [{low}, {high}]; float probabilities "
            "must lie in [0, 1] (store probability x 255 as uint8 instead)"
        )


def check_probs(probs: np.ndarray, n_channels: int, layout: str) -> np.ndarray:
    """Validate decoder input and return it as an array (no copy for numpy input).

    Args:
        probs: (C, Z, Y, X) uint8 in [0, 255] or float in [0, 1].
        n_channels: the C the decoder needs.
        layout: the expected layout for the error message, e.g. "(2, Z, Y, X)".

    Raises:
        ValueError: wrong number of dimensions or channels, another dtype, float out of [0, 1].
    """
    probs = np.asarray(probs)
    if probs.ndim != 4 or probs.shape[0] != n_channels:
        raise ValueError(f"probs must be {layout} with C = {n_channels}, got shape {probs.shape}")
    _check_values(probs, "probs")
    return probs


def _above(x: np.ndarray, threshold: float) -> np.ndarray:
    """x > threshold, threshold a probability; uint8 x holds probability x 255."""
    if x.dtype == np.uint8:  # for integer x: x > t*255 <=> x > floor(t*255)
        return x > int(np.floor(threshold * 255.0))
    return x > np.float64(threshold)  # float64 scalar: compared exactly, not rounded to x.dtype


def _below(x: np.ndarray, threshold: float) -> np.ndarray:
    """x < threshold, threshold a probability; uint8 x holds probability x 255."""
    if x.dtype == np.uint8:  # for integer x: x < t*255 <=> x < ceil(t*255)
        return x < int(np.ceil(threshold * 255.0))
    return x < np.float64(threshold)


# --------------------------------------------------------------------------- flooding


def float_levels(score: np.ndarray) -> np.ndarray:
    """uint16 (Z, Y, X): a float score in [0, 1] as the 65535 levels the flood orders it by
    (``rint(65535 score)``, in float64 as :func:`flood_height` computes it)."""
    return np.rint(score.astype(np.float64) * FLOAT_LEVELS).astype(np.uint16)


def flood_height(score: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The height the watershed floods: -score as exact integers, ties of seed voxels in C order.

    Args:
        score: (Z, Y, X) uint8 in [0, 255] or float in [0, 1]; high floods first. uint16 holds
            a float score as its 65535 levels (:func:`float_levels`), as blockwise passes keep it.
        seeds: integer (Z, Y, X), non-zero on seed voxels.

    Returns:
        float64 (Z, Y, X): ``level * 2**37 + tie`` (see the module docstring), integer-valued.
    """
    if seeds.size >= 2**TIE_BITS - 1:
        raise ValueError(f"volume {seeds.shape} too large for the tie-break (< 2**37 voxels)")
    height = np.arange(seeds.size, dtype=np.float64).reshape(seeds.shape)
    height[seeds == 0] = _NON_SEED
    if score.dtype == np.uint8:
        levels = 255.0 - score
    elif score.dtype == np.uint16:
        levels = FLOAT_LEVELS - score.astype(np.float64)
    else:
        levels = FLOAT_LEVELS - np.rint(score.astype(np.float64) * FLOAT_LEVELS)
    levels *= 2.0**TIE_BITS
    height += levels
    return height


def first_voxels(labels: np.ndarray, where: np.ndarray, n: int) -> np.ndarray:
    """Flat index of the first voxel of each label 1..n; ``labels`` = flat[where] (non-zero)."""
    # cc3d numbers components in raster order, so first voxels are where a new maximum appears.
    running = np.maximum.accumulate(labels)
    new = np.empty(labels.size, dtype=bool)
    new[0] = True
    new[1:] = running[1:] > running[:-1]
    if new.sum() == n and np.array_equal(labels[new], np.arange(1, n + 1)):
        return where[new]
    _, first = np.unique(labels, return_index=True)  # other numbering: sort (never seen)
    return where[first]


def _graph_components(seed_map: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int]:
    """Components of the strong-edge graph among ``seed_map`` voxels, numbered in raster order.

    Voxels without a strong edge to another ``seed_map`` voxel are not seeds.
    """
    graph = np.where(seed_map, edges, np.uint8(0))
    for axis, (plus, minus) in enumerate(_DIRECTION_BITS):
        head = [slice(None)] * 3
        tail = [slice(None)] * 3
        head[axis], tail[axis] = slice(0, -1), slice(1, None)
        # keep p -> p+1 only if p+1 is a seed voxel, and p+1 -> p only if p is
        graph[tuple(head)] &= np.where(seed_map[tuple(tail)], np.uint8(255), np.uint8(255 - plus))
        graph[tuple(tail)] &= np.where(seed_map[tuple(head)], np.uint8(255), np.uint8(255 - minus))
        edge = [slice(None)] * 3
        edge[axis] = slice(-1, None)
        graph[tuple(edge)] &= np.uint8(255 - plus)  # nothing beyond the crop
        edge[axis] = slice(0, 1)
        graph[tuple(edge)] &= np.uint8(255 - minus)
    parts = np.ascontiguousarray(cc3d.color_connectivity_graph(graph, connectivity=6))
    parts[graph == 0] = 0
    # Same partition, renumbered in raster order as every other seed labelling here.
    labels, n = cc3d.connected_components(parts, connectivity=6, return_N=True, out_dtype=np.uint32)
    return np.ascontiguousarray(labels), n


def _crop_seeds(
    inside: np.ndarray,
    score: np.ndarray,
    contour: np.ndarray | None,
    s: _Settings,
    edges: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeds of one component's crop: components of the seed map, or with ``edges`` (the strong
    affinity graph) components of that graph among the component's voxels.

    Returns:
        seeds uint32 (crop) numbered 1..k in raster order of their first voxels, small seeds
        cleared; int64 (k,) local flat index of each seed's first voxel.
    """
    seed_map = inside.copy() if edges is not None else inside & _above(score, s.seed_threshold)
    if contour is not None:
        seed_map &= _below(contour, s.contour_threshold)
    if edges is not None:
        seeds, n = _graph_components(seed_map, edges)
    else:
        seeds, n = cc3d.connected_components(
            seed_map, connectivity=s.connectivity, return_N=True, out_dtype=np.uint32
        )
    if n == 0:
        return seeds, np.zeros(0, dtype=np.int64)
    flat = seeds.reshape(-1)
    where = np.flatnonzero(flat != 0)  # of a bool array: several times faster than of uint32
    labels = flat[where]
    first = first_voxels(labels, where, n)
    kept = np.flatnonzero(np.bincount(labels, minlength=n + 1)[1:] >= s.min_seed_size)
    if kept.size < n:
        renumber = np.zeros(n + 1, dtype=np.uint32)
        renumber[kept + 1] = np.arange(1, kept.size + 1, dtype=np.uint32)
        fastremap.remap_from_array(flat, renumber)  # in place; flat is a view of seeds
    return seeds, first[kept]


def neck_depth(
    inside: np.ndarray, at_border: Sequence[tuple[bool, bool]], in_plane: bool
) -> np.ndarray:
    """Chessboard distance in voxels from each voxel of ``inside`` to the nearest voxel outside.

    Args:
        inside: bool (Z, Y, X), one mask component on its bounding box.
        at_border: per axis, whether the box's low / high side is the volume's border, which
            does not count as outside (a contour target has no band there either).
        in_plane: measure within each z-slice (targets with an in-plane contour).

    Returns:
        int32 (Z, Y, X): 0 outside, >= 1 inside.
    """
    pad = [(0 if low else 1, 0 if high else 1) for low, high in at_border]
    padded = np.pad(inside, pad, constant_values=False)
    if in_plane:
        metric = np.zeros((3, 3, 3), dtype=bool)
        metric[1] = True
    else:
        metric = np.ones((3, 3, 3), dtype=bool)
    if padded.all():  # nothing outside: no distance (cdt would give -1)
        return np.full(inside.shape, np.iinfo(np.int32).max, dtype=np.int32)
    depth = ndimage.distance_transform_cdt(padded, metric=metric)
    if in_plane:  # slices without any outside voxel get -1
        depth[depth < 0] = np.iinfo(np.int32).max
    core = tuple(slice(lo, lo + n) for (lo, _), n in zip(pad, inside.shape, strict=True))
    return np.ascontiguousarray(depth[core], dtype=np.int32)


def merge_necks(flooded: np.ndarray, seeds: np.ndarray, depth: np.ndarray, n: int) -> np.ndarray:
    """Which flooded regions of one component form one object split only by a neck.

    A contour band covers every voxel within its width of another label: the whole cross-section
    of a neck thinner than the band, and a face where two objects touch. The two differ in how
    far the face between the regions lies from the component's outside: a neck's interface lies
    within the band, or in a core too small to seed, so no voxel of it is deeper than the
    shallowest voxel of the seeds on either side (the seeds start where the band ends); a face
    between two objects wider than the band has voxels deeper than that. Adjacent regions a, b
    merge when ``max(depth on their interface) <= min(min depth of seed a, of seed b)``. A
    contact between two objects hardly wider than the band merges them (the contour cannot tell
    them apart). Distance seeds (BCD) start where the distance exceeds the seed threshold: a neck
    that split them is no deeper than that, a contact face between two objects is deeper.

    Args:
        flooded: int (Z, Y, X) regions 1..n (0 outside) of one component's crop.
        seeds: int (Z, Y, X) the seeds 1..n the regions were flooded from.
        depth: int (Z, Y, X) from :func:`neck_depth`.
        n: the number of regions.

    Returns:
        int64 (n + 1,): group[i] is the smallest region id joined with region i (group[0] = 0).
    """
    big = np.iinfo(np.int64).max
    seed_min = np.full(n + 1, big, dtype=np.int64)
    on_seed = seeds > 0
    np.minimum.at(seed_min, seeds[on_seed].astype(np.int64), depth[on_seed].astype(np.int64))
    pairs, deepest = [], []
    for axis in range(3):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        a, b = flooded[tuple(lo)], flooded[tuple(hi)]
        face = (a != b) & (a > 0) & (b > 0)
        if not face.any():
            continue
        d = np.maximum(depth[tuple(lo)][face], depth[tuple(hi)][face]).astype(np.int64)
        fa, fb = a[face].astype(np.int64), b[face].astype(np.int64)
        pairs.append(np.stack([np.minimum(fa, fb), np.maximum(fa, fb)], axis=1))
        deepest.append(d)
    group = np.arange(n + 1, dtype=np.int64)
    if not pairs:
        return group
    keys, where = np.unique(np.concatenate(pairs), axis=0, return_inverse=True)
    iface_max = np.zeros(len(keys), dtype=np.int64)
    np.maximum.at(iface_max, where.reshape(-1), np.concatenate(deepest))
    thin = iface_max <= np.minimum(seed_min[keys[:, 0]], seed_min[keys[:, 1]])
    for a, b in keys[thin]:  # union-find, smallest id as root
        ra, rb = _root(group, int(a)), _root(group, int(b))
        group[max(ra, rb)] = min(ra, rb)
    return np.array([_root(group, i) for i in range(n + 1)], dtype=np.int64)


def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def _to_global(local: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Flat indices in a crop at ``box`` -> flat indices in the volume of ``shape``."""
    crop_shape = tuple(sl.stop - sl.start for sl in box)
    coords = np.unravel_index(local, crop_shape)
    shifted = tuple(c + sl.start for c, sl in zip(coords, box, strict=True))
    return np.ravel_multi_index(shifted, shape).astype(np.int64)


def _split_component(
    comps: np.ndarray,
    comp: int,
    box: tuple[slice, ...],
    score: np.ndarray,
    contour: np.ndarray | None,
    s: _Settings,
    next_id: int,
    edges: np.ndarray | None = None,
    distance: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one mask component in place in ``comps``; seeds and flood from ``distance`` if
    given (BCD), else from ``score``.

    A single-seed component keeps its id ``comp``; a multi-seed one has its voxels rewritten to
    temporary ids ``next_id, next_id + 1, ...`` (above every component id), 0 for small instances.

    Returns:
        (ids, first voxels): the component or temporary ids of its instances and the global flat
        index of their seeds' first voxels, both int64 (n_instances,).
    """
    region = comps[box]
    inside = region == comp
    if np.count_nonzero(inside) < max(s.min_size, 1):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    crop_score = score[box] if distance is None else distance[box]
    crop_contour = None if contour is None else contour[box]
    crop_edges = None if edges is None else edges[box]
    seeds, first = _crop_seeds(inside, crop_score, crop_contour, s, crop_edges)
    first = _to_global(first, box, comps.shape)
    if first.size <= 1:
        return np.full(first.size, comp, dtype=np.int64), first
    height = flood_height(crop_score, seeds)
    flooded = watershed(height, seeds, mask=inside, connectivity=_RANK[s.connectivity])
    if s.merge_necks:
        at_border = [(sl.start == 0, sl.stop == n) for sl, n in zip(box, comps.shape, strict=True)]
        depth = neck_depth(inside, at_border, s.in_plane)
        group = merge_necks(flooded, seeds, depth, first.size)
        keep = np.unique(group[1:])  # each group's smallest region: its first seed voxel
        if keep.size < first.size:
            renumber = np.zeros(first.size + 1, dtype=np.int64)
            renumber[keep] = np.arange(1, keep.size + 1)
            flooded = renumber[group][flooded]
            first = first[keep - 1]
    values = flooded[inside]
    sizes = np.bincount(values, minlength=first.size + 1)[1:]
    big = np.flatnonzero(sizes >= s.min_size)
    ids = np.zeros(first.size + 1, dtype=np.uint32)
    ids[big + 1] = next_id + np.arange(big.size, dtype=np.uint32)
    region[inside] = ids[values]
    return ids[big + 1].astype(np.int64), first[big]


def _decode(
    score: np.ndarray,
    contour: np.ndarray | None,
    s: _Settings,
    edges: np.ndarray | None = None,
    region_edges: np.ndarray | None = None,
    distance: np.ndarray | None = None,
) -> np.ndarray:
    """Decode component by component. Components are those of the mask on the grid or, with
    ``region_edges`` (affinity decoders), of the graph of mask voxels joined by those edges.
    With ``distance`` (BCD) the seeds (distance > seed_threshold) and the flood (of -distance)
    come from it; the mask still comes from ``score``."""
    if region_edges is None:
        mask = np.ascontiguousarray(_above(score, s.mask_threshold))
        comps, n = cc3d.connected_components(
            mask, connectivity=s.connectivity, return_N=True, out_dtype=np.uint32
        )
    else:
        # A voxel joined to another by a strong edge is foreground, whatever its other edges:
        # an object's corner voxel has most of its edges to the background (perfect affinities
        # give it a mean of 0.5 or less), so a threshold on the mean lost the border.
        mask = region_edges != 0
        comps, n = _graph_components(mask, region_edges)
    del mask
    if n == 0:
        return comps
    ids, firsts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    next_id = n + 1
    for comp, box in enumerate(ndimage.find_objects(comps), start=1):
        if box is None or math.prod(sl.stop - sl.start for sl in box) < s.min_size:
            continue  # an instance never outgrows its component, nor the component its box
        comp_ids, first = _split_component(
            comps, comp, box, score, contour, s, next_id, edges, distance
        )
        next_id += int(np.count_nonzero(comp_ids > n))
        ids.append(comp_ids)
        firsts.append(first)
    if next_id > 2**32:
        raise ValueError(f"too many components and instances ({next_id}) for uint32 ids")
    keys, first = np.concatenate(ids), np.concatenate(firsts)
    lut = np.zeros(next_id, dtype=np.uint32)
    lut[keys[np.argsort(first)]] = np.arange(1, keys.size + 1, dtype=np.uint32)
    flat = comps.ravel(order="K")  # a view for C- or F-ordered output
    if np.shares_memory(flat, comps):
        fastremap.remap_from_array(flat, lut)  # in place: component/temporary id -> final id
    else:
        comps[...] = lut[comps]
    return comps


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
) -> np.ndarray:
    """Seeded watershed of an inside score, component by component (see the module docstring).

    Args:
        score: (Z, Y, X) uint8 in [0, 255] (probability x 255) or float in [0, 1]; high inside.
        contour: None, or (Z, Y, X) like ``score``; seeds also need contour < contour_threshold.
        seed_threshold, mask_threshold, contour_threshold: probabilities in [0, 1].
        min_seed_size: seeds with fewer voxels are dropped.
        min_size: instances with fewer voxels are removed.
        connectivity: 6, 18 or 26, for mask components, seeds and flooding alike.

    Returns:
        uint32 (Z, Y, X): 0 background, instances 1..N in C order of their seeds' first voxels.
        Peak memory beyond the inputs: about 5 bytes per voxel, plus about 40 per voxel of the
        largest multi-seed component's bounding box.
    """
    s = _Settings(
        seed_threshold, contour_threshold, mask_threshold, min_seed_size, min_size, connectivity
    )
    _check_settings(s)
    score = np.asarray(score)
    if score.ndim != 3:
        raise ValueError(f"score must be (Z, Y, X), got shape {score.shape}")
    _check_values(score, "score")
    if contour is not None:
        contour = np.asarray(contour)
        if contour.shape != score.shape:
            raise ValueError(f"contour shape {contour.shape} differs from score {score.shape}")
        _check_values(contour, "contour")
    return _decode(score, contour, s)
