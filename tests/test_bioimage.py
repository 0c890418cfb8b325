"""bioimage.io model packages: ``mitoseg-export-model`` writes one that bioimageio.spec validates
and bioimageio.core runs like mitoseg does; ``mitoseg-predict ckpt=PACKAGE`` predicts exactly as
with the checkpoint; packages mitoseg cannot use are refused with what they lack."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from omegaconf import OmegaConf

from mitoseg import io
from mitoseg.cli.common import CheckpointError, load_checkpoint
from mitoseg.cli.export_model import main as export_main
from mitoseg.datasets.synthetic import make_volume
from mitoseg.io.intensity import Method, Normalization, measure
from mitoseg.train.callbacks import CHECKPOINT_KEY
from tests.helpers import predict_in_process

pytest.importorskip("bioimageio.spec")

FIXTURE = Path(__file__).parent / "fixtures" / "layout_v0.ckpt"  # tiles (16, 32, 32), 2 levels
VOXEL_NM = [30.0, 8.0, 8.0]


def _twelve_bit(raw: np.ndarray) -> np.ndarray:
    return raw.astype(np.uint16) * 16  # 0..4080: 12-bit data in uint16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The fixture checkpoint as if trained on 12-bit data at 30 x 8 x 8 nm."""
    saved = torch.load(FIXTURE, weights_only=True)
    config = saved[CHECKPOINT_KEY]["config"]
    raw, _ = make_volume((16, 48, 48), seed=3)
    config["data"] = {
        "voxel_size_nm": VOXEL_NM,
        "raw_intensity": {"train": measure(_twelve_bit(raw)).to_dict()},
    }
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    torch.save(saved, path)
    return path


@pytest.fixture(scope="module")
def sample(checkpoint: Path) -> Path:
    """A 12-bit TIFF stack like the training data."""
    path = checkpoint.parent / "sample.tif"
    tifffile.imwrite(path, _twelve_bit(make_volume((20, 40, 48), seed=4)[0]))
    return path


@pytest.fixture(scope="module")
def package(checkpoint: Path, sample: Path) -> Path:
    out = checkpoint.parent / "model.zip"
    cite = "Lucchi A et al. 2012=10.1007/978-3-642-33709-3_58"
    args = [str(checkpoint), str(out), "--no-test", "--author", "Ada Lovelace", "--cite", cite]
    assert export_main([*args, "--sample", str(sample)]) == 0
    return out


def test_package_validates_and_describes_tensors_voxels_and_processing(
    package: Path, checkpoint: Path, sample: Path
) -> None:
    from bioimageio.spec import load_model_description
    from bioimageio.spec.model import v0_5

    descr = load_model_description(package, perform_io_checks=True)
    assert isinstance(descr, v0_5.ModelDescr), descr.validation_summary.format()
    assert descr.validation_summary.status == "valid-format"
    (raw,), (probs,) = descr.inputs, descr.outputs
    assert [a.id for a in raw.axes] == ["batch", "channel", "z", "y", "x"]
    assert [a.id for a in probs.axes] == ["batch", "channel", "z", "y", "x"]
    for tensor in (raw, probs):
        assert [(a.scale, a.unit) for a in tensor.axes[2:]] == [(v, "nanometer") for v in VOXEL_NM]
    assert probs.axes[1].channel_names == ["foreground"]
    assert [a.size.step for a in raw.axes[2:]] == [2, 2, 2]  # the net's divisor
    # 12-bit data: (raw - 0) / 4095 before the net, the sigmoid after it
    ops = [p.id for p in raw.preprocessing]
    assert ops == ["ensure_dtype", "scale_linear", "ensure_dtype"] and raw.data.type == "uint16"
    assert raw.preprocessing[1].kwargs.gain == pytest.approx(1 / 4095)
    assert [p.id for p in probs.postprocessing] == ["sigmoid", "ensure_dtype"]
    assert descr.weights.pytorch_state_dict is not None and descr.weights.torchscript is not None
    stored, _ = load_checkpoint(checkpoint)
    assert descr.config.model_extra["mitoseg"]["config"] == OmegaConf.to_container(stored)
    assert [a.name for a in descr.authors] == ["Ada Lovelace"]
    assert any(c.doi == "10.1007/978-3-642-33709-3_58" for c in descr.cite)
    with zipfile.ZipFile(package) as archive:
        assert "## Validation" in archive.read("README.md").decode()
        assert archive.read("cover.png")[:8] == b"\x89PNG\r\n\x1a\n"
        test_input = np.load(archive.open("test_input.npy"))
    # the central tile of --sample
    np.testing.assert_array_equal(test_input[0, 0], tifffile.imread(sample)[2:18, 4:36, 8:40])


