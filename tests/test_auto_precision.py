"""precision=auto and channels_last=auto (mitoseg.hardware): chosen per machine, a given value
always kept, the choice logged and stored; bf16 prediction stays within tolerance of fp32."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import numpy as np
import pytest

import mitoseg.cli  # noqa: F401  (registers the `len` resolver)
from mitoseg import hardware, io
from mitoseg.cli.common import compose_config
from mitoseg.cli.train import fill_compute
from mitoseg.datasets.synthetic import make_volume
from mitoseg.hardware import resolve_channels_last, resolve_compute, resolve_precision
from tests.helpers import predict_in_process

# ResidualUNet3D 4-8-16 trained 30 steps on synthetic data (validation IoU 0.89), weights only:
# mitoseg-train data.train.shape=[32,64,64] data.patch_shape=[16,32,32] model.widths=[4,8,16]
#   trainer.max_steps=30 data.samples_per_epoch=6 evaluate.sweep.threshold=[0.3,0.5] logger=none
FIXTURE = Path(__file__).parent / "fixtures" / "synthetic_tiny.ckpt"
BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})
AMX = frozenset({"avx512f", "amx_tile", "amx_bf16"})
NO_BF16 = frozenset({"avx2", "avx512f", "avx512bw"})  # AVX512 without bf16: emulated, slower


def test_auto_precision_is_bf16_only_on_cpus_with_bf16_instructions() -> None:
    assert resolve_precision("auto", "cpu", BF16)[0] == "bf16-mixed"
    assert resolve_precision("auto", "cpu", AMX)[0] == "bf16-mixed"
    precision, why = resolve_precision("auto", "cpu", NO_BF16)
    assert precision == "32-true" and "avx512_bf16" in why
    assert resolve_precision("auto", "mps", BF16)[0] == "32-true"


def test_a_given_precision_is_kept_whatever_the_machine() -> None:
    assert resolve_precision("32-true", "cpu", BF16) == ("32-true", "given")
    assert resolve_precision(32, "cpu", BF16) == ("32-true", "given")  # Lightning's spelling
    assert resolve_precision("bf16-mixed", "cpu", NO_BF16) == ("bf16-mixed", "given")


def test_auto_channels_last_follows_the_device_and_a_given_value_is_kept() -> None:
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert resolve_channels_last("auto", "cpu", capability="AVX512")[0] is x86
    assert resolve_channels_last("auto", "cpu", capability="DEFAULT")[0] is False
    assert resolve_channels_last("auto", "cuda", "bf16-mixed")[0] is True
    assert resolve_channels_last("auto", "cuda", "32-true")[0] is False
    assert resolve_channels_last("auto", "mps")[0] is False
    assert resolve_channels_last(False, "cpu", capability="AVX512") == (False, "given")
    assert resolve_channels_last("true", "mps") == (True, "given")
    with pytest.raises(ValueError, match="channels_last='fast'"):
        resolve_channels_last("fast", "cpu")


def test_the_choice_and_its_reason_are_logged(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="mitoseg.hardware"):
        compute = resolve_compute("auto", "auto", "cpu", flags=BF16)
    assert compute.precision == "bf16-mixed" and compute.device == "cpu"
    assert "bf16-mixed (auto: this CPU has avx512_bf16" in caplog.text
    assert compute.record() == {
        "device": "cpu",
        "precision": "bf16-mixed",
        "channels_last": compute.channels_last,
    }


@pytest.mark.parametrize(
    ("flags", "overrides", "expected"),
    [
        (BF16, [], "bf16-mixed"),
        (NO_BF16, [], "32-true"),
        (BF16, ["trainer.precision=32-true"], "32-true"),  # the user's value wins
        (BF16, ["experiment=lucchipp_cpu", "data.root=/data"], "32-true"),  # pinned: fp32 recipe
    ],
)
def test_training_resolves_auto_into_the_run_config(monkeypatch, flags, overrides, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    cfg = compose_config("train", ["trainer.accelerator=cpu", *overrides])
    fill_compute(cfg)
    assert cfg.trainer.precision == expected
    assert isinstance(cfg.module.channels_last, bool)
    assert (
        cfg.predict.channels_last == cfg.module.channels_last
    )  # what test time and checkpoints get


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> tuple[Path, np.ndarray]:
    raw, labels = make_volume((32, 64, 64), seed=11)
    path = tmp_path_factory.mktemp("bf16") / "raw.zarr"
    io.write_volume(path, raw, attrs={"voxel_size_nm": [5.0, 5.0, 5.0]})
    return path, labels > 0


def _predict(tmp_path: Path, raw: Path, name: str, *extra: str) -> Path:
    """The fixture's float32 probabilities of ``raw``, written to ``<tmp_path>/<name>.zarr``."""
    output = tmp_path / f"{name}.zarr"
    return predict_in_process(
        tmp_path, f"ckpt={FIXTURE}", f"input={raw}", f"output={output}", "dtype=float32", *extra
    )


