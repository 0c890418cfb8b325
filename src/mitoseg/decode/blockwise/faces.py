"""Labels on block faces and the pairs of labels that touch across them (numpy, zarr).

Every block writes the first and the last layer of its labels along each axis into small face
arrays (one plane per block boundary), so that joining blocks reads planes, not blocks. For the
boundary above block b along axis a, ``lower`` holds b's last layer and ``upper`` the first layer
of the blocks above. A voxel p of the lower layer touches q = p + e_a + (in-plane step) of the
upper layer for every step the connectivity allows (6: none; 18: one axis; 26: both, i.e. edge
and corner neighbours in the diagonal blocks). Every adjacent pair of voxels in two different
blocks is such a (p, q) for some boundary: pick an axis along which their blocks differ. For
graphs (affinity decoders) only q = p + e_a counts, and only where the crossing edge is strong:
``cross`` holds one bit per label kind for that edge.

Label ids are made global with per-block offsets: piece ``offset[b] + local - 1`` for local id
``local`` >= 1 of block b.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mitoseg.decode.blockwise import store
from mitoseg.geometry import Block, BlockGrid, Box, intersect, local_slices

GRAPH = 0  # "connectivity" of graph labels: only the straight neighbour, through strong edges


def in_plane_steps(connectivity: int) -> list[tuple[int, int]]:
    """In-plane steps (d1, d2) from p + e_a to the neighbours of p across a face."""
    if connectivity in (GRAPH, 6):
        return [(0, 0)]
    if connectivity == 18:
        return [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 26:
        return [(d1, d2) for d1 in (-1, 0, 1) for d2 in (-1, 0, 1)]
    raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")


@dataclass(frozen=True)
class FaceStore:
    """Face arrays of a labelling with ``kinds`` (K) label kinds, one per axis with two or more
    blocks: uint32 (2K + 1, *volume with that axis cut to the boundaries). Channels 0..K-1 hold
    ``lower``, K the ``cross`` bits, K+1..2K ``upper``; one chunk per channel and block face,
    so the two blocks at a boundary never write one chunk and one read gets all of a face."""

    root: str
    kinds: int

    def path(self, axis: int) -> str:
        return str(Path(self.root) / f"axis{axis}")


def create_faces(root: Path, grid: BlockGrid, kinds: int) -> FaceStore:
    """Empty face arrays for every axis with more than one block."""
    faces = FaceStore(str(root), kinds)
    for axis in range(3):
        if grid.counts[axis] < 2:
            continue
        shape, chunks = list(grid.total_roi.shape), list(grid.block_shape)
        shape[axis], chunks[axis] = grid.counts[axis] - 1, 1
        store.create_scratch(faces.path(axis), [2 * kinds + 1, *shape], np.uint32, [1, *chunks])
    return faces


def _plane(box: Box, axis: int, position: int) -> Box:
    """``box`` flattened to the single layer ``position`` along ``axis``."""
    offset, shape = list(box.offset), list(box.shape)
    offset[axis], shape[axis] = position, 1
    return Box(tuple(offset), tuple(shape))  # type: ignore[arg-type]


def write_faces(
    faces: FaceStore,
    grid: BlockGrid,
    block: Block,
    labels: np.ndarray,
    crossing: list[np.ndarray] | None,
) -> None:
    """Store a block's first and last layers (and crossing-edge bits, for graphs).

    Args:
        labels: uint32 (K, *write_roi.shape) local labels.
        crossing: None, or per axis uint8 (write_roi with that axis 1): bit k set where the edge
            from the last layer to the next block is strong and joins two kind-k nodes.
    """
    kinds = faces.kinds
    for axis in range(3):
        i, n = block.index[axis], grid.counts[axis]
        layer = [slice(None)] * 4
        if i < n - 1:
            layer[axis + 1] = slice(-1, None)
            lower = labels[tuple(layer)]
            if crossing is not None:
                lower = np.concatenate([lower, crossing[axis][None].astype(np.uint32)])
            plane = _plane(block.write_roi, axis, i)
            store.write(faces.path(axis), plane, lower, slice(0, len(lower)))
        if i > 0:
            layer[axis + 1] = slice(0, 1)
            plane = _plane(block.write_roi, axis, i - 1)
            store.write(faces.path(axis), plane, labels[tuple(layer)], slice(kinds + 1, None))


def _to_global(
    local: np.ndarray, volume_box: Box, grid: BlockGrid, offsets: np.ndarray
) -> np.ndarray:
    """int64 global piece ids of local labels (K, *volume_box.shape); -1 on background and
    outside the volume (``volume_box`` may reach beyond it)."""
    out = np.full(local.shape, -1, dtype=np.int64)
    for owner in grid.blocks_in(volume_box):
        part = intersect(owner.write_roi, volume_box)
        assert part is not None
        key = (slice(None), *local_slices(part, volume_box))
        values = local[key].astype(np.int64)
        shift = offsets[:, owner.id].reshape(-1, 1, 1, 1) - 1
        out[key] = np.where(values > 0, values + shift, -1)
    return out


def _read_face(
    faces: FaceStore, grid: BlockGrid, block: Block, axis: int, ring: bool
) -> np.ndarray:
    """The face above the block, its upper layer grown by one voxel in-plane when ``ring``
    (zero beyond the volume or when not read): uint32 (2K + 1, face shape with each in-plane
    side + 2, 1 along ``axis``)."""
    core, kinds = block.write_roi, faces.kinds
    plane = _plane(core, axis, block.index[axis])
    shape = [1 if a == axis else s + 2 for a, s in enumerate(core.shape)]
    padded = np.zeros((2 * kinds + 1, *shape), np.uint32)
    inner = tuple(slice(None) if a == axis else slice(1, -1) for a in range(3))
    if not ring:  # one read; the ring holds no neighbour
        padded[(slice(None), *inner)] = store.read(faces.path(axis), plane, slice(None))
        return padded
    padded[(slice(0, kinds + 1), *inner)] = store.read(faces.path(axis), plane, slice(0, kinds + 1))
    start = [o if a == axis else max(o - 1, 0) for a, o in enumerate(plane.offset)]
    stop = [
        e if a == axis else min(e + 1, n)
        for a, (e, n) in enumerate(zip(plane.stop, grid.total_roi.stop, strict=True))
    ]
    box = Box(tuple(start), tuple(b - a for a, b in zip(start, stop, strict=True)))  # type: ignore[arg-type]
    key = [slice(kinds + 1, None)] + [
        slice(None) if a == axis else slice(lo - o + 1, hi - o + 1)
        for a, (lo, hi, o) in enumerate(zip(start, stop, plane.offset, strict=True))
    ]
    padded[tuple(key)] = store.read(faces.path(axis), box, slice(kinds + 1, None))
    return padded


def face_pairs(
    block: Block, grid: BlockGrid, faces: FaceStore, offsets: np.ndarray, connectivity: int
) -> list[np.ndarray]:
    """Pairs of global piece ids that touch across the block's upper faces, per kind.

    Args:
        offsets: int64 (K, n_blocks) first global piece id of each block, per kind.
        connectivity: 6, 18 or 26 for labels of a voxel grid; GRAPH for graph labels.

    Returns:
        K int64 (P, 2) arrays of distinct pairs.
    """
    kinds, core = faces.kinds, block.write_roi
    found: list[list[np.ndarray]] = [[] for _ in range(kinds)]
    for axis in range(3):
        if block.index[axis] >= grid.counts[axis] - 1:
            continue
        face = _read_face(faces, grid, block, axis, ring=connectivity in (18, 26))
        inner = tuple(slice(None) if a == axis else slice(1, -1) for a in range(3))
        own_box = _plane(core, axis, core.stop[axis] - 1)
        own = _to_global(face[(slice(0, kinds), *inner)], own_box, grid, offsets)
        upper_box = Box(
            tuple(o - (a != axis) for a, o in enumerate(core.offset)),  # type: ignore[arg-type]
            face.shape[1:],  # type: ignore[arg-type]
        )
        upper = _to_global(
            face[kinds + 1 :], _plane(upper_box, axis, core.stop[axis]), grid, offsets
        )
        own, upper = own.squeeze(axis + 1), upper.squeeze(axis + 1)
        cross = face[(kinds, *inner)].squeeze(axis)
        n1, n2 = own.shape[1:]
        for d1, d2 in in_plane_steps(connectivity):
            other = upper[:, 1 + d1 : 1 + d1 + n1, 1 + d2 : 1 + d2 + n2]
            for kind in range(kinds):
                touch = (own[kind] >= 0) & (other[kind] >= 0)
                if connectivity == GRAPH:
                    touch &= (cross >> kind) & 1 > 0
                found[kind].append(np.stack([own[kind][touch], other[kind][touch]], axis=1))
    return [_distinct(np.concatenate(f)) if f else np.zeros((0, 2), np.int64) for f in found]


def _distinct(pairs: np.ndarray) -> np.ndarray:
    """The distinct rows of int64 (P, 2) pairs of non-negative ids, sorted. Below 2**31 ids a
    pair is one int64 key: a 1-D unique, where ``np.unique(axis=0)`` took most of the join."""
    if pairs.size and pairs.max() >= 2**31:
        return np.unique(pairs, axis=0)
    keys = np.unique((pairs[:, 0] << 32) | pairs[:, 1])
    return np.stack([keys >> 32, keys & (2**32 - 1)], axis=1)
