"""Raw intensities (issue 20, point 3): every volume is normalised by its own dtype and range, so
uint8, 12-bit in uint16 and float versions of one volume give one prediction; checkpoints record
how training data was normalised and what it looked like; predict and train warn, with the
numbers, when a volume looks unlike the training data.

Before: float32 in 0..65535 went to the network unscaled and 12-bit data in uint16 (0..4080) was
divided by 65535; both predicted every voxel as foreground, without a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mitoseg import io
from mitoseg.cli.common import load_checkpoint, trained_intensity
from mitoseg.cli.predict import input_intensity
from mitoseg.datasets.synthetic import make_volume
from mitoseg.datasets.volumes import FileVolumes
from mitoseg.io.intensity import Method, measure, raw_stats
from mitoseg.train.callbacks import CHECKPOINT_KEY, ConfigInCheckpoint
from mitoseg.train.data import VolumeDataModule
from mitoseg.train.targets import Semantic
from tests.helpers import predict_in_process

FIXTURE = Path(__file__).parent / "fixtures" / "layout_v0.ckpt"  # no raw statistics
VOXEL = {"voxel_size_nm": [5.0, 5.0, 5.0]}


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    """uint8 raw (16, 48, 48) and its instance labels."""
    return make_volume((16, 48, 48), seed=3)


def versions(raw: np.ndarray) -> dict[str, np.ndarray]:
    """One uint8 image as labs store it."""
    wide = raw.astype(np.uint16)
    return {
        "uint8": raw,
        "uint16 12-bit": (wide << 4) | (wide >> 4),  # 0..4095, each 8-bit grey at its 12-bit place
        "uint16 0..4080": wide * 16,  # the case: 8-bit data shifted into 12 bits
        "uint16 16-bit": wide * 257,
        "float 0..1": raw.astype(np.float32) / 255,
        "float 0..255": raw.astype(np.float32),
        "float 0..65535": raw.astype(np.float32) * 257,
    }


def test_each_version_of_one_volume_becomes_the_same_network_input(volume) -> None:
    raw = volume[0]
    expected = raw.astype(np.float32) / 255
    for name, data in versions(raw).items():
        found = measure(data)
        mapped = found.normalization(data)
        assert mapped.dtype == np.float32
        if name.startswith("uint16 1") or name == "uint16 0..4080":
            high = 65535 if "16-bit" in name else 4095
            assert (found.normalization.low, found.normalization.high) == (0, high), name
        # 12 bits hold the 8-bit greys only to 1/4095 (0..4080 is 0.4 % darker); the rest exactly
        tolerance = {"uint16 12-bit": 1 / 4095, "uint16 0..4080": 16 / 4095}.get(name, 0)
        assert np.abs(mapped - expected).max() <= tolerance, name
    # the statistics describe the raw values, and the mapped robust range is the same
    assert measure(versions(raw)["float 0..65535"]).mapped() == pytest.approx(
        measure(raw).mapped(), abs=1e-6
    )


def test_values_without_a_nominal_range_map_to_the_references_percentiles(volume) -> None:
    raw = volume[0]
    reference = measure(raw)
    standardised = (raw.astype(np.float32) - 140) / 30  # negative values: no bit depth
    found = measure(standardised, reference=reference)
    assert found.normalization.method == Method.PERCENTILE
    assert found.mapped() == pytest.approx(reference.mapped(), abs=1e-5)
    assert np.abs(found.normalization(standardised) - raw / np.float32(255)).max() < 1e-5


def test_statistics_of_a_large_volume_come_from_a_fixed_subsample(tmp_path) -> None:
    data = np.random.default_rng(0).integers(0, 4096, (8, 64, 64), dtype=np.uint16)
    array = io.write_volume(tmp_path / "raw.zarr", data, chunks=(4, 32, 32))
    exact = raw_stats(array)
    assert exact.sampled == exact.voxels == data.size and exact.max == data.max()
    budget = data.size // 4
    sampled = raw_stats(array, budget=budget)
    assert budget // 2 <= sampled.sampled <= budget and sampled.voxels == data.size
    assert sampled == raw_stats(array, budget=budget)  # the same every time
    assert sampled.p99 == pytest.approx(exact.p99, rel=0.02)


def test_predict_gives_one_result_for_uint8_12_bit_and_float_inputs(tmp_path, volume) -> None:
    outputs = {}
    for name, data in versions(volume[0]).items():
        if name in ("uint16 16-bit", "float 0..255"):
            continue  # the same rule as float 0..65535 and uint8 (above); saves their time
        raw = tmp_path / f"{name.replace(' ', '_')}.zarr"
        io.write_volume(raw, data, attrs=VOXEL)
        probs = tmp_path / f"{name.replace(' ', '_')}_probs.zarr"
        output = predict_in_process(tmp_path, f"ckpt={FIXTURE}", f"input={raw}", f"output={probs}")
        outputs[name] = io.open_volume(output)[:].astype(int)
        stored = io.open_volume(output).attrs["raw_intensity"]
        assert stored["stats"]["dtype"] == str(data.dtype) and stored["stats"]["max"] == data.max()
    reference = outputs.pop("uint8")
    assert reference.std() > 0  # the model's output varies: the comparison means something
    for name in ("float 0..1", "float 0..65535"):
        np.testing.assert_array_equal(outputs[name], reference, err_msg=name)
    # 12-bit greys differ from the 8-bit ones by < 1/4095 (0..4080: 0.4 %): at most one step of
    # the uint8 probabilities (before: every voxel foreground, 200+ steps off)
    for name in ("uint16 12-bit", "uint16 0..4080"):
        assert np.abs(outputs[name] - reference).max() <= 1, name


@pytest.fixture(scope="module")
def recorded_ckpt(tmp_path_factory, volume) -> Path:
    """The fixture checkpoint with the record a training on ``volume`` writes."""
    checkpoint = torch.load(FIXTURE, weights_only=True)
    record = {"train": measure(volume[0]).to_dict()}
    checkpoint[CHECKPOINT_KEY]["config"]["data"]["raw_intensity"] = record
    path = tmp_path_factory.mktemp("ckpt") / "recorded.ckpt"
    torch.save(checkpoint, path)
    return path


def _input_check(tmp_path: Path, ckpt: Path, data: np.ndarray, caplog, **cfg) -> list[str]:
    raw = tmp_path / "input.zarr"
    io.write_volume(raw, data, attrs=VOXEL, overwrite=True)
    stored, _ = load_checkpoint(ckpt)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mitoseg"):
        cfg = {"input": str(raw), "ckpt": str(ckpt), "raw_range": None, **cfg}
        input_intensity(OmegaConf.create(cfg), stored, raw)
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_predict_warns_with_the_numbers_when_the_input_is_unlike_the_training_data(
    tmp_path, volume, recorded_ckpt, caplog
) -> None:
    raw = volume[0]
    # any version of the training data's range: no warning
    for data in versions(raw).values():
        assert _input_check(tmp_path, recorded_ckpt, data, caplog) == []
    # 16-bit data that uses a sliver of its range: mapped 1-99 % far narrower than trained on
    dim = raw.astype(np.uint16) * 40 + 1000
    dim[0, 0, :4] = 60000
    (warning,) = _input_check(tmp_path, recorded_ckpt, dim, caplog)
    assert "looks unlike the data the model was trained on" in warning
    assert "as 0..65535 (16-bit)" in warning and "the model saw 1-99 % at 0.2" in warning
    assert "raw_range=[low,high]" in warning
    # an almost constant input
    flat = np.full(raw.shape, 120, np.uint8)
    flat[::2] = 121
    (warning,) = _input_check(tmp_path, recorded_ckpt, flat, caplog)
    assert "is almost constant" in warning and "raw 120..121 uint8" in warning
    # raw_range sets the mapping: the 16-bit sliver spread over 0..1 again
    assert _input_check(tmp_path, recorded_ckpt, dim, caplog, raw_range=[1000, 11200]) == []


def test_old_checkpoints_without_statistics_still_predict_and_say_so(
    tmp_path, volume, caplog
) -> None:
    stored, _ = load_checkpoint(FIXTURE)
    assert trained_intensity(stored) is None
    raw = tmp_path / "input.zarr"
    io.write_volume(raw, volume[0], attrs=VOXEL)
    with caplog.at_level(logging.INFO, logger="mitoseg"):
        cfg = {"input": str(raw), "ckpt": "old.ckpt", "raw_range": None}
        input_intensity(OmegaConf.create(cfg), stored, raw)
    assert "records no statistics of its training data" in caplog.text


def _file_volumes(tmp_path: Path, name: str, raw: np.ndarray, labels: np.ndarray) -> FileVolumes:
    io.write_volume(tmp_path / f"{name}_raw.zarr", raw, attrs=VOXEL)
    io.write_volume(tmp_path / f"{name}_labels.zarr", labels, attrs=VOXEL)
    return FileVolumes(
        str(tmp_path / f"{name}_raw.zarr"),
        str(tmp_path / f"{name}_labels.zarr"),
        voxel_size_nm=VOXEL["voxel_size_nm"],
    )


def test_training_maps_train_and_val_of_different_dtypes_alike_and_records_it(
    tmp_path, volume, caplog
) -> None:
    raw, labels = volume
    data = VolumeDataModule(
        _file_volumes(tmp_path, "train", raw, labels),
        val=_file_volumes(tmp_path, "val", raw.astype(np.float32) * 257, labels),
        test=_file_volumes(tmp_path, "test", (raw // 4 + 100).astype(np.uint8), labels),
        target=Semantic(),
        cache_dir=str(tmp_path / "cache"),
        patch_shape=(8, 32, 32),
    )
    with caplog.at_level(logging.INFO, logger="mitoseg"):
        data.setup("fit")
    val = next(iter(data.val_dataloader()))["raw"]
    assert float(val.max()) <= 1.0  # before: 0..65535 reached the network
    np.testing.assert_array_equal(val[0, 0].numpy(), raw[:8, :32, :32] / np.float32(255))
    assert data.raw_intensity["val"].normalization.high == 65535
    # the test volume's contrast is a quarter of the training volume's: a warning with numbers
    assert "test volume" in caplog.text and "contrast x0.2" in caplog.text
    # the checkpoint records how the raw data was normalised and what it looked like
    checkpoint: dict = {}
    callback = ConfigInCheckpoint({"model": {}, "data": {"voxel_size_nm": [5, 5, 5]}})
    callback.on_save_checkpoint(SimpleNamespace(datamodule=data), None, checkpoint)
    stored = checkpoint[CHECKPOINT_KEY]["config"]["data"]
    assert stored["voxel_size_nm"] == [5, 5, 5]
    train = stored["raw_intensity"]["train"]
    assert train["normalization"] == {"method": "bit_depth", "low": 0.0, "high": 255.0}
    assert train["stats"]["dtype"] == "uint8" and train["stats"]["max"] == raw.max()
    assert {"p0_5", "p1", "p99", "p99_5", "mean", "std", "min"} <= set(train["stats"])
    assert stored["raw_intensity"]["val"]["stats"]["dtype"] == "float32"
    # and the eval sets carry each volume's own normalisation to the test-time predictor
    assert [s.raw_intensity.normalization.high for s in data.eval_sets] == [65535, 255]
