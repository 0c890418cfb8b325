import numpy as np
import pytest

from mitoseg.geometry import (
    BlockSweep,
    Box,
    BoxView,
    axis_starts,
    intersect,
    overlap_stride,
    split_axis,
    sweep_order,
    tile_grid,
)


@pytest.mark.parametrize("size,tile,stride", [(37, 16, 8), (16, 16, 8), (10, 16, 8), (100, 32, 24)])
def test_axis_starts_cover_without_leaving(size: int, tile: int, stride: int) -> None:
    starts = axis_starts(size, tile, stride)
    covered = np.zeros(size, bool)
    for s in starts:
        assert 0 <= s and (s + tile <= size or size < tile)
        covered[s : s + tile] = True
    assert covered.all() and starts == sorted(set(starts))


def test_tile_grid_is_z_major_and_clipped() -> None:
    tiles = tile_grid((10, 40, 40), (16, 32, 32), overlap_stride((16, 32, 32), 0.5))
    assert all(t.shape == (10, 32, 32) for t in tiles)
    z_starts = [t.offset[0] for t in tiles]
    assert z_starts == sorted(z_starts)


def test_split_axis_is_disjoint_and_complete() -> None:
    train, val = split_axis(Box.whole((8, 10, 50)), axis=2, fraction=0.2)
    assert train == Box((0, 0, 0), (8, 10, 40)) and val == Box((0, 0, 40), (8, 10, 10))
    with pytest.raises(ValueError):
        split_axis(Box.whole((8, 10, 3)), axis=2, fraction=0.1)


def test_box_view_reads_relative_to_box() -> None:
    array = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    view = BoxView(array, Box((1, 2, 3), (3, 2, 2)))
    assert view.shape == (3, 2, 2)
    np.testing.assert_array_equal(view[0:2], array[1:3, 2:4, 3:5])


def test_block_sweep_numbers_blocks_longest_axis_outermost() -> None:
    """Blocks tile the volume once; numbers and grid positions map both ways; the block holding
    a tile's first voxel comes before every other block the tile covers (it runs the tile)."""
    shape, block, tile = (10, 40, 20), (4, 16, 8), (6, 12, 10)
    sweep = BlockSweep(shape, block, sweep_order(shape))
    assert sweep.order == (1, 2, 0) and sweep_order((5, 7, 7)) == (1, 2, 0)
    covered = np.zeros(shape, int)
    for index, box in enumerate(sweep.boxes()):
        assert sweep.index(sweep.position(index)) == index
        assert sweep.owner(box.offset) == index
        covered[box.slices] += 1
    assert (covered == 1).all()
    # y outermost: the first blocks are the y = 0 layer, x before z inside it
    assert [sweep.position(i) for i in range(4)] == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 0, 1)]
    for t in tile_grid(shape, tile, overlap_stride(tile, 0.5)):
        touched = sweep.touching(t)
        expected = [i for i, b in enumerate(sweep.boxes()) if intersect(b, t) is not None]
        assert touched == expected and touched[0] == sweep.owner(t.offset)