def test_bioimageio_core_runs_both_weight_formats_like_mitoseg(package: Path) -> None:
    """bioimage.io's pre-processing, network and sigmoid give the test output, which mitoseg's
    normalisation and network computed."""
    from bioimageio.core import create_prediction_pipeline, load_model_description
    from bioimageio.core.digest_spec import get_test_input_sample, get_test_output_sample

    descr = load_model_description(package)
    expected = get_test_output_sample(descr).members["probs"].data.values
    assert 0 < expected.min() < expected.max() < 1
    for weights in ("pytorch_state_dict", "torchscript"):
        with create_prediction_pipeline(descr, weight_format=weights, devices=["cpu"]) as pipe:
            result = pipe.predict_sample_without_blocking(get_test_input_sample(descr))
        np.testing.assert_allclose(
            result.members["probs"].data.values, expected, atol=1e-5, err_msg=weights
        )


def _predict(tmp_path: Path, model: Path, raw: Path, name: str) -> np.ndarray:
    overrides = [f"ckpt={model}", f"input={raw}", f"output={tmp_path / name}"]
    return io.open_volume(predict_in_process(tmp_path, *overrides, "trainer.precision=32-true"))[:]


def test_predict_from_the_package_equals_the_checkpoint(
    tmp_path: Path, package: Path, checkpoint: Path
) -> None:
    raw = tmp_path / "raw.zarr"
    io.write_volume(raw, _twelve_bit(make_volume((16, 32, 48), seed=5)[0]), attrs={
        "voxel_size_nm": VOXEL_NM})  # fmt: skip
    from_checkpoint = _predict(tmp_path, checkpoint, raw, "a.zarr")
    from_package = _predict(tmp_path, package, raw, "b.zarr")
    assert from_checkpoint.std() > 0
    np.testing.assert_array_equal(from_package, from_checkpoint)
    stored, weights = load_checkpoint(package)  # the config and weights themselves
    assert stored == load_checkpoint(checkpoint)[0]
    assert all(torch.equal(w, load_checkpoint(checkpoint)[1][k]) for k, w in weights.items())


def _rewrite(package: Path, out: Path, change) -> Path:
    """A copy of ``package`` with ``change(description, files)`` applied."""
    with zipfile.ZipFile(package) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    description = yaml.safe_load(files["rdf.yaml"])
    change(description, files)
    files["rdf.yaml"] = yaml.safe_dump(description).encode()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out


def test_packages_mitoseg_cannot_use_are_refused_naming_what_is_missing(
    tmp_path: Path, package: Path
) -> None:
    def foreign(d, files):
        del d["config"]["mitoseg"]

    def torchscript_only(d, files):
        del d["weights"]["pytorch_state_dict"]

    def replaced_weights(d, files):
        files["weights.pt"] = files["weights.pt"][:-8] + b"\0" * 8

    def newer(d, files):
        d["config"]["mitoseg"]["format"] = 99

    cases = {
        foreign: r"foreign\.zip \('.*'\) has no config\.mitoseg\.config section: .*network",
        torchscript_only: r"no weights\.pytorch_state_dict \(it has \['torchscript'\]\)",
        replaced_weights: r"weights weights\.pt have sha256 \w+, the description records",
        newer: r"config\.mitoseg\.format=99 was written by a newer mitoseg",
    }
    for change, message in cases.items():
        bad = _rewrite(package, tmp_path / f"{change.__name__.replace('_', '')}.zip", change)
        if change is foreign:
            bad = bad.rename(tmp_path / "foreign.zip")
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(bad)
    not_a_package = tmp_path / "model.zip"
    with zipfile.ZipFile(not_a_package, "w") as archive:
        archive.writestr("weights.pt", b"")
    with pytest.raises(CheckpointError, match=r"model\.zip holds no rdf\.yaml or bioimageio\.yaml"):
        load_checkpoint(not_a_package)
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"broken\.zip is not a readable zip file"):
        load_checkpoint(tmp_path / "broken.zip")


