"""The seeded watershed decoders (BC, BCD, A, AC) block by block (numpy, cc3d, skimage, zarr).

Everything but the flood is exact, by the blockwise labelling of :mod:`.labels` / :mod:`.graph`:

1. mask components and seeds are labelled per block and joined across faces into global objects
   (for A / AC as graphs; the seeds need ``seed_threshold >= mask_threshold`` there, so that a
   seed edge is a mask edge);
2. on the client: global seed sizes -> the ``min_seed_size`` filter; seeds per component: none
   -> background, one -> the whole component is that instance; components under ``min_size``
   -> background; instance ids 1..N in raster order of their seeds' first voxels;
3. each block writes single-seed components through a lookup table and floods the components
   with two or more seeds (only those) on its read_roi (write_roi + halo), from the global seeds
   present there, with the whole-volume decoder's exact height and tie-break; it keeps the
   write_roi;
4. instances under ``min_size`` are dropped and the rest renumbered (a relabel pass, only when
   some instance is dropped).

Where it can differ from the whole-volume decoder: inside multi-seed components that do not fit
in a block's read_roi, a voxel whose whole-volume flood path leaves the read_roi (a seed beyond
it, or a lower path around) may go to another seed; a piece of such a component cut off from
all its seeds within the read_roi goes to the component's seed with the nearest centroid. Such
changes can move an instance across ``min_size``. The foreground is exact up to that; with a
halo at least the extent of every multi-seed component the result is identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from mitoseg.decode import affinity
from mitoseg.decode import watershed as ws
from mitoseg.decode.blockwise import store
from mitoseg.decode.blockwise.cluster import RunLog, run_blocks
from mitoseg.decode.blockwise.graph import CONTEXT, labels_of_graphs, restrict_edges
from mitoseg.decode.blockwise.labels import (
    BlockLabels,
    Labelling,
    label_blocks,
    label_grid,
    remap_task,
)
from mitoseg.geometry import Block, BlockGrid, Box, grow, intersect, local_slices

_RANK = {6: 1, 18: 2, 26: 3}  # cc3d connectivity -> skimage connectivity


def check_decoder(decoder: Any) -> None:
    """Raise ValueError for settings the blockwise decoders do not reproduce."""
    if decoder.uses_affinities and decoder.seed_threshold < decoder.mask_threshold:
        raise ValueError(
            f"blockwise {type(decoder).__name__} needs seed_threshold >= mask_threshold (got "
            f"{decoder.seed_threshold} < {decoder.mask_threshold}): seed edges must be mask edges"
        )


# --------------------------------------------------------------------------- pass 1: labels


def bc_block_labels(block: Block, grid: BlockGrid, probs: str, decoder: Any) -> BlockLabels:
    """Kinds 0, 1: mask components and seeds of the BC or BCD decoder within the block."""
    n = decoder.n_channels
    data = ws.check_probs(store.read(probs, block.write_roi, slice(0, n)), n, f"({n}, Z, Y, X)")
    mask = ws._above(data[0], decoder.mask_threshold)
    seed_map = mask & ws._above(data[decoder.seed_channel], decoder.seed_threshold)
    if decoder.contour_cut is not None:
        seed_map &= ws._below(data[1], decoder.contour_cut)
    comps, n_comps = label_grid(mask, decoder.connectivity)
    seeds, n_seeds = label_grid(seed_map, decoder.connectivity)
    return BlockLabels(np.stack([comps, seeds]), (n_comps, n_seeds))


def affinity_block_labels(block: Block, grid: BlockGrid, probs: str, decoder: Any) -> BlockLabels:
    """Kinds 0, 1: mask components and seeds of the A / AC decoder (graphs) within the block."""
    context = grow(block.write_roi, CONTEXT, grid.total_roi)
    data = store.read(probs, context, slice(0, decoder.n_channels))
    ws.check_probs(data, decoder.n_channels, f"({decoder.n_channels}, Z, Y, X)")
    affs, offsets = data[: len(decoder.offsets)], decoder.offsets
    mask_edges = affinity.strong_edges(affs, decoder.mask_threshold, offsets)
    nodes = mask_edges != 0  # as the whole-volume decoder: a voxel with a strong edge
    comp_graph = restrict_edges(mask_edges, nodes)
    threshold = decoder.contour_cut
    if threshold is not None:
        nodes &= ws._below(data[-1], threshold)
    seed_graph = restrict_edges(affinity.strong_edges(affs, decoder.seed_threshold, offsets), nodes)
    return labels_of_graphs(block, context, [comp_graph, seed_graph])


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """Per component and seed object, what the blocks write (uint32 ids; 0 = none).

    Attributes:
        single: (n_comps,) instance id of each single-seed component.
        multi: (n_comps,) component index + 1 of each multi-seed component.
        seed_ids: (n_seeds,) instance id of each seed of a multi-seed component.
        n_ids: instance ids handed out (1..n_ids), before the min_size filter of floods.
        multi_seeds: int64 (n_multi_seeds,) the seeds of multi-seed components, sorted by
            component; multi_parents: int64 (n_multi_seeds,) their components.
    """

    single: np.ndarray
    multi: np.ndarray
    seed_ids: np.ndarray
    n_ids: int
    multi_seeds: np.ndarray
    multi_parents: np.ndarray


def plan_instances(labelling: Labelling, decoder: Any) -> Plan:
    """Step 2 of the module docstring, on the client."""
    comps, seeds = labelling.kinds
    assert seeds.parent is not None
    min_seed_size, min_size = decoder.sizes
    kept = seeds.sizes >= min_seed_size
    per_comp = np.bincount(seeds.parent[kept], minlength=comps.n)
    big = comps.sizes >= max(min_size, 1)
    candidate = kept & big[seeds.parent]
    chosen = np.flatnonzero(candidate)
    chosen = chosen[np.argsort(seeds.first[chosen], kind="stable")]
    ids = np.zeros(seeds.n, np.uint32)
    ids[chosen] = np.arange(1, chosen.size + 1, dtype=np.uint32)
    single = np.zeros(comps.n, np.uint32)
    alone = chosen[per_comp[seeds.parent[chosen]] == 1]
    single[seeds.parent[alone]] = ids[alone]
    is_multi = big & (per_comp >= 2)
    if comps.n >= 2**32:
        raise ValueError(f"{comps.n} mask components: too many for uint32 ids")
    multi = np.where(is_multi, np.arange(1, comps.n + 1), 0).astype(np.uint32)
    in_multi = candidate & is_multi[seeds.parent]
    seed_ids = np.where(in_multi, ids, 0).astype(np.uint32)
    multi_seeds = np.flatnonzero(in_multi)
    multi_seeds = multi_seeds[np.argsort(seeds.parent[multi_seeds], kind="stable")]
    parents = seeds.parent[multi_seeds]
    return Plan(single, multi, seed_ids, int(chosen.size), multi_seeds, parents)


@dataclass(frozen=True)
class BlockTables:
    """What one flood task needs: per block of its read_roi, uint32 lookup tables of local
    component ids (-> single instance id, -> multi component) and local seed ids (-> instance
    id); and the multi-seed components' seeds in the block: int64 component (k,), uint32
    instance id (k,), float64 centroid (k, 3)."""

    single: np.ndarray
    luts: dict[int, tuple[np.ndarray, np.ndarray]]
    seed_comp: np.ndarray
    seed_id: np.ndarray
    seed_centroid: np.ndarray


def block_tables(labelling: Labelling, plan: Plan, grid: BlockGrid, block: Block) -> BlockTables:
    """The tables of ``block`` (built on the client, shipped with its task)."""
    comps, seeds = labelling.kinds
    off_c, off_s = labelling.offsets
    multi_lut = comps.block_lut(off_c, block.id, plan.multi)
    luts = {}
    if multi_lut.any():
        for other in grid.blocks_in(block.read_roi):
            luts[other.id] = (
                comps.block_lut(off_c, other.id, plan.multi),
                seeds.block_lut(off_s, other.id, plan.seed_ids),
            )
    present = np.unique(multi_lut[multi_lut > 0]).astype(np.int64) - 1
    parents = plan.multi_parents
    lo, hi = np.searchsorted(parents, present), np.searchsorted(parents, present, side="right")
    spans = [np.arange(a, b) for a, b in zip(lo, hi, strict=True)]
    rows = plan.multi_seeds[np.concatenate([np.zeros(0, np.int64), *spans])]
    assert seeds.parent is not None
    return BlockTables(
        comps.block_lut(off_c, block.id, plan.single),
        luts,
        seeds.parent[rows] + 1,
        plan.seed_ids[rows],
        seeds.centroids[rows],
    )


# --------------------------------------------------------------------------- pass 3: flood


def _global(
    local: np.ndarray, box: Box, grid: BlockGrid, luts: dict[int, np.ndarray]
) -> np.ndarray:
    """uint32 ``luts[b][local]`` over ``box``, b the block owning each voxel."""
    out = np.zeros(local.shape, np.uint32)
    for owner in grid.blocks_in(box):
        part = intersect(owner.write_roi, box)
        assert part is not None
        key = local_slices(part, box)
        out[key] = luts[owner.id][local[key]]
    return out


def _flood_score(probs: str, box: Box, grid: BlockGrid, decoder: Any) -> np.ndarray:
    """The height's score over ``box``: foreground (BC), distance (BCD) or the mean affinity
    (A, AC)."""
    if not decoder.uses_affinities:
        channel = decoder.seed_channel
        return store.read(probs, box, slice(channel, channel + 1))[0]
    context = grow(box, (1, 1, 1), grid.total_roi)
    affs = store.read(probs, context, slice(0, len(decoder.offsets)))
    return affinity.affinity_inside(affs, decoder.offsets)[local_slices(box, context)]


def _neck_stats(
    flooded: np.ndarray, seeds: np.ndarray, depth: np.ndarray, core: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the client's neck merge needs from one block, over its write_roi ``core``: the
    deepest voxel of each interface between two flooded ids (faces whose lower voxel lies in
    the core) and the shallowest voxel of each seed in the core.

    Returns:
        int64 pairs (k, 2) (smaller id first), int64 (k,) depths, int64 seed ids (m,), (m,).
    """
    inner = np.zeros(flooded.shape, dtype=bool)
    inner[core] = True
    keys, deepest = [np.zeros((0, 2), np.int64)], [np.zeros(0, np.int64)]
    for axis in range(3):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        a, b = flooded[tuple(lo)], flooded[tuple(hi)]
        face = (a != b) & (a > 0) & (b > 0) & inner[tuple(lo)]
        fa, fb = a[face].astype(np.int64), b[face].astype(np.int64)
        keys.append(np.stack([np.minimum(fa, fb), np.maximum(fa, fb)], axis=1))
        deepest.append(np.maximum(depth[tuple(lo)][face], depth[tuple(hi)][face]).astype(np.int64))
    on_seed = (seeds > 0) & inner
    return (
        np.concatenate(keys),
        np.concatenate(deepest),
        seeds[on_seed].astype(np.int64),
        depth[on_seed].astype(np.int64),
    )


