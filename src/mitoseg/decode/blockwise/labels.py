"""Exact connected components block by block (numpy, cc3d, fastremap, scipy, zarr; no torch).

Three steps, each a pass of block tasks with small results:

1. **label**: each block labels its write_roi alone (K label kinds at once, e.g. the decoders'
   mask components and seeds), writes the local ids (1..n per block and kind) to its own scratch
   array, in the smallest dtype that holds them (mostly uint8), and its first / last layers to
   face arrays (:mod:`.faces`), and returns per piece (a component within one block) its size
   and first voxel (global raster index); kind 0's pieces also their bounding box (where the
   decoders' floods read), the other kinds' their centroid sum (the decoders' nearest-seed rule);
2. **join**: pairs of pieces touching across block faces, then union-find on the client
   (``scipy.sparse.csgraph.connected_components`` of the pair graph): an object is a set of
   pieces. Its first voxel is the smallest first voxel of its pieces, since a block's raster
   order is the volume's raster order restricted to the block;
3. **relabel**: each block maps its local ids through a lookup table to global ids.

Numbering objects by their first voxel gives cc3d's own numbering, so the result equals
``cc3d.connected_components`` of the whole volume exactly. Peak memory of a task is a few
arrays of its block; the client holds a few numbers per piece and per touching pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cc3d
import fastremap
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as _graph_cc

from mitoseg import io
from mitoseg.decode import watershed as ws
from mitoseg.decode.blockwise import store
from mitoseg.decode.blockwise.cluster import RunLog, pyramid_fill, run_blocks
from mitoseg.decode.blockwise.faces import (
    FaceStore,
    create_faces,
    face_pairs,
    in_plane_steps,
    write_faces,
)
from mitoseg.geometry import Block, BlockGrid, Box, block_grid, intersect, local_slices


@dataclass(frozen=True)
class BlockLabels:
    """What a labelling function returns for one block.

    Attributes:
        labels: unsigned (K, *write_roi.shape) (:func:`stack_labels`); kind k numbered
            1..counts[k], 0 background; a piece of kind k >= 1 lies inside one piece of kind 0.
        counts: pieces of each kind.
        crossing: for graph labels, per axis the uint8 bits of the edges leaving the last
            layer (see :func:`.faces.write_faces`); None for grid labels.
        values: None, or (*write_roi.shape) values kept beside the labels for a later pass
            (the decoders' flood score: read there from this scratch, uncompressed by the
            probabilities' codec and without their chunks around the read_roi).
    """

    labels: np.ndarray
    counts: tuple[int, ...]
    crossing: list[np.ndarray] | None = None
    values: np.ndarray | None = None


@dataclass(frozen=True)
class Pieces:
    """The pieces of one kind in one block: int64 sizes (n,), int64 first voxels (n,) as global
    raster indices, uint32 local kind-0 parent (n,), and (None where the kind does not keep them,
    see the module docstring) float64 coordinate sums (n, 3), int64 bounding boxes (n, 6) as
    global (z0, y0, x0, z1, y1, x1)."""

    sizes: np.ndarray
    first: np.ndarray
    coord_sums: np.ndarray | None
    parent: np.ndarray
    boxes: np.ndarray | None


@dataclass(frozen=True)
class LabelScratch:
    """Where a labelling's scratch arrays are: one folder of per-block local labels (K, *the
    block's write_roi shape), each in its own smallest dtype and chunked by ``chunks``, and the
    face arrays."""

    labels: str
    faces: FaceStore
    chunks: tuple[int, ...]

    def block_path(self, block_id: int, part: str = "labels") -> str:
        """The scratch array of a block: its ``labels``, its ``values`` or what a later pass
        keeps there (e.g. ``flood``)."""
        return str(Path(self.labels).parent / part / str(block_id))

    def read(self, block: Block, box: Box, kinds: slice | None = None) -> np.ndarray:
        """Local labels (K', *box.shape) of ``box`` (inside ``block.write_roi``)."""
        local = box.shift(tuple(-o for o in block.write_roi.offset))
        return store.read(self.block_path(block.id), local, kinds or slice(None))

    def read_values(self, grid: BlockGrid, box: Box) -> np.ndarray:
        """The blocks' kept values (:attr:`BlockLabels.values`) over ``box``, any blocks."""
        out: np.ndarray | None = None
        for owner in grid.blocks_in(box):
            part = intersect(owner.write_roi, box)
            assert part is not None
            local = part.shift(tuple(-o for o in owner.write_roi.offset))
            values = store.read(self.block_path(owner.id, "values"), local)
            if out is None:
                out = np.empty(box.shape, values.dtype)
            out[local_slices(part, box)] = values
        assert out is not None
        return out


@dataclass(frozen=True)
class Objects:
    """The objects of one kind after joining: ``root`` maps each global piece id (block offset +
    local id - 1) to an object 0..n-1; per object int64 ``sizes``, ``first`` voxel and, where the
    pieces kept them (else None), float64 ``centroids`` (n, 3) and int64 bounding ``boxes``
    (n, 6) as (z0, y0, x0, z1, y1, x1); (kinds >= 1) the kind-0 ``parent`` object."""

    root: np.ndarray
    n: int
    sizes: np.ndarray
    first: np.ndarray
    centroids: np.ndarray | None
    boxes: np.ndarray | None
    parent: np.ndarray | None

    def block_lut(self, offsets: np.ndarray, block_id: int, values: np.ndarray) -> np.ndarray:
        """uint32 (n_b + 1,): local id of block ``block_id`` -> ``values[object]``, 0 -> 0."""
        pieces = self.root[offsets[block_id] : offsets[block_id + 1]]
        return np.concatenate([[0], values[pieces]]).astype(np.uint32)


@dataclass(frozen=True)
class Labelling:
    """Joined labels of every kind; ``offsets`` int64 (K, n_blocks + 1) per kind."""

    scratch: LabelScratch
    offsets: np.ndarray
    kinds: list[Objects]


LabelFn = Callable[..., BlockLabels]


def label_grid(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """cc3d components of a bool (Z, Y, X) mask: uint32 labels 1..n in raster order, and n."""
    if sorted(mask.shape)[1] == 1:
        connectivity = 6  # a line: all the same, and cc3d 3.x fails on (1, 1, 3) at 26
    labels, n = cc3d.connected_components(
        mask, connectivity=connectivity, return_N=True, out_dtype=np.uint32
    )
    return labels, int(n)


def stack_labels(labels: Sequence[np.ndarray], counts: Sequence[int]) -> np.ndarray:
    """(K, Z, Y, X) of K label arrays numbered up to ``counts``, in the smallest unsigned dtype
    that holds them (a block's pieces mostly fit uint8: a quarter of the uint32 stack's bytes
    for every later pass)."""
    out = np.empty((len(labels), *labels[0].shape), np.min_scalar_type(max(counts, default=0)))
    for k, part in enumerate(labels):
        out[k] = part
    return out


def grid_labels(block: Block, grid: BlockGrid, source: str, connectivity: int) -> BlockLabels:
    """One kind: components of ``source != 0`` within the block (cc3d)."""
    labels, n = label_grid(store.read(source, block.write_roi) != 0, connectivity)
    return BlockLabels(stack_labels([labels], [n]), (n,))


def piece_stats(
    ids: np.ndarray,
    where: np.ndarray,
    n: int,
    shape: Sequence[int],
    *,
    sums: bool = True,
    boxes: bool = True,
) -> tuple:
    """Statistics of labels 1..n from their non-zero voxels alone: ``ids`` the labels at the
    flat indices ``where`` (increasing) of an array of ``shape``.

    Returns:
        int64 sizes (n,), int64 first voxels (n,) as flat indices, float64 coordinate sums
        (n, 3) (None without ``sums``), int64 bounding boxes (n, 6) as (z0, y0, x0, z1, y1, x1)
        (None without ``boxes``). (cc3d.statistics passes over every voxel, background
        included: 3x the time on mitochondria.)
    """
    sizes = np.bincount(ids, minlength=n + 1)[1:].astype(np.int64)
    first = ws.first_voxels(ids, where, n).astype(np.int64) if n else np.zeros(0, np.int64)
    if not (sums or boxes):
        return sizes, first, None, None
    coords = np.unravel_index(where, tuple(shape))
    coord_sums = np.zeros((n, 3)) if sums else None
    bounds = np.zeros((n, 6), np.int64) if boxes else None
    for axis, coord in enumerate(coords):
        if coord_sums is not None:
            coord_sums[:, axis] = np.bincount(ids, weights=coord, minlength=n + 1)[1:]
        if bounds is None:
            continue
        high = np.zeros(n + 1, np.int64)
        np.maximum.at(high, ids, coord)
        bounds[:, axis + 3] = high[1:] + 1
        if axis == 0:  # ``where`` increases: a label's lowest plane is its first voxel's
            bounds[:, 0] = first // int(np.prod(shape[1:]))
            continue
        low = np.full(n + 1, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(low, ids, coord)
        bounds[:, axis] = low[1:]
    return sizes, first, coord_sums, bounds


def _pieces(
    ids: np.ndarray, where: np.ndarray, n: int, block: Block, grid: BlockGrid, parents: Any
) -> Pieces:
    """The pieces of one kind of a block from its non-zero voxels (:func:`piece_stats`);
    ``parents``: the flat kind-0 labels, or None for kind 0 (which keeps bounding boxes; the
    other kinds keep coordinate sums)."""
    shape = block.write_roi.shape
    kind0 = parents is None
    sizes, local, sums, boxes = piece_stats(ids, where, n, shape, sums=not kind0, boxes=kind0)
    origin = np.asarray(block.write_roi.offset, np.int64)
    coords = np.unravel_index(local, shape)
    shifted = tuple(c + o for c, o in zip(coords, origin, strict=True))
    first = np.ravel_multi_index(shifted, grid.total_roi.shape).astype(np.int64)
    if sums is not None:
        sums += origin * sizes[:, None]
    if boxes is not None:
        boxes += np.tile(origin, 2)
    parent = np.zeros(n, np.uint32) if parents is None else parents[local]
    return Pieces(sizes, first, sums, parent.astype(np.uint32), boxes)


def create_scratch(root: Path, grid: BlockGrid, kinds: int, chunks: Sequence[int]) -> LabelScratch:
    """An empty scratch folder under ``root`` for a labelling of ``kinds`` kinds."""
    labels = root / "labels"
    labels.mkdir(parents=True)
    (root / "values").mkdir()
    faces = create_faces(root / "faces", grid, kinds)
    return LabelScratch(str(labels), faces, tuple(int(c) for c in chunks))


def label_task(
    block: Block, grid: BlockGrid, scratch: LabelScratch, label_fn: LabelFn, *args: Any
) -> list[Pieces]:
    """Pass 1: label one block, store its labels and faces, summarise its pieces."""
    result = label_fn(block, grid, *args)
    store.save_scratch(scratch.block_path(block.id), result.labels, (1, *scratch.chunks))
    if result.values is not None:
        path, values = scratch.block_path(block.id, "values"), result.values
        store.create_scratch(path, values.shape, values.dtype, scratch.chunks)[...] = values
    write_faces(scratch.faces, grid, block, result.labels, result.crossing)
    flat = result.labels.reshape(len(result.counts), -1)
    # every kind lies inside kind 0: one scan of the block (of a bool array: numpy finds the
    # non-zero voxels of a uint8 one 8x slower)
    at = np.flatnonzero(flat[0] != 0)
    pieces = [_pieces(flat[0, at], at, result.counts[0], block, grid, None)]
    for k in range(1, len(result.counts)):
        ids = flat[k, at]
        inside = ids != 0
        if np.count_nonzero(inside) != np.count_nonzero(flat[k]):
            raise ValueError(f"block {block.index}: labels of kinds >= 1 must lie inside kind 0")
        pieces.append(_pieces(ids[inside], at[inside], result.counts[k], block, grid, flat[0]))
    return pieces


def join_pieces(n_pieces: int, pairs: np.ndarray) -> tuple[np.ndarray, int]:
    """Union-find over pieces: (int64 object of each piece, number of objects)."""
    if n_pieces == 0:
        return np.zeros(0, np.int64), 0
    ones = np.ones(len(pairs), dtype=np.int8)
    graph = coo_matrix((ones, (pairs[:, 0], pairs[:, 1])), shape=(n_pieces, n_pieces))
    n, root = _graph_cc(graph.tocsr(), directed=False)
    return root.astype(np.int64), int(n)


def _objects(pieces: list[Pieces], pairs: np.ndarray, parent_root: Any) -> Objects:
    """Join one kind's pieces of every block (``parent_root``: kind-0 object per global piece,
    with the kind-0 offsets applied by the caller)."""
    root, n = join_pieces(sum(p.sizes.size for p in pieces), pairs)
    none = np.zeros(0, np.int64)
    sizes = np.concatenate([none, *(p.sizes for p in pieces)])
    first = np.concatenate([none, *(p.first for p in pieces)])
    total = np.bincount(root, weights=sizes, minlength=n).astype(np.int64)
    object_first = np.full(n, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(object_first, root, first)
    centroids = object_boxes = None
    all_sums = [p.coord_sums for p in pieces if p.coord_sums is not None]
    if len(all_sums) == len(pieces):
        sums = np.concatenate([np.zeros((0, 3)), *all_sums])
        centroids = np.stack([np.bincount(root, sums[:, i], n) for i in range(3)], axis=1)
        centroids = centroids / np.maximum(total, 1)[:, None]
    all_boxes = [p.boxes for p in pieces if p.boxes is not None]
    if len(all_boxes) == len(pieces):
        boxes = np.concatenate([np.zeros((0, 6), np.int64), *all_boxes])
        object_boxes = np.zeros((n, 6), np.int64)
        object_boxes[:, :3] = np.iinfo(np.int64).max
        np.minimum.at(object_boxes[:, :3], root, boxes[:, :3])
        np.maximum.at(object_boxes[:, 3:], root, boxes[:, 3:])
    parent = None
    if parent_root is not None:
        parent = np.zeros(n, np.int64)
        parent[root] = parent_root
    return Objects(root, n, total, object_first, centroids, object_boxes, parent)


def label_blocks(
    client: Any,
    grid: BlockGrid,
    root: Path,
    chunks: Sequence[int],
    connectivity: int,
    label_fn: LabelFn,
    *args: Any,
    kinds: int = 1,
    run_log: RunLog | None = None,
    progress: bool = True,
) -> Labelling:
    """Passes 1 and 2 and the join: global objects of every kind (see the module docstring).

    Args:
        connectivity: 6, 18 or 26 (grid labels) or ``faces.GRAPH`` (graph labels).
        label_fn: module-level ``label_fn(block, grid, *args) -> BlockLabels``.
    """
    in_plane_steps(connectivity)  # validates
    scratch = create_scratch(root, grid, kinds, chunks)
    blocks = list(grid)
    summaries = run_blocks(
        client, "label", label_task, blocks, grid, scratch, label_fn, *args,
        run_log=run_log, progress=progress,
    )  # fmt: skip
    counts = np.array([[s[k].sizes.size for s in summaries] for k in range(kinds)], np.int64)
    offsets = np.zeros((kinds, len(blocks) + 1), np.int64)
    offsets[:, 1:] = np.cumsum(counts, axis=1)
    found = run_blocks(
        client, "join", face_pairs, blocks, grid, scratch.faces, offsets[:, :-1], connectivity,
        run_log=run_log, progress=progress,
    )  # fmt: skip
    objects: list[Objects] = []
    for k in range(kinds):
        pairs = np.concatenate([np.zeros((0, 2), np.int64), *(f[k] for f in found)])
        parent_root = None
        if k > 0:
            parents = [offsets[0, b] + s[k].parent - 1 for b, s in enumerate(summaries)]
            parent_root = objects[0].root[np.concatenate([np.zeros(0, np.int64), *parents])]
        objects.append(_objects([s[k] for s in summaries], pairs, parent_root))
    return Labelling(scratch, offsets, objects)


def apply_lut(lut: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``lut[ids]`` (unsigned ``ids``, all below ``lut.size``) in ``lut``'s dtype: fastremap on a
    copy of ``ids``, about half the time of numpy's gather on a block of labels."""
    if ids.size and int(ids.max()) >= lut.size:
        raise IndexError(f"label {int(ids.max())} beyond a lookup table of {lut.size}")
    work = np.promote_types(lut.dtype, ids.dtype)
    out = np.array(ids, dtype=work, order="C")
    fastremap.remap_from_array(out.reshape(-1), lut.astype(work, copy=False))
    return out if work == lut.dtype else out.astype(lut.dtype)


def relabel_task(block: Block, scratch: LabelScratch, output: str, lut: np.ndarray) -> None:
    """Write ``lut[kind-0 local labels of the block]`` to ``output``."""
    local = scratch.read(block, block.write_roi, slice(0, 1))[0]
    store.write(output, block.write_roi, apply_lut(lut, local))


def raster_ids(objects: Objects) -> np.ndarray:
    """uint32 (n,): id 1..n of each object in raster order of its first voxel."""
    ids = np.zeros(objects.n, np.uint32)
    ids[np.argsort(objects.first, kind="stable")] = np.arange(1, objects.n + 1, dtype=np.uint32)
    return ids


def connected_components(
    source: str | Path,
    output: str | Path,
    *,
    connectivity: int = 26,
    block_shape: Sequence[int] = (64, 512, 512),
    client: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> int:
    """Connected components of ``source != 0``, block by block, written to ``output``.

    Args:
        source: a (Z, Y, X) zarr volume of any dtype; non-zero is foreground.
        output: the uint32 label volume to write (atomically), chunked like ``source``.
        connectivity: 6, 18 or 26.
        block_shape: voxels per block, rounded up to a multiple of the chunks.
        client: a ``distributed.Client`` (see :func:`.cluster.dask_client`) or None.

    Returns:
        The number of components. The labels equal ``cc3d.connected_components(source != 0,
        connectivity)`` exactly: 1..N in raster order of each component's first voxel.
    """
    source, output = str(Path(source).absolute()), Path(output).absolute()
    shape, chunks = io.open_volume(source).shape, store.chunks_of(source)
    grid = block_grid(shape, block_shape, chunks=chunks)
    run_log = RunLog()
    fill = pyramid_fill(client, grid.block_shape)
    with store.scratch_dir(output) as root, io.atomic_dir(output, overwrite, fill) as tmp:
        labelling = label_blocks(
            client, grid, root, chunks, connectivity, grid_labels, source, connectivity,
            run_log=run_log, progress=progress,
        )  # fmt: skip
        attrs = {"axes": list(io.AXES), "kind": "labels", "connectivity": connectivity}
        io.create_volume(tmp, shape, np.uint32, chunks=chunks, attrs=attrs)
        write_raster_labels(client, grid, labelling, tmp, run_log, progress)
    return labelling.kinds[0].n


def write_raster_labels(
    client: Any,
    grid: BlockGrid,
    labelling: Labelling,
    output: Path,
    run_log: RunLog | None = None,
    progress: bool = True,
) -> None:
    """Pass 3: write kind 0 of ``labelling`` to the existing uint32 volume ``output``, objects
    numbered 1..n in raster order of their first voxels."""
    objects, offsets = labelling.kinds[0], labelling.offsets[0]
    ids = raster_ids(objects)
    run_blocks(
        client, "relabel", relabel_task, list(grid), labelling.scratch, str(output),
        per_block=lambda b: (objects.block_lut(offsets, b.id, ids),),
        run_log=run_log, progress=progress,
    )  # fmt: skip
