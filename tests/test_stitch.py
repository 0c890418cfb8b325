"""Tiling + blending: an identity network returns its input exactly, for odd shapes."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mitoseg import io
from mitoseg.predict.blend import SlabWriter, Stitcher, blend_weight
from mitoseg.predict.tiles import boxes_from_batch
from mitoseg.train.data import TileDataset, VolumePaths, to_float


def run_identity(raw_path: Path, out, tile, overlap, blend="gaussian") -> None:
    dataset = TileDataset(VolumePaths(raw_path), tile, overlap)
    stitcher = Stitcher(out, tile, blend)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3)
    for batch in loader:
        probs = batch["raw"].repeat(1, out.shape[0], 1, 1, 1).numpy()
        stitcher.aggregate(probs, boxes_from_batch(batch["box"]))
    stitcher.finalize()


@pytest.mark.parametrize(
    "shape,tile,overlap,blend",
    [
        ((37, 61, 45), (16, 32, 32), 0.5, "gaussian"),
        ((37, 61, 45), (16, 32, 32), 0.25, "constant"),
        ((19, 33, 70), (8, 16, 16), 0.0, "gaussian"),
        ((5, 20, 9), (8, 16, 16), 0.5, "gaussian"),  # volume smaller than the tile
    ],
)
def test_identity_net_returns_input_exactly(tmp_path, shape, tile, overlap, blend) -> None:
    raw = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    io.write_volume(tmp_path / "raw.zarr", raw, chunks=(7, 32, 32))
    out = io.create_volume(tmp_path / "out.zarr", (2, *shape), "uint8", chunks=(2, 8, 32, 32))
    run_identity(tmp_path / "raw.zarr", out, tile, overlap, blend)
    result = io.open_volume(tmp_path / "out.zarr")[:]
    np.testing.assert_array_equal(result[0], raw)
    np.testing.assert_array_equal(result[1], raw)


def test_float_output_matches_to_float_precision(tmp_path) -> None:
    raw = np.random.default_rng(1).integers(0, 256, (21, 30, 30), dtype=np.uint8)
    io.write_volume(tmp_path / "raw.zarr", raw)
    out = np.zeros((1, 21, 30, 30), np.float32)
    run_identity(tmp_path / "raw.zarr", out, (8, 16, 16), 0.5)
    np.testing.assert_allclose(out[0], to_float(raw), atol=1e-6)


def test_blend_weight_is_centred_and_positive() -> None:
    w = blend_weight((9, 16, 16))
    assert w.min() > 0 and w.max() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(w), w.shape)[0] == 4


class Recorder:
    """An output that records the z-ranges written to it."""

    def __init__(self, shape):
        self.shape, self.dtype, self.writes = shape, np.dtype(np.float32), []
        self.data = np.zeros(shape, np.float32)

    def __setitem__(self, key, value):
        self.writes.append((key[1].start, key[1].stop))
        self.data[key] = value


def test_writes_are_chunk_aligned_and_memory_is_one_tile_deep() -> None:
    out = Recorder((1, 50, 8, 8))
    stitcher = Stitcher(out, (8, 8, 8), chunk_z=10)
    assert stitcher._sum.shape == (1, 8, 8, 8)  # independent of the volume's depth
    for z in range(0, 43, 6):
        z = min(z, 42)
        from mitoseg.geometry import Box

        stitcher.aggregate(np.ones((1, 1, 8, 8, 8), np.float32), [Box((z, 0, 0), (8, 8, 8))])
    stitcher.finalize()
    assert all(start % 10 == 0 for start, _ in out.writes)
    assert out.writes[-1][1] == 50 and np.all(out.data == 1.0)


def test_tiles_out_of_order_are_refused() -> None:
    from mitoseg.geometry import Box

    stitcher = Stitcher(np.zeros((1, 20, 4, 4), np.float32), (4, 4, 4))
    one = np.ones((1, 1, 4, 4, 4), np.float32)
    stitcher.aggregate(one, [Box((0, 0, 0), (4, 4, 4))])
    with pytest.raises(ValueError, match="covered by no tile"):  # a gap between tiles
        stitcher.aggregate(one, [Box((8, 0, 0), (4, 4, 4))])
    stitcher.aggregate(one, [Box((4, 0, 0), (4, 4, 4))])
    with pytest.raises(ValueError, match="z=0 arrived after z=4"):
        stitcher.aggregate(np.ones((1, 1, 4, 4, 4), np.float32), [Box((0, 0, 0), (4, 4, 4))])


def test_slab_writer_flushes_rest_on_close() -> None:
    out = np.zeros((1, 7, 2, 2))
    writer = SlabWriter(out, chunk_z=4)
    writer.push(np.ones((1, 3, 2, 2)))
    assert writer.written == 0
    writer.push(np.full((1, 4, 2, 2), 2.0))
    assert writer.written == 4
    writer.close()
    assert writer.written == 7 and out[0, :, 0, 0].tolist() == [1, 1, 1, 2, 2, 2, 2]