def merge_groups(found: list[Any], n_ids: int) -> np.ndarray:
    """The client's neck merge (:func:`mitoseg.decode.watershed.merge_necks`) from every
    block's :func:`_neck_stats`: int64 (n_ids + 1,) the smallest id joined with each id."""
    seed_min = np.full(n_ids + 1, np.iinfo(np.int64).max, dtype=np.int64)
    pairs, depths = [np.zeros((0, 2), np.int64)], [np.zeros(0, np.int64)]
    for *_, keys, deepest, seed_ids, seed_depth in found:
        np.minimum.at(seed_min, seed_ids, seed_depth)
        pairs.append(keys)
        depths.append(deepest)
    group = np.arange(n_ids + 1, dtype=np.int64)
    all_pairs = np.concatenate(pairs)
    if not all_pairs.size:
        return group
    keys, where = np.unique(all_pairs, axis=0, return_inverse=True)
    iface_max = np.zeros(len(keys), dtype=np.int64)
    np.maximum.at(iface_max, where.reshape(-1), np.concatenate(depths))
    thin = iface_max <= np.minimum(seed_min[keys[:, 0]], seed_min[keys[:, 1]])
    for a, b in keys[thin]:
        ra, rb = ws._root(group, int(a)), ws._root(group, int(b))
        group[max(ra, rb)] = min(ra, rb)
    return np.array([ws._root(group, i) for i in range(n_ids + 1)], dtype=np.int64)