def _fg_iou(mask: np.ndarray, truth: np.ndarray) -> float:
    return float((mask & truth).sum() / (mask | truth).sum())


def test_bf16_prediction_stays_within_tolerance_of_fp32(tmp_path, volume, monkeypatch) -> None:
    raw, truth = volume
    fp32 = io.open_volume(_predict(tmp_path, raw, "fp32", "trainer.precision=32-true"))
    monkeypatch.setattr(hardware, "cpu_flags", lambda: BF16)  # auto chooses bf16 here
    auto = io.open_volume(_predict(tmp_path, raw, "auto"))
    assert fp32.attrs["compute"]["precision"] == "32-true"
    assert auto.attrs["compute"] == {
        "device": "cpu",
        "precision": "bf16-mixed",
        "channels_last": resolve_channels_last("auto", "cpu")[0],
    }
    a, b = fp32[0], auto[0]
    iou_fp32, iou_bf16 = _fg_iou(a > 0.5, truth), _fg_iou(b > 0.5, truth)
    assert iou_fp32 > 0.5  # a model trained enough for the comparison to mean something
    # measured: 0.8318 and 0.8321, mean |difference| of the probabilities 0.0004
    assert abs(iou_bf16 - iou_fp32) <= 0.002
    assert np.abs(a - b).mean() < 0.005 and not np.array_equal(a, b)  # bf16 did run


def test_a_resume_in_another_precision_is_refused(tmp_path, volume) -> None:
    from mitoseg.predict.writer import PredictJob, prepare_output

    raw, _ = volume
    job = PredictJob(_plan(raw), tmp_path / "p.zarr", compute={"precision": "32-true"})
    prepare_output(job, overwrite=False)  # a partial output and its journal
    other = PredictJob(job.plan, job.output, compute={"precision": "bf16-mixed"})
    with pytest.raises(io.VolumeError, match="computed in .*32-true.*bf16-mixed"):
        prepare_output(other, overwrite=False)
    prepare_output(job, overwrite=False)  # the same precision resumes


def _plan(raw: Path):
    from mitoseg.predict.blocks import BlockPlan

    return BlockPlan(
        raw=str(raw),
        shape=(32, 64, 64),
        channels=("foreground",),
        dtype="uint8",
        block_shape=(32, 64, 64),
        tile_shape=(16, 32, 32),
        overlap=0.5,
        blend="gaussian",
        tta="none",
        checkpoint=str(FIXTURE),
    )


def test_the_module_resolves_auto_itself_when_built_without_the_cli() -> None:
    from mitoseg.train.module import SegmentationModule
    from mitoseg.train.nets import ResidualUNet3D

    module = SegmentationModule(ResidualUNet3D(1, 1, widths=[2, 4]), channels_last="auto")
    expected = resolve_compute("auto", "auto").channels_last
    assert module.channels_last is expected
    assert (
        SegmentationModule(ResidualUNet3D(1, 1, widths=[2, 4]), channels_last=False).channels_last
        is False
    )
