"""Blockwise watershed decoders against the whole-volume decoders: identical when the halo holds
every multi-seed component, close (measured bounds) with small halos, exact size filters across
blocks, and reads bounded by the block, not the volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mitoseg import io
from mitoseg.decode import instances
from mitoseg.decode.blockwise import decode_blockwise
from mitoseg.decode.blockwise import store as block_store
from mitoseg.evaluate.blockwise import adjusted_rand_index
from mitoseg.evaluate.instance import instance_scores, overlaps, scores_from_overlaps
from tests.test_watershed import OFFSETS, _affinity_probs, _bc_probs, _perfect_bc

# (decoder, probabilities): noisy fields of separate cells and necked pairs, (24, 48, 48).
DECODERS = {
    "bc26_uint8": (instances.BCWatershed(0.7, 0.6, 0.55, 3, 10, 26), lambda: _bc_probs(0, "uint8")),
    "bc6_float": (instances.BCWatershed(0.7, 0.6, 0.55, 3, 10, 6), lambda: _bc_probs(3, "float32")),
    "a_uint8": (
        instances.AffinityWatershed(0.75, 0.5, 3, 10),
        lambda: _affinity_probs(2, "uint8", OFFSETS, contour=False),
    ),
    "ac_float": (
        instances.ACWatershed(0.75, 0.6, 0.5, 3, 10, 26),
        lambda: _affinity_probs(0, "float32", OFFSETS, contour=True),
    ),
}
BLOCK = (12, 24, 24)  # 8 blocks; the cells (10 x 12 x 12, period 12 x 14 x 14) cross them


def _decode(decoder, probs: np.ndarray, tmp_path: Path, halo, block=BLOCK, chunks=BLOCK):
    path = tmp_path / "probs.zarr"
    if not path.exists():
        io.write_volume(path, probs, chunks=(probs.shape[0], *chunks))
    out = tmp_path / f"instances_{'_'.join(map(str, halo))}.zarr"
    run = decode_blockwise(decoder, path, out, block_shape=block, halo=halo, progress=False)
    return io.open_volume(out)[:], run


@pytest.mark.parametrize("name", list(DECODERS))
def test_identical_with_large_halo_and_close_with_small(name: str, tmp_path: Path) -> None:
    """Measured on four seeds per decoder with blocks (12, 24, 24): halo (8, 16, 16) identical
    every time; halo (4, 8, 8) identical or ARI >= 0.99993; halo (2, 4, 4): ARI >= 0.9993 and
    AP-75 (whole-volume result as truth) >= 0.96; no halo: ARI >= 0.995, AP-75 >= 0.75. The
    bounds below leave a margin."""
    decoder, make = DECODERS[name]
    probs = make()
    whole = decoder(probs)
    exact, run = _decode(decoder, probs, tmp_path, (8, 16, 16))
    np.testing.assert_array_equal(exact, whole)
    assert run.summary["instances"] == whole.max() >= 50 and run.summary["blocks"] == 8
    close, _ = _decode(decoder, probs, tmp_path, (2, 4, 4))
    ov = overlaps(whole, close)
    assert 0.999 <= adjusted_rand_index(ov) < 1.0  # not identical: the approximate path ran
    assert scores_from_overlaps(ov)["ap75"] >= 0.95
    # Every voxel of a multi-seed component gets one of its seeds (for bc6_float 180 voxels cut
    # off from their seeds within the read_roi take the nearest centroid's), so the foreground
    # stays exact unless a changed flood moves an instance across min_size (not here).
    np.testing.assert_array_equal(close > 0, whole > 0)


@pytest.fixture(scope="module")
def instance_labels() -> np.ndarray:
    """Touching pairs, necked chains and border objects, (24, 96, 96)."""
    from mitoseg.datasets.synthetic import make_instance_volume

    return make_instance_volume((24, 96, 96), seed=0)[1]


@pytest.mark.parametrize("kind", ["bc", "a", "ac"])
def test_perfect_targets_decode_to_the_ground_truth(
    kind: str, instance_labels: np.ndarray, tmp_path: Path
) -> None:
    """Targets made from the labels, decoded in 8 blocks with a small halo (2, 8, 8): affinities
    give the labels back exactly (every component has one seed); BC and AC find every instance
    and score as the whole-volume decoder does, up to a few contact voxels."""
    from mitoseg.train.targets import Affinity, AffinityContour, BinaryContour

    labels, loose = instance_labels, dict(min_seed_size=0, min_size=0)
    target, decoder = {
        "bc": (
            BinaryContour(width=4, in_plane=True),
            instances.BCWatershed(0.5, 0.5, 0.5, **loose),
        ),
        "a": (Affinity(), instances.AffinityWatershed(0.5, 0.1, **loose)),
        "ac": (
            AffinityContour(width=4, in_plane=True),
            instances.ACWatershed(0.5, 0.5, 0.1, **loose),
        ),
    }[kind]
    probs = np.nan_to_num(target(labels), nan=1.0).astype(np.float32)
    out, _ = _decode(decoder, probs, tmp_path, (2, 8, 8), (12, 48, 48), (12, 48, 48))
    scores = instance_scores(labels, out)
    if kind == "a":
        assert scores["ap75"] == 1.0 and scores["are"] == 0.0
        assert scores["n_pred"] == labels.max()
        return
    whole = instance_scores(labels, decoder(probs))
    assert scores["n_pred"] == whole["n_pred"] == labels.max()
    assert scores["ap75"] >= whole["ap75"] - 0.02 and scores["are"] <= 0.005


@pytest.mark.parametrize(("min_seed_size", "min_size"), [(100, 1), (1, 700)])
def test_size_filters_are_global(min_seed_size: int, min_size: int, tmp_path: Path) -> None:
    """Seeds and instances cut by blocks into pieces under the limits are judged by their whole
    size: box 2's seed (216 voxels) lies in eight blocks, 27 voxels in each; box 2 (1000 voxels)
    in eight, box 3 (600 voxels once split off) in four."""
    labels = np.zeros((12, 30, 30), np.uint32)
    labels[1:8, 1:8, 1:8] = 1
    labels[1:11, 10:20, 10:20] = 2
    labels[1:11, 20:26, 10:20] = 3  # touches 2
    probs = _perfect_bc(labels, "uint8")
    decoder = instances.BCWatershed(0.85, 0.5, 0.8, min_seed_size, min_size)
    out, _ = _decode(decoder, probs, tmp_path, (12, 30, 30), (6, 15, 15), (6, 15, 15))
    np.testing.assert_array_equal(out, decoder(probs))
    assert out.max() == 1  # one instance (2 and 3 unsplit, or 3 too small), not none


def test_reads_are_bounded_by_the_block_not_the_volume(tmp_path: Path, monkeypatch) -> None:
    """Every read of every task stays within a block's read_roi plus the affinity context."""
    decoder, make = DECODERS["ac_float"]
    probs = make()
    sizes = []
    read = block_store.read

    def recording(path, box, channels=None):
        sizes.append(box.size)
        return read(path, box, channels)

    monkeypatch.setattr(block_store, "read", recording)
    halo = (2, 4, 4)
    _decode(decoder, probs, tmp_path, halo)
    bound = np.prod([b + 2 * h + 2 * 2 for b, h in zip(BLOCK, halo, strict=True)])
    assert max(sizes) <= bound < probs[0].size / 2