def _flood(
    comps: np.ndarray,
    seeds: np.ndarray,
    score: np.ndarray,
    core: Any,
    rank: int,
    in_plane: bool | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Flood each multi-seed component met in ``core`` on its box within the read_roi; with
    ``in_plane`` not None also the components' depth (:func:`mitoseg.decode.watershed.neck_depth`,
    a side on the read_roi's edge counting as the volume's border: a cut through a component
    is not its outside)."""
    wanted = np.unique(comps[core])
    wanted = wanted[wanted > 0]
    # A lookup table over the global ids (as many as the client's plan holds): one uint32
    # gather, where a searchsorted took several int64 passes over the read_roi (>10x slower).
    lut = np.zeros(int(comps.max()) + 1, np.uint32)
    lut[wanted] = np.arange(1, wanted.size + 1, dtype=np.uint32)
    compact = lut[comps]
    out = np.zeros(comps.shape, np.uint32)
    depth = None if in_plane is None else np.zeros(comps.shape, np.int32)
    for j, box in enumerate(ndimage.find_objects(compact), start=1):
        inside = compact[box] == j
        markers = np.where(inside, seeds[box], np.uint32(0))
        height = ws.flood_height(score[box], markers)
        flooded = watershed(height, markers, mask=inside, connectivity=rank)
        out[box][inside] = flooded[inside]
        if depth is not None:
            edge = [(sl.start == 0, sl.stop == n) for sl, n in zip(box, comps.shape, strict=True)]
            depth[box][inside] = ws.neck_depth(inside, edge, bool(in_plane))[inside]
    return out, depth


def _nearest_seed(
    out: np.ndarray, comps: np.ndarray, origin: tuple[int, ...], tables: BlockTables
) -> None:
    """Give voxels of multi-seed components left unflooded the nearest-centroid seed's id."""
    lost = (comps > 0) & (out == 0)
    if not lost.any():
        return
    coords = np.argwhere(lost) + np.asarray(origin)
    owners = comps[lost].astype(np.int64)
    ids = np.zeros(owners.size, np.uint32)
    for comp in np.unique(owners):
        rows = np.flatnonzero(tables.seed_comp == comp)
        sel = owners == comp
        d = ((coords[sel, None, :] - tables.seed_centroid[None, rows, :]) ** 2).sum(axis=2)
        ids[sel] = tables.seed_id[rows[np.argmin(d, axis=1)]]
    out[lost] = ids


