"""The seeded watershed decoders (BC, BCD, A, AC) block by block (numpy, cc3d, skimage, zarr).

Everything but the flood is exact, by the blockwise labelling of :mod:`.labels` / :mod:`.graph`:

1. mask components and seeds are labelled per block and joined across faces into global objects
   (for A / AC as graphs; the seeds need ``seed_threshold >= mask_threshold`` there, so that a
   seed edge is a mask edge);
2. on the client: global seed sizes -> the ``min_seed_size`` filter; seeds per component: none
   -> background, one -> the whole component is that instance; components under ``min_size``
   -> background; instance ids 1..N in raster order of their seeds' first voxels;
3. each block writes single-seed components through a lookup table and floods the components
   with two or more seeds met in its write_roi (only those, each on its own box) within its
   read_roi (write_roi + halo), from the global seeds present there, with the whole-volume
   decoder's exact height and tie-break; it keeps the write_roi. Labels and the flood's score
   come from pass 1's scratch (per block, in small dtypes), not from the probabilities again;
4. instances under ``min_size`` are dropped and the rest renumbered; each block writes its
   output once, from its labels and the ids its flood kept in the scratch.

Where it can differ from the whole-volume decoder: inside multi-seed components that do not fit
in a block's read_roi, a voxel whose whole-volume flood path leaves the read_roi (a seed beyond
it, or a lower path around) may go to another seed; a piece of such a component cut off from
all its seeds within the read_roi goes to the component's seed with the nearest centroid. Such
changes can move an instance across ``min_size``. The foreground is exact up to that; with a
halo at least the extent of every multi-seed component the result is identical.
"""

from __future__ import annotations

import dataclasses
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
    LabelScratch,
    apply_lut,
    label_blocks,
    label_grid,
    stack_labels,
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
    score = _kept_score(data[decoder.seed_channel], mask)
    labels = stack_labels([comps, seeds], (n_comps, n_seeds))
    return BlockLabels(labels, (n_comps, n_seeds), values=score)


