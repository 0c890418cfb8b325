import numpy as np
import pytest

from mitoseg.geometry import Box, BoxView, axis_starts, overlap_stride, split_axis, tile_grid


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
