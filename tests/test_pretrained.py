"""Pretrained models (issue 21.1, 21.2): a registry entry made from a checkpoint, loaded
weights-only with its sha256 checked, ``mitoseg-predict pretrained=<name>`` equal to
``ckpt=<the checkpoint>``, and ``mitoseg-train init=<name or checkpoint>`` (fine-tuning: matching
weights copied, the layers of another target reinitialised and listed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mitoseg import io, pretrained
from mitoseg.cli.common import CheckpointError, compose_config, load_checkpoint
from mitoseg.cli.predict import predict
from mitoseg.cli.train import train
from tests.test_config import compose_train

TINY = [
    "data.train.shape=[24,48,48]",
    "data.patch_shape=[16,32,32]",
    "model.widths=[4,8]",
    "data.samples_per_epoch=2",
    "data.augment=null",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "+trainer.num_sanity_val_steps=0",
]


def _train(folder: Path, *overrides: str, cache: Path | None = None) -> Path:
    """A tiny in-process run in ``folder`` (data cached in ``cache``, by default beside it);
    returns its last checkpoint."""
    cache = cache or folder.parent / "cache"
    cfg = compose_train([*TINY, f"data.cache_dir={cache}", *overrides], folder, keep_hydra=False)
    train(cfg)
    return folder / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 1-step semantic run, tested (metrics.json: the threshold chosen on validation); its
    best checkpoint, the one metrics.json scores."""
    run = tmp_path_factory.mktemp("pretrained") / "run"
    _train(run, "trainer.max_steps=1", "evaluate.sweep.threshold=[0.2,0.9]")
    return run / "checkpoints" / json.loads((run / "metrics.json").read_text())["checkpoint"]


def _test_raw(tiny: Path) -> Path:
    """The run's synthetic test volume (converted in its cache)."""
    return next((tiny.parents[2] / "cache").glob("synthetic-*seed1000*")) / "raw.zarr"


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[1]


# --- init= -------------------------------------------------------------------------------------


def test_init_from_a_checkpoint_copies_weights_and_lists_the_reinitialised_output_layer(
    tiny: Path, tmp_path: Path, caplog
) -> None:
    """semantic (1 channel) -> bc (2 channels): every tensor but the output convolution's is
    the source's (lr=0); the output layer is listed in the log, the checkpoint's run config and
    metrics.json."""
    source = _tensors(tiny)
    with caplog.at_level(logging.INFO, logger="mitoseg"):
        last = _train(
            tmp_path / "bc", f"init={tiny}", "target=bc", "trainer.max_steps=1",
            "module.optimizer.lr=0", "evaluate.sweep.seed_threshold=[0.85]",
            "~evaluate.sweep.contour_threshold", "~evaluate.sweep.mask_threshold",
            cache=tiny.parents[2] / "cache",
        )  # fmt: skip
    tuned = _tensors(last)
    reshaped = sorted(k for k in source if source[k].shape != tuned[k].shape)
    assert reshaped and all(k.rsplit(".", 1)[0] == reshaped[0].rsplit(".", 1)[0] for k in reshaped)
    layer = reshaped[0].rsplit(".", 1)[0]
    for name, tensor in source.items():  # lr=0: the weights are still those copied
        if name.rsplit(".", 1)[0] != layer and "running" not in name and "batches" not in name:
            torch.testing.assert_close(tuned[name], tensor, msg=name)
    assert f"1 layer(s) reinitialised as their shapes do not fit: {layer}" in caplog.text
    run = torch.load(last, weights_only=True)["mitoseg"]["run"]
    report = run["init_weights"]
    assert report["source"] == str(tiny) and report["reinitialised"] == [layer]
    assert report["target"] == {"source": "semantic", "here": "bc"}
    assert report["copied_tensors"] == len(source) - len(reshaped)
    assert json.loads((tmp_path / "bc" / "metrics.json").read_text())["init_weights"] == report


def test_init_with_another_network_is_refused_naming_the_settings(tiny: Path, tmp_path) -> None:
    cfg = compose_train([*TINY, f"init={tiny}", "model.widths=[4,16]"], tmp_path, keep_hydra=False)
    with pytest.raises(
        CheckpointError,
        match=r"init=.*\.ckpt: another network .*model\.widths=\[4, 8\] there, \[4, 16\] here",
    ):
        train(cfg)


