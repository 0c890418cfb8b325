"""Every experiment, data, model and target config composes and instantiates."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

import mitoseg.cli  # noqa: F401  (registers the `len` resolver)
from mitoseg.cli.common import CONFIG_PATH, build_datamodule, compose_config
from mitoseg.cli.train import fill_compute
from mitoseg.decode.base import with_voxel_size

CONF = Path(CONFIG_PATH)
ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
NEEDS = {
    "lucchipp": ["data.root=/data"],
    "mitoem_r": ["data.root=/data"],
    "mitoem_h": ["data.root=/data"],
    "files": ["data.train.raw=r", "data.train.labels=l", "data.test.raw=t", "data.test.labels=u"],
}


def compose_train(overrides: list[str], output_dir: Path, *, keep_hydra: bool = True) -> DictConfig:
    """The config mitoseg-train composes, run folder ``output_dir``, Hydra's node set as the
    current HydraConfig; ``keep_hydra=False``: without that node in the config, as the entry
    point gets it."""
    cfg = compose_config("train", overrides, hydra_node=True)
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
        if not keep_hydra:
            del cfg["hydra"]
    return cfg


def build(cfg):
    fill_compute(cfg)  # precision=auto, channels_last=auto: this machine's, as mitoseg-train
    datamodule = build_datamodule(cfg)
    net = instantiate(cfg.model)
    module = instantiate(cfg.module, net=net, loss=instantiate(cfg.target.loss))
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    return datamodule, module, trainer


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment: str, tmp_path: Path) -> None:
    overrides = [f"experiment={experiment}", "trainer.accelerator=cpu"]
    cfg = compose_train(overrides, tmp_path)
    data_name = HydraConfig.get().runtime.choices["data"]
    cfg = compose_train(overrides + NEEDS.get(data_name, []), tmp_path)
    datamodule, module, trainer = build(cfg)
    assert module.net is not None and trainer.max_steps == cfg.trainer.max_steps
    assert datamodule.patch_shape == tuple(cfg.data.patch_shape)


def resolved(overrides: list[str], tmp_path: Path) -> dict:
    """The composed config, resolved, without the hydra node (runtime keys, choices)."""
    cfg = compose_train(overrides, tmp_path, keep_hydra=False)
    return OmegaConf.to_container(cfg, resolve=True)


INSTANCE_EXPERIMENTS = {"mitoem": ["data.root=/data"], "synthetic_instance": []}
ALIASES = {"mitoem": "mitoem", "synthetic_instance": "synthetic"}
DECODERS = {"a": "AffinityWatershed", "ac": "ACWatershed", "bc": "BCWatershed"}


@pytest.mark.parametrize("target", ["a", "ac", "bc"])
@pytest.mark.parametrize("base", sorted(INSTANCE_EXPERIMENTS))
def test_experiment_alias_is_the_base_experiment_with_its_target(
    base: str, target: str, tmp_path: Path
) -> None:
    needs = INSTANCE_EXPERIMENTS[base]
    alias = resolved([f"experiment={ALIASES[base]}_{target}", *needs], tmp_path)
    assert alias == resolved([f"experiment={base}", f"target={target}", *needs], tmp_path)
    # The target drives the decoder and its sweep; target= on the command line beats the alias's.
    assert alias["target"]["name"] == target
    assert alias["postprocess"]["_target_"].endswith("." + DECODERS[target])
    assert set(alias["evaluate"]["sweep"]) <= set(alias["postprocess"])
    other = next(t for t in DECODERS if t != target)
    overridden = resolved(
        [f"experiment={ALIASES[base]}_{target}", f"target={other}", *needs], tmp_path
    )
    assert overridden["target"]["name"] == other
    assert overridden["postprocess"]["_target_"].endswith("." + DECODERS[other])


@pytest.mark.parametrize("base", sorted(INSTANCE_EXPERIMENTS))
def test_instance_experiment_defaults_to_target_bc(base: str, tmp_path: Path) -> None:
    needs = INSTANCE_EXPERIMENTS[base]
    cfg = resolved([f"experiment={base}", *needs], tmp_path)
    assert cfg == resolved([f"experiment={ALIASES[base]}_bc", *needs], tmp_path)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_builds_with_the_target_channel_count(model: str, tmp_path: Path) -> None:
    cfg = compose_train([f"model={model}", "data.patch_shape=[16,32,32]"], tmp_path)
    net = instantiate(cfg.model)
    assert net(torch.zeros(1, 1, 16, 32, 32)).shape[1] == len(cfg.target.channels)


DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml") if p.stem != "base")
TARGETS = sorted(p.stem for p in (CONF / "target").glob("*.yaml"))


@pytest.mark.parametrize("data", DATA)
def test_every_data_config_composes(data: str, tmp_path: Path) -> None:
    cfg = compose_train([f"data={data}", *NEEDS.get(data, [])], tmp_path)
    assert build_datamodule(cfg).batch_size > 0


def test_misspelt_keys_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="patch_shap"):
        compose_train(["data.patch_shap=[8,8,8]"], tmp_path)
    with pytest.raises(ConfigCompositionException, match="nosuchmodel"):
        compose_train(["model=nosuchmodel"], tmp_path)


def test_predict_and_segment_configs_compose() -> None:
    predict = compose_config("predict", ["ckpt=a", "input=b", "output=c"])
    segment = compose_config("segment", ["probs=p", "postprocess.threshold=0.7"])
    assert predict.overlap is None and segment.postprocess.threshold == 0.7


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_agrees_with_its_model_loss_and_decoder(target: str, tmp_path: Path) -> None:
    cfg = compose_train([f"target={target}", "data.patch_shape=[8,32,32]"], tmp_path)
    transform, loss = instantiate(cfg.target.transform), instantiate(cfg.target.loss)
    assert list(transform.channels) == list(cfg.target.channels)
    labels = np.zeros((8, 32, 32), dtype=np.uint32)
    labels[2:6, 4:20, 4:12], labels[2:6, 4:20, 12:24] = 1, 2  # two touching objects
    target_array = torch.from_numpy(transform(labels))[None]
    net = instantiate(cfg.model)
    logits = net(torch.zeros(1, 1, 8, 32, 32))
    assert logits.shape == target_array.shape
    assert torch.isfinite(loss(logits, target_array))
    decoder = with_voxel_size(instantiate(cfg.postprocess), (5, 5, 5), "probs")  # as the runner
    probs = np.nan_to_num(target_array[0].numpy(), nan=1.0)
    assert decoder(probs).shape == labels.shape


def test_offsets_drive_affinity_channels_model_and_decoder(tmp_path: Path) -> None:
    offsets = "[[-1,0,0],[0,-1,0],[0,0,-1],[0,-4,0],[0,0,-4]]"
    cfg = compose_train(["target=ac", f"target.offsets={offsets}"], tmp_path)
    assert len(cfg.target.channels) == 6 and cfg.target.channels[-1] == "contour"
    assert cfg.model.out_channels == 6
    assert instantiate(cfg.target.loss).sizes == [5, 1]
    assert len(instantiate(cfg.postprocess).offsets) == 5


def test_anisotropic_data_gives_in_plane_targets_and_no_z_transposes(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=synthetic_bc"], tmp_path)
    assert cfg.target.transform.in_plane is True and cfg.data.augment.isotropic is False
    cfg = compose_train(["target=bc"], tmp_path)
    assert cfg.target.transform.in_plane is False and cfg.data.augment.isotropic is True


def test_top_level_conf_is_the_packaged_config_folder() -> None:
    link = ROOT / "conf"
    assert link.is_symlink() and (link / "train.yaml").is_file()
    assert (link / "train.yaml").samefile(ROOT / "src" / "mitoseg" / "conf" / "train.yaml")
    assert (link / "train.yaml").read_bytes() == (CONF / "train.yaml").read_bytes()
