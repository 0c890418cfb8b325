"""The one decoder interface and the one runner: every decoder declares what it needs, and
``run_decoder`` / ``sweep`` give the same outputs and scores in memory and block by block."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from mitoseg import io
from mitoseg.datasets.synthetic import make_instance_volume
from mitoseg.decode.base import OutputKind, check_channels, params, score_columns
from mitoseg.decode.instances import ACWatershed, AffinityWatershed, BCWatershed
from mitoseg.decode.masks import BinarizeMedian
from mitoseg.decode.run import BlockwiseOptions, DaskOptions, run_decoder, sweep
from mitoseg.train.targets import BinaryContour

CONF = Path(__file__).resolve().parents[1] / "src" / "mitoseg" / "conf"
DECODERS = [BinarizeMedian(), BCWatershed(), AffinityWatershed(), ACWatershed()]
IN_PROCESS = BlockwiseOptions(block_shape=(8, 32, 32), halo=(8, 32, 32), dask=DaskOptions(None, 0))


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: type(d).__name__)
def test_every_decoder_declares_kind_channels_and_halo(decoder) -> None:
    assert isinstance(decoder.kind, OutputKind)
    assert decoder.n_channels >= 1
    assert dataclasses.is_dataclass(decoder) and params(decoder)  # its parameters
    if decoder.kind is OutputKind.MASK:
        assert decoder.halo == (3, 3, 3)  # the 7^3 median's exact reach
        assert score_columns(decoder)[0] == "fg_iou"
    else:
        assert decoder.halo is None  # floods: the runner's halo
        assert score_columns(decoder)[0] == "ap75"


def test_channel_check_names_the_file_and_both_counts() -> None:
    probs = np.zeros((3, 4, 4, 4), np.float32)
    check_channels(BinarizeMedian(), probs, "p.zarr")  # a mask decoder reads channel 0
    check_channels(AffinityWatershed(), probs, "p.zarr")
    with pytest.raises(io.VolumeError, match=r"p.zarr has 3 channels .* BCWatershed needs 2"):
        check_channels(BCWatershed(), probs, "p.zarr")


def test_blockwise_schema_is_the_config_file() -> None:
    """conf/blockwise/default.yaml and BlockwiseOptions are one schema, with one set of
    defaults; enabled=false means in memory."""
    config = OmegaConf.to_container(OmegaConf.load(CONF / "blockwise" / "default.yaml"))
    assert BlockwiseOptions.from_dict(config) is None
    options = BlockwiseOptions.from_dict({**config, "enabled": True})
    assert options == BlockwiseOptions()
    with pytest.raises(ValueError, match="unknown blockwise options"):
        BlockwiseOptions.from_dict({"enabled": True, "block": [1, 2, 3]})


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> tuple[Path, Path, Path]:
    """BC probabilities (perfect targets, softened) and their labels, 24 x 64 x 64."""
    tmp = tmp_path_factory.mktemp("decode")
    _, labels = make_instance_volume((24, 64, 64), seed=4)
    target = BinaryContour(width=2)(labels).astype(np.float32)
    probs = np.clip(0.1 + 0.8 * target, 0, 1)
    io.write_volume(
        tmp / "probs.zarr", np.rint(probs * 255).astype(np.uint8), chunks=(1, 8, 32, 32)
    )
    io.write_volume(tmp / "labels.zarr", labels, chunks=(8, 32, 32))
    return tmp, tmp / "probs.zarr", tmp / "labels.zarr"


@pytest.mark.parametrize(
    "decoder", [BinarizeMedian(median_size=3), BCWatershed(min_seed_size=32, min_size=16)]
)
def test_run_decoder_in_memory_equals_blockwise(volumes, decoder) -> None:
    tmp, probs, labels = volumes
    name = type(decoder).__name__
    memory = run_decoder(decoder, probs, tmp / f"{name}_memory.zarr", labels)
    blocks = run_decoder(
        decoder, probs, tmp / f"{name}_blocks.zarr", labels, blockwise=IN_PROCESS, work_dir=tmp
    )
    np.testing.assert_array_equal(
        io.open_volume(blocks.output)[:], io.open_volume(memory.output)[:]
    )
    assert blocks.scores == pytest.approx(memory.scores)
    assert blocks.summary["blocks"] == 3 * 2 * 2 and not memory.summary
    key = score_columns(decoder)[0]
    assert memory.scores[key] > 0.5  # softened perfect targets decode to something close


def test_sweep_in_memory_equals_blockwise(volumes) -> None:
    tmp, probs, labels = volumes
    grid = {"seed_threshold": [0.6, 0.8], "mask_threshold": [0.5]}
    decoder = BCWatershed(min_seed_size=32, min_size=16)
    memory = sweep(decoder, grid, probs, labels)
    blocks = sweep(decoder, grid, probs, labels, blockwise=IN_PROCESS, work_dir=tmp)
    assert [r["seed_threshold"] for r in memory] == [0.6, 0.8]
    for a, b in zip(memory, blocks, strict=True):
        assert a == pytest.approx(b)


def test_labels_of_another_shape_are_refused(volumes, tmp_path) -> None:
    _, probs, _ = volumes
    io.write_volume(tmp_path / "small.zarr", np.zeros((4, 4, 4), np.uint32))
    with pytest.raises(io.VolumeError, match=r"small.zarr have shape \(4, 4, 4\)"):
        run_decoder(BinarizeMedian(), probs, None, tmp_path / "small.zarr")