def test_init_without_a_model_choice_takes_the_sources_network(
    tiny: Path, tmp_path, caplog
) -> None:
    """No model= / model.* given: the run's network becomes the checkpoint's (with this run's
    output channels), so that init= works with any experiment; the change is logged."""
    from hydra.core.hydra_config import HydraConfig

    from mitoseg.cli.pretrained import adopt_init_model

    cfg = compose_train([f"init={tiny}", "target=bc"], tmp_path, keep_hydra=False)
    assert list(cfg.model.widths) != [4, 8]
    with caplog.at_level(logging.WARNING, logger="mitoseg"):
        changed = adopt_init_model(cfg, HydraConfig.get().overrides.task)
    assert changed and "model.widths=[4, 8] there" in "; ".join(changed)
    assert list(cfg.model.widths) == [4, 8] and cfg.model.out_channels == 2
    assert "this run's network is the source's, mitoseg.train.nets.ResidualUNet3D(" in caplog.text
    chosen = compose_train([f"init={tiny}", "model.widths=[4,16]"], tmp_path, keep_hydra=False)
    assert adopt_init_model(chosen, HydraConfig.get().overrides.task) == []
    assert list(chosen.model.widths) == [4, 16]  # the user's choice stays (and init= refuses it)


def test_init_with_an_unknown_name_lists_the_available_ones(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(pretrained.ENV, str(tmp_path / "registry"))
    (tmp_path / "registry" / "mine").mkdir(parents=True)
    (tmp_path / "registry" / "mine" / pretrained.MANIFEST).write_text("{}")
    cfg = compose_train([*TINY, "init=lucchi"], tmp_path, keep_hydra=False)
    with pytest.raises(
        pretrained.PretrainedError, match=r"unknown pretrained model 'lucchi'; available: .*mine"
    ):
        train(cfg)
    (tmp_path / "registry" / "half").mkdir()  # a folder without its manifest and weights
    with pytest.raises(
        pretrained.PretrainedError, match=r"half has no manifest\.json .*not installed"
    ):
        pretrained.find("half")
    cfg = compose_train([*TINY, "init=runs/nothing.ckpt"], tmp_path, keep_hydra=False)
    with pytest.raises(CheckpointError, match=r"checkpoint not found: runs/nothing\.ckpt"):
        train(cfg)


def test_init_from_a_pretrained_name_copies_every_tensor(entry: Path, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from mitoseg.cli.pretrained import init_net

    cfg = compose_train([*TINY, "init=tiny"], tmp_path, keep_hydra=False)
    net = instantiate(cfg.model)
    report = init_net("tiny", net, cfg)
    assert report["source"] == "pretrained:tiny" and report["reinitialised"] == []
    weights = torch.load(entry / "tiny" / pretrained.WEIGHTS, weights_only=True)
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(tensor, weights[name])


# --- the registry --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def made(tiny: Path) -> Path:
    """The registry folder holding ``tiny``: the run's last checkpoint, its metrics.json and a
    scored check crop of the synthetic test volume, made as the lead makes ``lucchipp``."""
    from mitoseg.cli.pretrained import main

    registry = tiny.parents[2] / "registry"
    volume = _test_raw(tiny).parent
    args = ["make", str(tiny.parents[1]), "--name", "tiny", "--dest", str(registry)]  # run folder
    args += ["--check", str(volume / "raw.zarr"), str(volume / "labels.zarr")]
    assert main([*args, "--check-box", "0:16,0:40,8:48"]) == 0
    return registry


@pytest.fixture()
def entry(made: Path, monkeypatch) -> Path:
    """``made`` on the search path ($MITOSEG_PRETRAINED)."""
    monkeypatch.setenv(pretrained.ENV, str(made))
    return made


def test_entry_holds_fp32_weights_that_load_weights_only_and_the_chosen_decoder(
    entry: Path, tiny: Path
) -> None:
    folder = entry / "tiny"
    weights = torch.load(folder / pretrained.WEIGHTS, weights_only=True)
    original = _tensors(tiny)
    assert weights.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(weights[name], tensor), name
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())
    manifest = json.loads((folder / pretrained.MANIFEST).read_text())
    assert manifest["sha256"] == pretrained.sha256_of(folder / pretrained.WEIGHTS)
    metrics = json.loads((tiny.parents[1] / "metrics.json").read_text())
    chosen = metrics["selected"]["threshold"]
    assert manifest["config"]["postprocess"]["threshold"] == chosen
    assert manifest["scores"]["test"]["fg_iou"] == metrics["final"]["fg_iou"]
    assert manifest["config"]["data"]["voxel_size_nm"] == [5.0, 5.0, 5.0]
    assert "raw_intensity" in manifest["config"]["data"]
    card = (folder / pretrained.CARD).read_text()
    assert "{{" not in card and f"| {metrics['final']['fg_iou']:.4f}" in card
    assert f"foreground IoU {manifest['check']['fg_iou']:.4f}" in card
    assert pretrained.load_weights(pretrained.find("tiny")).keys() == original.keys()


def test_list_and_make_refusals(entry: Path, tiny: Path, capsys) -> None:
    from mitoseg.cli.pretrained import main

    assert main(["list"]) == 0
    listed = capsys.readouterr().out.splitlines()  # the shipped models, then ours
    assert any(line.startswith("tiny\tfg_iou ") for line in listed), listed
    args = ["make", str(tiny), "--name", "tiny", "--dest", str(entry)]
    assert main(args) == 2  # an entry is there
    assert "already holds an entry; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--check", "nothing.tif", "nothing.tif"]) == 2
    assert "--check: nothing.tif does not exist" in capsys.readouterr().err