def _kept_score(score: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The flood's score as the scratch keeps it: uint8 as it is, float as its uint16 levels
    (:func:`mitoseg.decode.watershed.float_levels`; the flood's heights are the same), and 0
    off the mask, where no flood goes (so that it compresses like the labels)."""
    kept = score if score.dtype == np.uint8 else ws.float_levels(score)
    return np.where(mask, kept, kept.dtype.type(0))


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
    found = labels_of_graphs(block, context, [comp_graph, seed_graph])
    # The mean affinity needs one voxel around each voxel: the context holds two.
    score = affinity.affinity_inside(affs, offsets)[local_slices(block.write_roi, context)]
    return dataclasses.replace(found, values=_kept_score(score, found.labels[0] > 0))


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
    """What one flood task needs. The multi-seed components met in the block's write_roi are
    numbered 1..k here (*compact* ids, in order of their global index).

    Attributes:
        single: uint32 lookup table, local component id of the block -> single instance id.
        luts: per block overlapping ``region``, uint32 lookup tables of its local component ids
            (-> compact id, 0 for every other component) and local seed ids (-> instance id).
        seed_comp: int64 (s,) compact id of the component of each of its seeds;
            seed_id: uint32 (s,) their instance ids; seed_centroid: float64 (s, 3).
        region: the read_roi cut to the bounding box of the k components (all the flood
            reads); None when k = 0.
    """

    single: np.ndarray
    luts: dict[int, tuple[np.ndarray, np.ndarray]]
    seed_comp: np.ndarray
    seed_id: np.ndarray
    seed_centroid: np.ndarray
    region: Box | None = None


def _compact(lut: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Global component index + 1 in ``lut`` -> its 1-based place in sorted ``present``, 0 for
    components not there; in the smallest dtype that holds them all (one for every block)."""
    index = lut.astype(np.int64) - 1
    place = np.minimum(np.searchsorted(present, index), max(present.size - 1, 0))
    hit = (index >= 0) & (present[place] == index)
    return np.where(hit, place + 1, 0).astype(np.min_scalar_type(present.size))


def block_tables(labelling: Labelling, plan: Plan, grid: BlockGrid, block: Block) -> BlockTables:
    """The tables of ``block`` (built on the client, shipped with its task)."""
    comps, seeds = labelling.kinds
    off_c, off_s = labelling.offsets
    assert seeds.parent is not None
    single = comps.block_lut(off_c, block.id, plan.single)
    multi_lut = comps.block_lut(off_c, block.id, plan.multi)
    present = np.unique(multi_lut[multi_lut > 0]).astype(np.int64) - 1
    if not present.size:
        none = np.zeros(0, np.int64)
        return BlockTables(single, {}, none, none.astype(np.uint32), np.zeros((0, 3)))
    assert comps.boxes is not None and seeds.centroids is not None
    boxes = comps.boxes[present]
    lo, hi = boxes[:, :3].min(axis=0), boxes[:, 3:].max(axis=0)
    region = intersect(Box(tuple(lo), tuple(hi - lo)), block.read_roi)  # type: ignore[arg-type]
    assert region is not None
    luts = {
        other.id: (
            _compact(comps.block_lut(off_c, other.id, plan.multi), present),
            seeds.block_lut(off_s, other.id, plan.seed_ids),
        )
        for other in grid.blocks_in(region)
    }
    parents = plan.multi_parents
    first, last = np.searchsorted(parents, present), np.searchsorted(parents, present, "right")
    spans = [np.arange(a, b) for a, b in zip(first, last, strict=True)]
    rows = plan.multi_seeds[np.concatenate([np.zeros(0, np.int64), *spans])]
    seed_comp = np.searchsorted(present, seeds.parent[rows]) + 1
    return BlockTables(single, luts, seed_comp, plan.seed_ids[rows], seeds.centroids[rows], region)


# --------------------------------------------------------------------------- pass 3: flood


def _global(
    scratch: LabelScratch, box: Box, grid: BlockGrid, luts: dict[int, tuple[np.ndarray, ...]]
) -> tuple[np.ndarray, np.ndarray]:
    """(compact component ids, uint32 seed instance ids) over ``box``: each owning block's
    local labels through its lookup tables."""
    first = luts[grid.blocks_in(box)[0].id][0]
    comps, seeds = np.empty(box.shape, first.dtype), np.empty(box.shape, np.uint32)
    for owner in grid.blocks_in(box):  # their write_rois tile the box
        part = intersect(owner.write_roi, box)
        assert part is not None
        key = local_slices(part, box)
        local = scratch.read(owner, part, slice(0, 2))
        comp_lut, seed_lut = luts[owner.id]
        comps[key] = apply_lut(comp_lut, local[0])
        seeds[key] = apply_lut(seed_lut, local[1])
    return comps, seeds


_NO_STATS = (np.zeros((0, 2), np.int64), *(np.zeros(0, np.int64) for _ in range(3)))


def _neck_stats(
    flooded: np.ndarray, seeds: np.ndarray, depth: np.ndarray, inner: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the client's neck merge needs from one component's flood (on its box): the deepest
    voxel of each interface between two flooded ids (faces whose lower voxel is ``inner``: in
    the write_roi) and the shallowest voxel of each seed in the write_roi.

    Returns:
        int64 pairs (k, 2) (smaller id first), int64 (k,) depths, int64 seed ids (m,), (m,).
    """
    keys, deepest = [_NO_STATS[0]], [_NO_STATS[1]]
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


def _within(core: tuple[slice, ...], box: tuple[slice, ...]) -> tuple[slice, ...]:
    """The part of ``core`` inside ``box`` (slices of one array), as slices of ``box``."""
    out = []
    for c, b in zip(core, box, strict=True):
        start = min(max(c.start, b.start), b.stop) - b.start
        out.append(slice(start, max(min(c.stop, b.stop) - b.start, start)))
    return tuple(out)


def _flood(
    comps: np.ndarray,
    seeds: np.ndarray,
    score: np.ndarray,
    core: tuple[slice, ...],
    rank: int,
    in_plane: bool | None = None,
    at_edge: Any = ((True, True),) * 3,
) -> tuple[np.ndarray, list[tuple[np.ndarray, ...]]]:
    """Flood each component 1..k of ``comps`` on its own box; with ``in_plane`` not None also
    its :func:`_neck_stats` over ``core``, from its depth
    (:func:`mitoseg.decode.watershed.neck_depth`; a side on the array's edge counts as the
    volume's border where ``at_edge`` (per axis, low and high side) says the array ends at the
    read_roi's edge: a cut through a component is not its outside)."""
    out = np.zeros(comps.shape, np.uint32)
    stats = []
    for j, box in enumerate(ndimage.find_objects(comps), start=1):
        if box is None:
            continue
        inside = comps[box] == j
        markers = np.where(inside, seeds[box], np.uint32(0))
        height = ws.flood_height(score[box], markers)
        flooded = watershed(height, markers, mask=inside, connectivity=rank)
        out[box][inside] = flooded[inside]
        if in_plane is not None:
            edge = [
                (sl.start == 0 and low, sl.stop == n and high)
                for sl, n, (low, high) in zip(box, comps.shape, at_edge, strict=True)
            ]
            depth = ws.neck_depth(inside, edge, in_plane)
            inner = np.zeros(inside.shape, dtype=bool)
            inner[_within(core, box)] = True
            stats.append(_neck_stats(flooded, markers, depth, inner))
    return out, stats


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
    block: Block, grid: BlockGrid, scratch: LabelScratch, decoder: Any, tables: BlockTables
) -> tuple[np.ndarray, ...]:
    """Pass 3 of a block with multi-seed components: flood them and keep the flooded ids of its
    write_roi in the scratch (``flood``); return the ids of flooded instances in the block and
    their voxel counts (int64), then for a neck-merging decoder :func:`_neck_stats`.

    Only the multi-seed components met in the write_roi are read (on ``tables.region``) and
    flooded, each on its own box."""
    ids, counts = np.zeros(0, np.uint32), np.zeros(0, np.int64)
    stats = [_NO_STATS]
    out = np.zeros(block.write_roi.shape, np.uint32)
    region = tables.region
    if region is not None:
        part = intersect(block.write_roi, region)
        assert part is not None
        core = local_slices(part, region)
        comps, seeds = _global(scratch, region, grid, tables.luts)
        score = scratch.read_values(grid, region)  # foreground, distance or mean affinity
        in_plane = decoder._settings.in_plane if getattr(decoder, "merge_necks", False) else None
        at_edge = [
            (r0 == q0, r1 == q1)
            for r0, r1, q0, q1 in zip(
                region.offset, region.stop, block.read_roi.offset, block.read_roi.stop, strict=True
            )
        ]
        rank = _RANK[decoder.connectivity]
        whole, found = _flood(comps, seeds, score, core, rank, in_plane, at_edge)
        flooded = whole[core]
        _nearest_seed(flooded, comps[core], part.offset, tables)
        multi = comps[core] > 0
        out[local_slices(part, block.write_roi)][multi] = flooded[multi]
        counts = np.bincount(flooded[multi])  # ids up to the plan's: no sort of the voxels
        ids = np.flatnonzero(counts)
        counts = counts[ids]
        stats += found
    store.create_scratch(
        scratch.block_path(block.id, "flood"), out.shape, np.uint32, scratch.chunks
    )[...] = out
    merged = [np.concatenate(parts) for parts in zip(*stats, strict=True)]
    return (ids.astype(np.int64), counts.astype(np.int64), *merged)


def write_task(
    block: Block,
    scratch: LabelScratch,
    output: str,
    single: np.ndarray,
    flood_lut: np.ndarray | None,
) -> None:
    """Pass 4: the block's instance ids, written once: single-seed components through the
    ``single`` lookup table, and where the block was flooded its kept ids through
    ``flood_lut`` (None: as they are)."""
    out = apply_lut(single, scratch.read(block, block.write_roi, slice(0, 1))[0])
    flood_path = scratch.block_path(block.id, "flood")
    if Path(flood_path).exists():
        flooded = store.read(flood_path, Box((0, 0, 0), block.write_roi.shape))
        if flood_lut is not None:
            flooded = apply_lut(flood_lut, flooded)
        np.copyto(out, flooded, where=flooded > 0)
    store.write(output, block.write_roi, out)


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
    comps, offsets = labelling.kinds[0], labelling.offsets[0]
    multi = [b for b in grid if comps.block_lut(offsets, b.id, plan.multi).any()]
    found = run_blocks(
        client, "flood", flood_task, multi, grid, labelling.scratch, decoder,
        per_block=lambda b: (block_tables(labelling, plan, grid, b),),
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
    # merged ids take their group's new id (ids keep raster order: a group's is its smallest)
    lut = None if keep.all() else np.where(keep, np.cumsum(keep) - 1, 0).astype(np.uint32)[group]
    single = plan.single if lut is None else lut[plan.single]
    flooded_blocks = {b.id for b in multi}
    run_blocks(
        client, "write", write_task, list(grid), labelling.scratch, str(output),
        per_block=lambda b: (
            comps.block_lut(offsets, b.id, single), lut if b.id in flooded_blocks else None
        ),
        run_log=run_log, progress=progress,
    )  # fmt: skip
    return int(keep.sum()) - 1
