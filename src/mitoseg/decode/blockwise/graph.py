"""Components of nearest-neighbour edge graphs, block by block: the affinity decoders' mask
components and seeds (numpy, cc3d, zarr).

A graph is given by nodes (a bool map) and strong edges (uint8 bits in cc3d's 6-connected
convention, see :func:`mitoseg.decode.affinity.strong_edges`); kept are the edges between two
nodes,
and the nodes with at least one kept edge, as in the whole-volume ``_graph_components``. A block
reads two voxels of context so that every edge of its voxels, and whether both ends are nodes,
is known: a voxel whose only edges cross the block face still counts as a node. Across faces,
pieces join through the straight edge p -- p + e_a when it is kept (``faces.GRAPH``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cc3d
import numpy as np

from mitoseg import io
from mitoseg.decode import affinity
from mitoseg.decode.blockwise import store
from mitoseg.decode.blockwise.cluster import RunLog, pyramid_fill
from mitoseg.decode.blockwise.faces import GRAPH
from mitoseg.decode.blockwise.labels import (
    BlockLabels,
    label_blocks,
    stack_labels,
    write_raster_labels,
)
from mitoseg.geometry import Block, BlockGrid, block_grid, grow, local_slices
from mitoseg.train.targets import DEFAULT_OFFSETS, Offset, normalize_offsets

_BITS = ((1, 2), (4, 8), (16, 32))  # cc3d's bits per axis: (edge to +1, edge to -1)
_BYTES = np.arange(64, dtype=np.uint8)
_SWAP_ZX = ((_BYTES & 3) << 4) | (_BYTES & 12) | ((_BYTES >> 4) & 3)  # edge bits of the transpose
CONTEXT = (2, 2, 2)  # voxels a block reads around its write_roi to know its nodes and edges


def _axis_slices(axis: int, first: slice, ndim: int = 3) -> tuple[slice, ...]:
    key = [slice(None)] * ndim
    key[axis] = first
    return tuple(key)


def restrict_edges(edges: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """The edges whose both ends are nodes (and lie in the array).

    Args:
        edges: uint8 (Z, Y, X) edge bits.
        nodes: bool (Z, Y, X).

    Returns:
        uint8 (Z, Y, X) bits, zero off the nodes.
    """
    graph = np.where(nodes, edges, np.uint8(0))
    for axis, (plus, minus) in enumerate(_BITS):
        head, tail = _axis_slices(axis, slice(0, -1)), _axis_slices(axis, slice(1, None))
        graph[head] &= np.where(nodes[tail], np.uint8(255), np.uint8(255 - plus))
        graph[tail] &= np.where(nodes[head], np.uint8(255), np.uint8(255 - minus))
        graph[_axis_slices(axis, slice(-1, None))] &= np.uint8(255 - plus)
        graph[_axis_slices(axis, slice(0, 1))] &= np.uint8(255 - minus)
    return graph


def label_graph(graph: np.ndarray) -> tuple[np.ndarray, int]:
    """Components of a graph of kept edges; every voxel with an edge is a node, also when its
    edges leave the array (they join it to other blocks later).

    Args:
        graph: uint8 (Z, Y, X) symmetric edge bits, e.g. from :func:`restrict_edges` cropped.

    Returns:
        uint32 (Z, Y, X) labels 1..n in raster order of first voxels, and n.
    """
    nodes = graph != 0
    inner = graph.copy()
    for axis, (plus, minus) in enumerate(_BITS):
        inner[_axis_slices(axis, slice(-1, None))] &= np.uint8(255 - plus)
        inner[_axis_slices(axis, slice(0, 1))] &= np.uint8(255 - minus)
    # cc3d scans Fortran order: handed the transposed (X, Y, Z) view, with the z and x bits
    # swapped, it scans our C raster order, and its outputs transpose back to C order without
    # a copy (a C array came back Fortran-ordered: a copy per call, and labels numbered in
    # another order, whose first voxels took a sort).
    parts = cc3d.color_connectivity_graph(_SWAP_ZX[inner].T, connectivity=6).T
    parts[~nodes] = 0
    labels, n = cc3d.connected_components(
        parts.T, connectivity=6, return_N=True, out_dtype=np.uint32
    )
    return labels.T, int(n)


def crossing_bits(graphs: list[np.ndarray]) -> list[np.ndarray]:
    """Per axis, uint8 bit k where graphs[k] has the edge from the last layer to the next."""
    out = []
    for axis, (plus, _) in enumerate(_BITS):
        last = _axis_slices(axis, slice(-1, None))
        bits = np.zeros(graphs[0][last].shape, np.uint8)
        for kind, graph in enumerate(graphs):
            bits |= ((graph[last] & plus) > 0).astype(np.uint8) << kind
        out.append(bits)
    return out


def labels_of_graphs(block: Block, context: Any, graphs: list[np.ndarray]) -> BlockLabels:
    """Labels of kept-edge graphs computed on ``context`` (a Box around the block)."""
    core = local_slices(block.write_roi, context)
    cropped = [g[core] for g in graphs]
    labelled = [label_graph(g) for g in cropped]
    counts = tuple(n for _, n in labelled)
    labels = stack_labels([lab for lab, _ in labelled], counts)
    return BlockLabels(labels, counts, crossing_bits(cropped))


def affinity_graph_labels(
    block: Block, grid: BlockGrid, affs: str, threshold: float, offsets: tuple[Offset, ...]
) -> BlockLabels:
    """One kind: the affinity decoders' mask components of the block (the graph of edges >
    threshold; a voxel with such an edge is foreground)."""
    context = grow(block.write_roi, CONTEXT, grid.total_roi)
    data = store.read(affs, context, slice(0, len(offsets)))
    graph = affinity.strong_edges(data, threshold, offsets)
    return labels_of_graphs(block, context, [graph])


def affinity_components(
    affs: str | Path,
    output: str | Path,
    *,
    threshold: float = 0.5,
    offsets: tuple[Offset, ...] = DEFAULT_OFFSETS,
    block_shape: tuple[int, int, int] = (64, 512, 512),
    client: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> int:
    """The components the affinity decoders flood one by one, block by block, to ``output``.

    Args:
        affs: (len(offsets), Z, Y, X) zarr of uint8 or float affinities.
        output: uint32 (Z, Y, X) labels, chunked like ``affs``.
        threshold: edges and nodes above it count.

    Returns:
        The number of components. The labels equal the whole-volume
        ``mitoseg.decode.watershed._graph_components(strong_edges(affs, t) != 0,
        strong_edges(affs, t))``.
    """
    offsets = normalize_offsets(offsets)
    affs, output = str(Path(affs).absolute()), Path(output).absolute()
    shape, chunks = io.open_volume(affs).shape[1:], store.chunks_of(affs)
    grid = block_grid(shape, block_shape, chunks=chunks)
    run_log = RunLog()
    fill = pyramid_fill(client, grid.block_shape)
    with store.scratch_dir(output) as root, io.atomic_dir(output, overwrite, fill) as tmp:
        labelling = label_blocks(
            client, grid, root, chunks, GRAPH, affinity_graph_labels, affs, threshold, offsets,
            run_log=run_log, progress=progress,
        )  # fmt: skip
        attrs = {"axes": list(io.AXES), "kind": "labels"}
        io.create_volume(tmp, shape, np.uint32, chunks=chunks, attrs=attrs)
        write_raster_labels(client, grid, labelling, tmp, run_log, progress)
    return labelling.kinds[0].n
