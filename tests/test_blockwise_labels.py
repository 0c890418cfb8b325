"""Block grids and blockwise connected components: identical to cc3d and to the affinity
decoders' whole-volume graph components, on random volumes cut by blocks that do not divide them."""

from __future__ import annotations

from pathlib import Path

import cc3d
import numpy as np
import pytest
from scipy import ndimage

from mitoseg import io
from mitoseg.decode import affinity
from mitoseg.decode import watershed as ws
from mitoseg.decode.blockwise import affinity_components, connected_components
from mitoseg.decode.blockwise.labels import apply_lut, label_grid, piece_stats
from mitoseg.geometry import Box, block_grid, intersect

OFFSETS = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


def test_grid_tiles_the_volume_with_clipped_halos() -> None:
    grid = block_grid((10, 7, 9), (4, 3, 5), halo=(1, 2, 0), chunks=(2, 2, 5))
    assert grid.block_shape == (4, 4, 5)  # y rounded up to a multiple of the chunk
    cover = np.zeros((10, 7, 9), np.int32)
    for block in grid:
        cover[block.write_roi.slices] += 1
        lo = np.maximum(np.subtract(block.write_roi.offset, (1, 2, 0)), 0)
        hi = np.minimum(np.add(block.write_roi.stop, (1, 2, 0)), (10, 7, 9))
        assert block.read_roi == Box(tuple(lo), tuple(hi - lo))
        assert grid.block(block.index) == block
    assert (cover == 1).all() and len(grid) == 3 * 2 * 2
    # blocks_in is exactly the blocks that overlap a box
    box = Box((3, 0, 4), (2, 5, 1))
    expected = [b.id for b in grid if intersect(b.write_roi, box) is not None]
    assert [b.id for b in grid.blocks_in(box)] == expected == [0, 2, 4, 6]
    assert block_grid((3, 4, 5), (64, 64, 64)).block_shape == (3, 4, 5)