def test_affinity_seeds_must_be_mask_edges(tmp_path: Path) -> None:
    probs = _affinity_probs(0, "uint8", OFFSETS, contour=False)
    with pytest.raises(ValueError, match="seed_threshold >= mask_threshold"):
        _decode(instances.AffinityWatershed(0.4, 0.5), probs, tmp_path, (0, 0, 0))


def test_cut_off_voxels_take_the_nearest_seed_centroid() -> None:
    from mitoseg.decode.blockwise.watershed import BlockTables, _nearest_seed

    comps = np.zeros((1, 4, 6), np.uint32)
    comps[0, :, :5] = 7  # one multi-seed component; voxel (0, 3, 5) is another one's
    comps[0, 3, 5] = 9
    out = np.zeros(comps.shape, np.uint32)
    out[0, 0, 0] = 5  # flooded already: kept
    centroids = np.array([[0.0, 10.0, 1.0], [0.0, 10.0, 4.0], [0.0, 13.0, 20.0]])
    tables = BlockTables(
        np.zeros(1, np.uint32), {}, np.array([7, 7, 9]), np.array([1, 2, 3], np.uint32), centroids
    )
    _nearest_seed(out, comps, (0, 10, 0), tables)
    z, y, x = np.indices(comps.shape)
    nearer_second = (x - 4.0) ** 2 < (x - 1.0) ** 2
    expected = np.where(comps == 0, 0, np.where(nearer_second, 2, 1))
    expected[0, 0, 0], expected[0, 3, 5] = 5, 3
    np.testing.assert_array_equal(out, expected)


def test_bad_input_in_one_block_raises_and_leaves_nothing(tmp_path: Path) -> None:
    probs = _bc_probs(0, "float32")
    probs[0, 20, 40, 40] = 1.5  # in the last block
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _decode(instances.BCWatershed(), probs, tmp_path, (0, 0, 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probs.zarr"]
