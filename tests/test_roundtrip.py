"""Round trips (issue 19.3): perfect targets of every hard shape family decode back to the ground
truth at the decoders' default settings, on isotropic and anisotropic voxels; sizes are physical."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mitoseg import io
from mitoseg.datasets.shape_families import FLOOR_NM3, SHAPE_FAMILIES, shape_family
from mitoseg.datasets.synthetic_shapes import face_adjacent
from mitoseg.decode.base import MIN_SEED_SIZE_NM3, MIN_SIZE_NM3, size_voxels, with_voxel_size
from mitoseg.decode.instances import ACWatershed, AffinityWatershed, BCWatershed
from mitoseg.decode.run import BlockwiseOptions, DaskOptions, run_decoder
from mitoseg.evaluate.roundtrip import perfect_probs, round_trip, target_decoders
from mitoseg.train.targets import (
    Affinity,
)

ANISO, ISO_FAST, ISO = (30.0, 8.0, 8.0), (8.0, 8.0, 8.0), (5.0, 5.0, 5.0)


def targets(voxel_size_nm: tuple[float, float, float]) -> dict[str, tuple]:
    """Target transform and default decoder per target, as the configs pair them."""
    return target_decoders(voxel_size_nm)


def check(result: dict, target: str) -> None:
    assert result["lost"] == 0 and result["split"] == 0, result
    assert result["ap75"] >= 0.97, result
    if target == "a":
        assert result["exact"], result


@pytest.mark.parametrize("family", SHAPE_FAMILIES)
@pytest.mark.parametrize("voxel_size_nm", [ANISO, ISO_FAST], ids=["30x8x8", "8iso"])
def test_perfect_targets_decode_back(family: str, voxel_size_nm: tuple) -> None:
    labels = shape_family(family, voxel_size_nm)
    for name, (target, decoder) in targets(voxel_size_nm).items():
        check(round_trip(labels, target, decoder, voxel_size_nm, "uint8"), name)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("family", SHAPE_FAMILIES)
@pytest.mark.parametrize("voxel_size_nm", [ISO, ANISO], ids=["5iso", "30x8x8"])
def test_perfect_targets_decode_back_everywhere(
    family: str, voxel_size_nm: tuple, dtype: str
) -> None:
    labels = shape_family(family, voxel_size_nm, seed=1)
    for name, (target, decoder) in targets(voxel_size_nm).items():
        check(round_trip(labels, target, decoder, voxel_size_nm, dtype), name)


def test_families_are_what_they_say() -> None:
    vs = ISO_FAST
    tubes = shape_family("tubes", vs)
    for i in (1, 2):  # length > 10 x diameter: volume / (pi r^2) with r from the volume's depth
        voxels = np.argwhere(tubes == i)
        assert np.ptp(voxels[:, 2]) * vs[2] > 10 * np.ptp(voxels[:, 0]) * vs[0] * 0.9
    assert shape_family("branched", vs).max() == 1
    touching = shape_family("touching", vs)
    assert face_adjacent(touching == 1, touching == 2) and face_adjacent(
        touching == 3, touching == 4
    )
    small = shape_family("small", vs)
    sizes = np.bincount(small.ravel())[1:] * np.prod(vs)
    assert np.all(sizes > FLOOR_NM3) and np.all(sizes < 4 * FLOOR_NM3)
    assert FLOOR_NM3 == MIN_SIZE_NM3
    with pytest.raises(ValueError, match="unknown shape family"):
        shape_family("blobs", vs)


def test_before_the_fix_necks_split_and_small_ones_were_dropped() -> None:
    """What 8f5406b's defaults did (1024 / 32 voxels, no neck merge); kept as a witness that the
    shapes test what they should: a necked chain splits, round ones near the floor vanish."""
    old = dict(min_size=1024, min_seed_size=32, merge_necks=False)
    necked = shape_family("necked", ANISO)
    target, decoder = targets(ANISO)["bc"]
    assert round_trip(necked, target, dataclasses.replace(decoder, **old), ANISO)["split"] >= 1
    small = shape_family("small", ANISO)
    assert round_trip(small, target, dataclasses.replace(decoder, **old), ANISO)["n_pred"] == 0
    assert round_trip(small, target, decoder, ANISO)["n_pred"] == 4


def test_a_keeps_every_border_voxel_at_mask_threshold_half() -> None:
    """A cube's corner voxels have 3 of 6 edges to the background: mean affinity 0.5."""
    labels = np.zeros((12, 12, 12), np.uint32)
    labels[2:10, 2:10, 2:10] = 1
    probs = perfect_probs(Affinity(), labels, "uint8")
    decoded = AffinityWatershed(min_size=1, min_seed_size=1)(probs)
    np.testing.assert_array_equal(decoded, labels)


