"""Tiling + blending: an identity network through the blockwise predictor returns its input
exactly, for odd shapes, overlaps, block shapes and both blend modes."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mitoseg import io
from mitoseg.geometry import axis_starts, overlap_stride
from mitoseg.io.normalize import to_float
from mitoseg.predict.blend import blend_weight
from mitoseg.predict.blocks import BlockDataset, BlockPlan
from mitoseg.predict.tiles import BlockBlender, fixed_point_scale, to_storage


def identity_blocks(raw: Path, shape, tile, overlap, block, blend, dtype) -> np.ndarray:
    """Every block of the plan through the blender with ``probs = raw`` on 2 channels."""
    plan = BlockPlan(
        raw=str(raw), shape=shape, channels=("a", "b"), dtype=dtype, block_shape=block,
        tile_shape=tile, overlap=overlap, blend=blend, tta="none", checkpoint="-",
        chunk_shape=block,
    )  # fmt: skip
    blender = BlockBlender(torch.from_numpy(blend_weight(tile, blend)), batch_size=3)
    dataset = BlockDataset(plan)
    out = np.zeros((2, *shape), dtype=dtype)
    for index, box in enumerate(plan.blocks()):
        probs = blender(lambda x: x.repeat(1, 2, 1, 1, 1), dataset[index])
        out[(slice(None), *box.slices)] = to_storage(probs, dtype).numpy()
    return out


@pytest.mark.parametrize(
    "shape,tile,overlap,block,blend",
    [
        ((37, 61, 45), (16, 32, 32), 0.5, (37, 61, 45), "gaussian"),
        ((37, 61, 45), (16, 32, 32), 0.25, (8, 32, 16), "constant"),
        ((19, 33, 70), (8, 16, 16), 0.0, (4, 16, 32), "gaussian"),
        ((5, 20, 9), (8, 16, 16), 0.5, (4, 8, 8), "gaussian"),  # volume smaller than the tile
    ],
)
def test_identity_net_returns_input_exactly(tmp_path, shape, tile, overlap, block, blend) -> None:
    raw = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    io.write_volume(tmp_path / "raw.zarr", raw, chunks=(7, 32, 32))
    result = identity_blocks(tmp_path / "raw.zarr", shape, tile, overlap, block, blend, "uint8")
    np.testing.assert_array_equal(result[0], raw)
    np.testing.assert_array_equal(result[1], raw)


def test_float_output_matches_to_float_precision(tmp_path) -> None:
    raw = np.random.default_rng(1).integers(0, 256, (21, 30, 30), dtype=np.uint8)
    io.write_volume(tmp_path / "raw.zarr", raw)
    out = identity_blocks(
        tmp_path / "raw.zarr", (21, 30, 30), (8, 16, 16), 0.5, (8, 16, 16), "gaussian", "float32"
    )
    np.testing.assert_allclose(out[0], to_float(raw), atol=1e-6)


def test_blend_weight_is_centred_and_positive() -> None:
    w = blend_weight((9, 16, 16))
    assert w.min() > 0 and w.max() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(w), w.shape)[0] == 4


@pytest.mark.parametrize(
    "tile,overlap,blend",
    [
        ((8, 16, 16), 0.75, "constant"),
        ((8, 16, 16), 0.75, "gaussian"),
        ((7, 9, 11), 0.5, "constant"),
    ],
)
def test_fixed_point_sums_hold_the_largest_sums(tmp_path, tile, overlap, blend) -> None:
    """Probabilities of 1 everywhere, where the most tiles overlap (0.75: up to 125 on a voxel
    with the moved-back last tiles): the int32 sums do not overflow and blend back to exactly 1;
    the scale's bound is above every voxel's real weight sum."""
    shape = (23, 45, 50)
    io.write_volume(tmp_path / "raw.zarr", np.full(shape, 255, np.uint8))
    out = identity_blocks(
        tmp_path / "raw.zarr", shape, tile, overlap, (8, 16, 16), blend, "float32"
    )
    np.testing.assert_allclose(out, 1.0, rtol=0, atol=1e-6)

    weight = torch.from_numpy(blend_weight(tile, blend))
    stride = overlap_stride(tile, overlap)
    starts = [axis_starts(*a) for a in zip(shape, tile, stride, strict=True)]
    scale = fixed_point_scale(weight, starts, shape)
    sums = np.zeros(shape)
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                sums[z : z + tile[0], y : y + tile[1], x : x + tile[2]] += weight.numpy()
    assert sums.max() * scale < 2**31 - 1 <= 4 * sums.max() * scale  # in range, and not wasted
