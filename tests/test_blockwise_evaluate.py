"""Blockwise scores equal the in-memory ones; the semantic decoder runs blockwise exactly."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from mitoseg import io
from mitoseg.decode import run as decode
from mitoseg.decode.blockwise import decode_blockwise
from mitoseg.decode.masks import BinarizeMedian
from mitoseg.evaluate.blockwise import (
    adjusted_rand_index,
    blockwise_confusion,
    blockwise_instance_scores,
    blockwise_overlaps,
)
from mitoseg.evaluate.instance import Overlaps, instance_scores, overlaps
from mitoseg.evaluate.semantic import Confusion


def _labels(rng: np.random.Generator, shape, n: int, big_ids: bool) -> np.ndarray:
    """Random blobs with ids 1..n (or spread up to ~2**32), so objects cross blocks."""
    seeds = np.zeros(shape, np.int64)
    points = tuple(rng.integers(0, s, n) for s in shape)
    seeds[points] = np.arange(1, n + 1)
    grown = ndimage.grey_dilation(seeds, size=(3, 5, 5))
    grown[rng.random(shape) < 0.3] = 0
    ids = rng.choice(2**32 - 2, n, replace=False) + 1 if big_ids else np.arange(1, n + 1)
    return np.concatenate([[0], ids])[grown].astype(np.uint32)


def test_overlaps_and_scores_identical_to_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    shape = (13, 30, 29)
    truth = _labels(rng, shape, 40, big_ids=False)
    pred = _labels(rng, shape, 50, big_ids=True)
    pred[truth > 0] = np.where(rng.random(shape) < 0.9, truth, pred)[truth > 0]
    io.write_volume(tmp_path / "truth.zarr", truth, chunks=(8, 16, 16))
    io.write_volume(tmp_path / "pred.zarr", pred, chunks=(4, 8, 8))
    ov = blockwise_overlaps(tmp_path / "truth.zarr", tmp_path / "pred.zarr", (4, 16, 8))
    assert ov == overlaps(truth, pred) and ov.n_truth >= 30
    scores = blockwise_instance_scores(tmp_path / "truth.zarr", tmp_path / "pred.zarr", (8, 8, 8))
    assert scores == instance_scores(truth, pred)
    assert 0 < scores["ap50"] < 1
    confusion = blockwise_confusion(tmp_path / "truth.zarr", tmp_path / "pred.zarr", (4, 16, 8))
    assert confusion == Confusion.from_masks(pred > 0, truth > 0)


def _ari_by_pairs(a: np.ndarray, b: np.ndarray) -> float:
    """The adjusted Rand index from its definition: agreements over all voxel pairs."""
    a, b = a.ravel(), b.ravel()
    pairs = list(itertools.combinations(range(a.size), 2))
    same_a = np.array([a[i] == a[j] for i, j in pairs])
    same_b = np.array([b[i] == b[j] for i, j in pairs])
    index, n_a, n_b = (same_a & same_b).sum(), same_a.sum(), same_b.sum()
    expected = n_a * n_b / len(pairs)
    return float((index - expected) / ((n_a + n_b) / 2 - expected))


@pytest.mark.parametrize("seed", range(4))
def test_adjusted_rand_index_by_pair_counting(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, (2, 3, 4))
    b = np.where(rng.random(a.shape) < 0.7, a, rng.integers(0, 5, a.shape))
    ari = adjusted_rand_index(overlaps(a, b))
    assert ari == pytest.approx(_ari_by_pairs(a, b), abs=1e-12)
    assert adjusted_rand_index(overlaps(a, (a + 7) * 3)) == 1.0  # relabelling changes nothing
    assert adjusted_rand_index(Overlaps.empty(10)) == 1.0


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_semantic_decoder_blockwise_equals_whole_volume(dtype: str, tmp_path: Path) -> None:
    """Median halos across block faces and reflection at the volume border: the same mask."""
    rng = np.random.default_rng(3)
    shape = (11, 37, 30)
    field = ndimage.gaussian_filter(rng.random((1, *shape)), (0, 1, 2, 2))
    probs = (field - field.min()) / (field.max() - field.min())
    probs = np.rint(probs * 255).astype(np.uint8) if dtype == "uint8" else probs.astype(np.float32)
    labels = (ndimage.gaussian_filter(rng.random(shape), 2) > 0.5).astype(np.uint32)
    io.write_volume(tmp_path / "probs.zarr", probs, chunks=(1, 4, 16, 8))
    io.write_volume(tmp_path / "labels.zarr", labels, chunks=(4, 16, 8))
    decoder = BinarizeMedian(threshold=0.5, median_size=5)
    run = decode_blockwise(
        decoder, tmp_path / "probs.zarr", tmp_path / "mask.zarr", tmp_path / "labels.zarr",
        block_shape=(4, 16, 8), progress=False,
    )  # fmt: skip
    mask = io.open_volume(tmp_path / "mask.zarr")
    np.testing.assert_array_equal(mask[:], decoder(probs).astype(np.uint8))
    assert mask.attrs["kind"] == "mask" and mask.chunks == (4, 16, 8)
    expected = decode.decode_in_memory(decoder, io.open_volume(tmp_path / "probs.zarr"), labels)
    assert run.scores == expected and 0 < run.scores["fg_iou"] < 1
    assert run.summary["blocks"] == 3 * 3 * 4


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_evaluation_counts_blockwise_identical_to_slabs(dtype: str, tmp_path: Path) -> None:
    """mitoseg-evaluate's pass: pairs, object boxes and probability sums of blocks add up to the
    z-slab pass exactly (integer units), so every score and the object table are identical."""
    from mitoseg.evaluate.counts import count_blocks, count_slabs

    rng = np.random.default_rng(4)
    shape = (13, 30, 29)
    truth = _labels(rng, shape, 40, big_ids=False)
    pred = _labels(rng, shape, 50, big_ids=True)
    probs = rng.random((2, *shape))
    probs = (probs * 255).astype(np.uint8) if dtype == "uint8" else probs.astype(np.float32)
    for name, data in (("truth", truth), ("pred", pred), ("probs", probs)):
        io.write_volume(tmp_path / f"{name}.zarr", data, chunks=(4, 8, 8))
    paths = [tmp_path / f"{name}.zarr" for name in ("truth", "pred", "probs")]
    blocks = count_blocks(*paths, block_shape=(4, 16, 8))
    slabs = count_slabs(*(io.open_volume(p) for p in paths), slab=5)
    assert blocks == slabs and blocks.overlaps == overlaps(truth, pred)
    assert blocks.prob_sums.size == blocks.pred.ids.size == blocks.overlaps.n_pred
    unit = 255 if dtype == "uint8" else 1
    mean = blocks.confidence(unit if dtype == "uint8" else 2**16)
    some = int(blocks.pred.ids[0])
    assert mean[some] == pytest.approx(probs[0][pred == some].mean() / unit, abs=1e-4)