def flood_task(
    block: Block,
    grid: BlockGrid,
    probs: str,
    labels: str,
    output: str,
    decoder: Any,
    tables: BlockTables,
) -> tuple[np.ndarray, ...]:
    """Pass 3: write the block's instance ids; return the ids of flooded instances in the block
    and their voxel counts (int64), then for a neck-merging decoder :func:`_neck_stats`."""
    ids, counts = np.zeros(0, np.uint32), np.zeros(0, np.int64)
    empty = (np.zeros((0, 2), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    stats: tuple[np.ndarray, ...] = (*empty, np.zeros(0, np.int64))
    if not tables.luts:  # no multi-seed component: a lookup
        out = tables.single[store.read(labels, block.write_roi, slice(0, 1))[0]]
    else:
        region, core = block.read_roi, local_slices(block.write_roi, block.read_roi)
        raw = store.read(labels, region, slice(0, 2))
        out = tables.single[raw[0][core]]
        comps = _global(raw[0], region, grid, {b: t[0] for b, t in tables.luts.items()})
        seeds = _global(raw[1], region, grid, {b: t[1] for b, t in tables.luts.items()})
        del raw  # the task's peak is in the flood: two uint32 read_rois fewer there
        score = _flood_score(probs, region, grid, decoder)
        in_plane = decoder._settings.in_plane if getattr(decoder, "merge_necks", False) else None
        whole, depth = _flood(comps, seeds, score, core, _RANK[decoder.connectivity], in_plane)
        flooded = whole[core]
        _nearest_seed(flooded, comps[core], block.write_roi.offset, tables)
        multi = comps[core] > 0
        out[multi] = flooded[multi]
        ids, counts = np.unique(flooded[multi], return_counts=True)
        if depth is not None:
            whole[core] = np.where(multi, flooded, whole[core])
            stats = _neck_stats(whole, seeds, depth, core)
    store.write(output, block.write_roi, out)
    return (ids.astype(np.int64), counts.astype(np.int64), *stats)


# --------------------------------------------------------------------------- driver


def decode_instances(
    decoder: Any,
    probs: str,
    output: Path,
    grid: BlockGrid,
    scratch: Path,
    chunks: tuple[int, ...],
    client: Any = None,
    run_log: RunLog | None = None,
    progress: bool = True,
) -> int:
    """Decode ``probs`` block by block into the existing uint32 volume ``output``.

    Args:
        decoder: a BCWatershed, BCDWatershed, AffinityWatershed or ACWatershed.
        probs: path of the (C, Z, Y, X) probabilities.
        grid: blocks over (Z, Y, X), with the flood's halo.
        scratch: an empty directory for intermediate arrays.
        chunks: chunk shape of the scratch arrays (divides the block shape).

    Returns:
        The number of instances.
    """
    check_decoder(decoder)
    label_fn = affinity_block_labels if decoder.uses_affinities else bc_block_labels
    connectivity = 0 if decoder.uses_affinities else decoder.connectivity
    labelling = label_blocks(
        client, grid, scratch, chunks, connectivity, label_fn, probs, decoder,
        kinds=2, run_log=run_log, progress=progress,
    )  # fmt: skip
    plan = plan_instances(labelling, decoder)
    found = run_blocks(
        client, "flood", flood_task, list(grid), grid, probs, labelling.scratch.labels,
        str(output), decoder, per_block=lambda b: (block_tables(labelling, plan, grid, b),),
        run_log=run_log, progress=progress,
    )  # fmt: skip
    group = np.arange(plan.n_ids + 1, dtype=np.int64)
    if getattr(decoder, "merge_necks", False):
        group = merge_groups(found, plan.n_ids)  # regions split by a neck: one instance
    sizes = np.zeros(plan.n_ids + 1, np.int64)
    for ids, counts, *_ in found:
        np.add.at(sizes, group[ids], counts)
    flooded = np.zeros(plan.n_ids + 1, bool)
    flooded[plan.seed_ids[plan.seed_ids > 0]] = True
    keep = (~flooded | (sizes >= decoder.sizes[1])) & (group == np.arange(plan.n_ids + 1))
    keep[0] = True
    if keep.all():
        return plan.n_ids
    # merged ids take their group's new id (ids keep raster order: a group's is its smallest)
    lut = np.where(keep, np.cumsum(keep) - 1, 0).astype(np.uint32)[group]
    run_blocks(
        client, "drop small", remap_task, list(grid), str(output), None, str(output), lut,
        run_log=run_log, progress=progress,
    )  # fmt: skip
    return int(keep.sum()) - 1