def test_sizes_are_physical_and_voxel_overrides_win() -> None:
    assert size_voxels(BCWatershed(voxel_size_nm=ISO)) == (480, 4000)
    assert size_voxels(BCWatershed(voxel_size_nm=ANISO)) == (32, 261)
    assert MIN_SEED_SIZE_NM3 / np.prod(ANISO) <= 32  # MitoEM's published seed size
    old = BCWatershed(min_size=1024, voxel_size_nm=ANISO)  # an old config: voxels
    assert size_voxels(old) == (32, 1024)
    assert size_voxels(AffinityWatershed(min_size=5, min_seed_size=2)) == (2, 5)  # no voxel size
    assert BCWatershed(voxel_size_nm=[30, 8, 8]).voxel_size_nm == ANISO  # YAML lists
    with pytest.raises(ValueError, match="min_size must be a voxel count"):
        BCWatershed(min_size=-1)
    with pytest.raises(ValueError, match="voxel_size_nm"):
        ACWatershed(voxel_size_nm=(0, 8, 8))
    with pytest.raises(ValueError, match="min_seed_size_nm3=60000 needs the voxel size"):
        BCWatershed()(np.zeros((2, 4, 4, 4), np.uint8))


def _zarr(tmp_path: Path, name: str, array: np.ndarray, voxel_size_nm: tuple | None) -> Path:
    axes = (["c"] if array.ndim == 4 else []) + list(io.AXES)
    attrs = {"axes": axes} | (
        {} if voxel_size_nm is None else {"voxel_size_nm": list(voxel_size_nm)}
    )
    chunks = (array.shape[0], 8, 32, 32) if array.ndim == 4 else (8, 32, 32)
    io.write_volume(tmp_path / name, array, chunks=chunks, attrs=attrs)
    return tmp_path / name


def test_runner_takes_the_voxel_size_of_the_probabilities(tmp_path: Path) -> None:
    labels = shape_family("small", ANISO)
    target, decoder = targets(ANISO)["bc"]
    probs = perfect_probs(target, labels, "uint8")
    truth = _zarr(tmp_path, "labels.zarr", labels, ANISO)
    with_size = _zarr(tmp_path, "probs.zarr", probs, ANISO)
    scores = run_decoder(decoder, with_size, tmp_path / "out.zarr", truth).scores
    assert scores is not None and scores["ap75"] == 1.0
    stored = io.open_volume(tmp_path / "out.zarr").attrs["decoder"]
    assert stored["voxel_size_nm"] == list(ANISO)
    without = _zarr(tmp_path, "bare.zarr", probs, None)
    with pytest.raises(io.VolumeError, match="bare.zarr states no voxel_size_nm"):
        run_decoder(decoder, without, None, truth)
    assert run_decoder(BCWatershed(min_size=10, min_seed_size=3), without, None, truth).scores


@pytest.mark.parametrize("target", ["bc", "ac"])
def test_blockwise_merges_necks_like_in_memory(target: str, tmp_path: Path) -> None:
    labels = shape_family("necked", ANISO)
    transform, decoder = targets(ANISO)[target]
    probs = _zarr(tmp_path, "probs.zarr", perfect_probs(transform, labels, "uint8"), ANISO)
    memory = with_voxel_size(decoder, ANISO, "probs")(io.open_volume(probs)[:])
    options = BlockwiseOptions(
        block_shape=(8, 32, 64), halo=(8, 48, 96), dask=DaskOptions(workers=0)
    )
    run_decoder(decoder, probs, tmp_path / "blocks.zarr", blockwise=options)
    np.testing.assert_array_equal(io.open_volume(tmp_path / "blocks.zarr")[:], memory)
    assert memory.max() == labels.max()


def dumbbell(radius: int = 21, gap: int = 40) -> np.ndarray:
    """uint32 (Z, Y, X): one object, two balls joined by a rod one voxel thin (a neck under
    0.05 of the balls' radius, as two Lucchi++ training mitochondria have)."""
    side, c = 2 * radius + 4, radius + 2
    z, y, x = np.ogrid[:side, :side, : 4 * radius + gap + 4]
    ball = (z - c) ** 2 + (y - c) ** 2
    labels = (ball + (x - c) ** 2 <= radius**2) | (
        ball + (x - c - 2 * radius - gap) ** 2 <= radius**2
    )
    labels[c, c, c : c + 2 * radius + gap] = True
    return labels.astype(np.uint32)


def test_bcd_joins_regions_split_by_a_neck_thinner_than_its_seed_threshold(tmp_path: Path) -> None:
    labels = dumbbell()
    transform, decoder = targets(ISO)["bcd"]
    unmerged = dataclasses.replace(decoder, merge_necks=False)
    assert round_trip(labels, transform, unmerged, ISO)["split"] == 1  # the seeds split
    assert round_trip(labels, transform, decoder, ISO)["exact"]
    probs = _zarr(tmp_path, "probs.zarr", perfect_probs(transform, labels, "uint8"), ISO)
    options = BlockwiseOptions(
        block_shape=(16, 32, 32), halo=(48, 48, 96), dask=DaskOptions(workers=0)
    )
    run_decoder(decoder, probs, tmp_path / "blocks.zarr", blockwise=options)
    np.testing.assert_array_equal(io.open_volume(tmp_path / "blocks.zarr")[:], labels)