def test_changed_weights_are_refused_naming_the_file_and_both_hashes(
    entry: Path, tmp_path: Path, monkeypatch
) -> None:
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(entry / "tiny", copy)
    monkeypatch.setenv(pretrained.ENV, str(tmp_path))
    weights = torch.load(copy / pretrained.WEIGHTS, weights_only=True)
    next(iter(weights.values())).add_(1.0)
    torch.save(weights, copy / pretrained.WEIGHTS)
    found = pretrained.sha256_of(copy / pretrained.WEIGHTS)
    recorded = pretrained.find("tiny").sha256
    with pytest.raises(pretrained.PretrainedError) as error:
        pretrained.load_weights(pretrained.find("tiny"))
    assert str(copy / pretrained.WEIGHTS) in str(error.value)
    assert found in str(error.value) and recorded in str(error.value)


def _predict(raw: Path, tmp_path: Path, output: str, *overrides: str) -> np.ndarray:
    cfg = compose_config(
        "predict",
        [
            f"input={raw}", f"output={tmp_path / output}", f"cache_dir={tmp_path / 'cache'}",
            "trainer.enable_progress_bar=false", *overrides,
        ],
    )  # fmt: skip
    return io.open_volume(predict(cfg))[:]


def test_predict_with_the_name_equals_predict_with_the_checkpoint(entry: Path, tiny: Path) -> None:
    """Same weights, same tiles, TTA and intensity mapping, from the manifest alone; with
    ``segmentation=``, the mask of the decoder and threshold chosen on validation too."""
    from mitoseg.decode.masks import BinarizeMedian
    from mitoseg.decode.run import run_decoder

    folder = entry / "predict"
    folder.mkdir(exist_ok=True)
    mask = f"segmentation={folder / 'mask.zarr'}"
    by_name = _predict(_test_raw(tiny), folder, "named.zarr", "pretrained=tiny", mask)
    by_checkpoint = _predict(_test_raw(tiny), folder, "checkpoint.zarr", f"ckpt={tiny}")
    np.testing.assert_array_equal(by_name, by_checkpoint)
    assert by_name.shape[0] == 1 and by_name.max() > 0
    chosen = pretrained.find("tiny").config["postprocess"]
    assert chosen["threshold"] != 0.5  # the sweep's [0.2, 0.9], not the decoder's default
    decoder = BinarizeMedian(threshold=chosen["threshold"], median_size=chosen["median_size"])
    run_decoder(decoder, folder / "named.zarr", folder / "expected.zarr")
    expected = io.open_volume(folder / "expected.zarr")[:]
    np.testing.assert_array_equal(io.open_volume(folder / "mask.zarr")[:], expected)


def test_predict_takes_one_of_ckpt_or_pretrained_and_names_the_models(
    entry: Path, tiny: Path, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError, match=r"missing value for 'ckpt'.*models: .*\btiny\b"):
        _predict(_test_raw(tiny), tmp_path, "a.zarr")
    with pytest.raises(CheckpointError, match="pass one of them"):
        _predict(_test_raw(tiny), tmp_path, "b.zarr", "pretrained=tiny", f"ckpt={tiny}")
    with pytest.raises(
        pretrained.PretrainedError, match=r"unknown .* 'tinny'; available: .*\btiny\b"
    ):
        _predict(_test_raw(tiny), tmp_path, "c.zarr", "pretrained=tinny")


def test_segment_with_the_name_decodes_with_the_threshold_chosen_on_validation(
    entry: Path, tmp_path: Path
) -> None:
    from mitoseg.cli.segment import postprocess_config

    cfg = compose_config("segment", ["probs=p.zarr", "pretrained=tiny"])
    chosen = json.loads((entry / "tiny" / pretrained.MANIFEST).read_text())["scores"]["selected"]
    decoder = postprocess_config(cfg)
    assert decoder.threshold == chosen["threshold"] != cfg.postprocess.threshold
    assert decoder.median_size == chosen["median_size"]


def test_card_template_with_an_unknown_field_is_refused() -> None:
    from mitoseg.pretrained.make import render_card

    assert render_card("IoU {{ test_fg_iou }}", {"test_fg_iou": "0.9"}) == "IoU 0.9"
    with pytest.raises(pretrained.PretrainedError, match=r"unknown fields \['test_iou'\]"):
        render_card("{{test_iou}}", {"test_fg_iou": "0.9"})