def _random_mask(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Blobs and speckle: long components that wind through blocks, and diagonal-only contacts."""
    blobs = ndimage.gaussian_filter(rng.random(shape), 1.0) > 0.58
    return (blobs | (rng.random(shape) < 0.03)).astype(np.uint8)


CASES = [  # (volume, chunks = block shape, connectivity)
    ((11, 13, 14), (4, 7, 6), 26),
    ((4, 9, 10), (1, 4, 5), 26),  # one-voxel-thick blocks: every contact crosses a face
    ((11, 13, 14), (5, 4, 7), 18),
    ((7, 9, 10), (3, 4, 4), 6),
]


@pytest.mark.parametrize(("shape", "chunks", "connectivity"), CASES)
def test_connected_components_equal_cc3d(shape, chunks, connectivity, tmp_path: Path) -> None:
    rng = np.random.default_rng(sum(shape) + connectivity)
    mask = _random_mask(rng, shape)
    io.write_volume(tmp_path / "mask.zarr", mask, chunks=chunks)
    n = connected_components(
        tmp_path / "mask.zarr",
        tmp_path / "labels.zarr",
        connectivity=connectivity,
        block_shape=chunks,
        progress=False,
    )
    out = io.open_volume(tmp_path / "labels.zarr")
    expected, n_expected = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    # identical ids, not just the same partition: numbered by first voxel, like cc3d
    np.testing.assert_array_equal(out[:], expected)
    assert n == n_expected and out.dtype == np.uint32 and out.chunks == chunks
    # the volume must exercise joins: components crossing blocks, several blocks per component
    grid = block_grid(shape, chunks)
    spans = [np.unique(expected[b.write_roi.slices]) for b in grid]
    pieces = np.bincount(np.concatenate(spans), minlength=n + 1)[1:]
    assert (pieces >= 2).sum() >= 3 and pieces.max() >= 4


def test_contacts_through_block_edges_and_corners(tmp_path: Path) -> None:
    """Voxels touching only through a block corner (26) or a block edge (18, 26) are joined."""
    mask = np.zeros((4, 4, 6), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # blocks (0, 0, 0) and (1, 1, 1): corner contact
    mask[1, 2, 5] = mask[2, 1, 5] = 1  # blocks (0, 1, 2) and (1, 0, 2): edge contact
    io.write_volume(tmp_path / "mask.zarr", mask, chunks=(2, 2, 2))
    for connectivity, n_expected in ((6, 4), (18, 3), (26, 2)):
        out = tmp_path / f"labels{connectivity}.zarr"
        n = connected_components(
            tmp_path / "mask.zarr", out, connectivity=connectivity, block_shape=(2, 2, 2),
            progress=False,
        )  # fmt: skip
        assert n == n_expected
        expected = cc3d.connected_components(mask, connectivity=connectivity)
        np.testing.assert_array_equal(io.open_volume(out)[:], expected)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_affinity_components_equal_whole_volume_graph(dtype: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    shape = (10, 13, 12)
    affs = ndimage.uniform_filter(rng.random((3, *shape)), (1, 2, 2, 2))
    affs = np.clip((affs - 0.5) * 3 + 0.5, 0, 1)
    affs = np.rint(affs * 255).astype(np.uint8) if dtype == "uint8" else affs.astype(np.float32)
    io.write_volume(tmp_path / "affs.zarr", affs, chunks=(3, 4, 7, 6))
    n = affinity_components(
        tmp_path / "affs.zarr", tmp_path / "comps.zarr", threshold=0.5, block_shape=(4, 7, 6),
        progress=False,
    )  # fmt: skip
    # the A decoder's regions: voxels joined by a strong edge (issue 19.3: not a threshold on the
    # mean affinity, which lost object borders)
    edges = affinity.strong_edges(affs, 0.5, OFFSETS)
    expected, n_expected = ws._graph_components(edges != 0, edges)
    np.testing.assert_array_equal(io.open_volume(tmp_path / "comps.zarr")[:], expected)
    assert n == n_expected >= 5
    # grid-adjacent components kept apart by weak edges: the graph matters here
    grid_cc = cc3d.connected_components(expected > 0, connectivity=6)
    pairs = np.unique(np.stack([grid_cc[expected > 0], expected[expected > 0]]), axis=1)
    assert pairs.shape[1] > len(np.unique(pairs[0]))


def test_piece_stats_equal_cc3d_statistics_for_any_numbering_and_lines_at_26() -> None:
    rng = np.random.default_rng(3)
    raster, n = label_grid(ndimage.gaussian_filter(rng.random((9, 20, 17)), 1.5) > 0.52, 26)
    assert n >= 3
    shuffled = np.concatenate([[0], rng.permutation(n) + 1]).astype(np.uint32)[raster]
    for labels in (raster, shuffled):  # raster order: the fast path; any other: the fallback
        where = np.flatnonzero(labels)
        sizes, first, sums, boxes = piece_stats(labels.reshape(-1)[where], where, n, labels.shape)
        stats = cc3d.statistics(labels)
        np.testing.assert_array_equal(sizes, stats["voxel_counts"][1:])
        np.testing.assert_allclose(sums / sizes[:, None], stats["centroids"][1:], atol=1e-9)
        expected = [[s.start for s in b] + [s.stop for s in b] for b in stats["bounding_boxes"][1:]]
        np.testing.assert_array_equal(boxes, expected)
        flat = labels.reshape(-1)
        assert [int(np.flatnonzero(flat == k)[0]) for k in range(1, n + 1)] == first.tolist()
        lean = piece_stats(flat[where], where, n, labels.shape, sums=False, boxes=False)
        np.testing.assert_array_equal(lean[0], sizes)
        np.testing.assert_array_equal(lean[1], first)
        assert lean[2] is None and lean[3] is None
    line = np.array([1, 0, 1], bool).reshape(1, 1, 3)  # cc3d 3.x raises here at 26
    np.testing.assert_array_equal(label_grid(line, 26)[0], [[[1, 0, 2]]])


def test_apply_lut_equals_numpy_gather_for_every_dtype_pair() -> None:
    rng = np.random.default_rng(5)
    for ids_dtype, lut_dtype, size in [
        (np.uint8, np.uint32, 200),
        (np.uint16, np.uint8, 300),  # ids wider than the table's dtype: no truncation
        (np.uint32, np.uint16, 70000),
        (np.uint8, np.uint8, 256),
    ]:
        lut = rng.integers(0, np.iinfo(lut_dtype).max, size).astype(lut_dtype)
        ids = rng.integers(0, size, (4, 5, 6)).astype(ids_dtype)
        before = ids.copy()
        got = apply_lut(lut, ids)
        assert got.dtype == lut.dtype
        np.testing.assert_array_equal(got, lut[ids])
        np.testing.assert_array_equal(ids, before)  # remapped on a copy
    with pytest.raises(IndexError, match="label 9 beyond a lookup table of 9"):
        apply_lut(np.zeros(9, np.uint32), np.array([[0, 9]], np.uint8))
