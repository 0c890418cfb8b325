"""Every experiment, data, model and target config composes and instantiates."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import open_dict

import mitoseg.cli  # noqa: F401  (registers the `len` resolver)
from mitoseg.cli.common import CONFIG_PATH

CONF = Path(CONFIG_PATH)
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
NEEDS = {
    "lucchipp": ["data.root=/data"],
    "files": ["data.train.raw=r", "data.train.labels=l", "data.test.raw=t", "data.test.labels=u"],
}


def compose_train(overrides: list[str], tmp_path: Path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path)
    return cfg


def build(cfg):
    datamodule = instantiate(cfg.data, target=instantiate(cfg.target.transform))
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


@pytest.mark.parametrize("model", MODELS)
def test_every_model_builds_with_the_target_channel_count(model: str, tmp_path: Path) -> None:
    cfg = compose_train([f"model={model}", "data.patch_shape=[16,32,32]"], tmp_path)
    net = instantiate(cfg.model)
    assert net(torch.zeros(1, 1, 16, 32, 32)).shape[1] == len(cfg.target.channels)


@pytest.mark.parametrize("data", ["synthetic", "lucchipp", "files"])
def test_every_data_config_composes(data: str, tmp_path: Path) -> None:
    cfg = compose_train([f"data={data}", *NEEDS.get(data, [])], tmp_path)
    assert instantiate(cfg.data, target=instantiate(cfg.target.transform)).batch_size > 0


def test_misspelt_keys_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="patch_shap"):
        compose_train(["data.patch_shap=[8,8,8]"], tmp_path)
    with pytest.raises(ConfigCompositionException, match="nosuchmodel"):
        compose_train(["model=nosuchmodel"], tmp_path)


def test_predict_and_segment_configs_compose() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        predict = compose("predict", overrides=["ckpt=a", "input=b", "output=c"])
        segment = compose("segment", overrides=["probs=p", "postprocess.threshold=0.7"])
    assert predict.overlap is None and segment.postprocess.threshold == 0.7