def test_export_refuses_an_existing_output_and_a_bad_citation(
    tmp_path: Path, package: Path, checkpoint: Path, capsys
) -> None:
    assert export_main([str(checkpoint), str(package), "--no-test"]) == 2
    assert "model.zip already exists; pass --overwrite" in capsys.readouterr().err
    out = str(tmp_path / "x.zip")
    assert export_main([str(checkpoint), out, "--no-test", "--cite", "no reference"]) == 2
    assert "--cite 'no reference': expected TEXT=DOI_OR_URL" in capsys.readouterr().err
    assert export_main([str(checkpoint), str(checkpoint), "--no-test"]) == 2  # never the input
    capsys.readouterr()
    eight_bit = tmp_path / "eight_bit.tif"
    tifffile.imwrite(eight_bit, np.zeros((16, 32, 32), np.uint8))
    assert export_main([str(checkpoint), out, "--no-test", "--sample", str(eight_bit)]) == 2
    assert "is uint8, the model was trained on uint16 data" in capsys.readouterr().err
    assert not (tmp_path / "x.zip").exists()
    users = tmp_path / "users.zip"  # a zip mitoseg did not write: --overwrite keeps it
    with zipfile.ZipFile(users, "w") as archive:
        archive.writestr("thesis.tex", b"\\documentclass{article}")
    before = users.read_bytes()
    assert export_main([str(checkpoint), str(users), "--no-test", "--overwrite"]) == 2
    assert "is not a model package written by mitoseg-export-model" in capsys.readouterr().err
    assert users.read_bytes() == before
    assert export_main([str(checkpoint), str(package), "--no-test", "--overwrite"]) == 0  # ours


@pytest.mark.slow
def test_trained_checkpoint_exports_and_passes_bioimageio_core_test(tmp_path: Path) -> None:
    """Two training steps on synthetic data, then ``mitoseg-export-model`` with bioimageio.core's
    whole test (both weight formats, test output reproduced, several input sizes)."""
    from mitoseg.cli.train import train
    from tests.test_config import compose_train

    cfg = compose_train(
        [
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.train.shape=[32,64,64]",
            "data.patch_shape=[16,32,32]",
            "model.widths=[4,8]",
            "trainer.max_steps=2",
            "trainer.max_time=null",
            "trainer.enable_progress_bar=false",
            "data.samples_per_epoch=2",
            "data.batch_size=1",
            "predict.tile_shape=[16,32,32]",
            "logger=none",
            "test=false",
        ],
        tmp_path / "run",
        keep_hydra=False,
    )
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert export_main([str(ckpt), str(tmp_path / "model.zip")]) == 0  # runs the core test


@pytest.mark.slow
def test_percentile_normalisation_is_reproduced_by_bioimageio_core(
    tmp_path: Path, checkpoint: Path
) -> None:
    """A model trained on data normalised by percentiles (signed floats): scale_range then
    scale_linear put the input's 0.5 / 99.5 % where the training data had them."""
    from mitoseg.bioimage.export import run_bioimageio_test

    saved = torch.load(checkpoint, weights_only=True)
    raw = make_volume((16, 48, 48), seed=3)[0].astype(np.float32)
    record = measure((raw - 120.0) / 40.0)
    assert record.normalization.method == Method.PERCENTILE
    # the training data's 0.5 / 99.5 % at 0.1 / 0.8, not 0 / 1: a scale_linear after scale_range
    low, high = record.stats.p0_5, record.stats.p99_5
    width = (high - low) / 0.7
    mapping = Normalization(Method.PERCENTILE, low - 0.1 * width, low + 0.9 * width)
    record = dataclasses.replace(record, normalization=mapping)
    saved[CHECKPOINT_KEY]["config"]["data"]["raw_intensity"] = {"train": record.to_dict()}
    torch.save(saved, tmp_path / "signed.ckpt")
    out = tmp_path / "signed.zip"
    assert export_main([str(tmp_path / "signed.ckpt"), str(out), "--no-test"]) == 0
    with zipfile.ZipFile(out) as archive:
        steps = yaml.safe_load(archive.read("rdf.yaml"))["inputs"][0]["preprocessing"]
    assert [p["id"] for p in steps] == [
        "ensure_dtype",
        "scale_range",
        "scale_linear",
        "ensure_dtype",
    ]
    assert (
        steps[1]["kwargs"]["min_percentile"] == 0.5 and steps[1]["kwargs"]["max_percentile"] == 99.5
    )
    assert steps[2]["kwargs"] == pytest.approx({"gain": 0.7, "offset": 0.1})
    summary = run_bioimageio_test(out)
    assert summary.status == "passed", summary.format()


def test_training_does_not_resume_from_a_package(tmp_path: Path, package: Path) -> None:
    from mitoseg.cli.train import resume_checkpoint
    from tests.test_config import compose_train

    cfg = compose_train([f"ckpt={package}"], tmp_path)
    with pytest.raises(CheckpointError, match=r"model\.zip is a model package: .* init="):
        resume_checkpoint(cfg)


def test_reading_packages_needs_no_bioimageio_library() -> None:
    """mitoseg-predict reads packages with torch and PyYAML: the base install suffices."""
    import ast

    import mitoseg.bioimage.package
    import mitoseg.cli.common

    for module in (mitoseg.bioimage.package, mitoseg.cli.common, mitoseg.bioimage):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [name for name in imported if name.startswith("bioimageio")], module.__name__
