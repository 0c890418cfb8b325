"""Helpers shared by the Hydra entry points."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mitoseg.callbacks import CHECKPOINT_KEY

log = logging.getLogger(__name__)

CONFIG_PATH = str(Path(__file__).resolve().parents[1] / "conf")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the key at fault."""


def load_checkpoint(path: str | Path) -> tuple[DictConfig, dict[str, torch.Tensor]]:
    """The config stored by training and the network weights of a checkpoint.

    Loads with ``weights_only=True``: a checkpoint that would need to run code is refused.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every failure means "not a usable checkpoint"
        raise CheckpointError(f"cannot load checkpoint {path} safely: {error}") from error
    if CHECKPOINT_KEY not in checkpoint or "config" not in checkpoint[CHECKPOINT_KEY]:
        raise CheckpointError(
            f"checkpoint {path} has no '{CHECKPOINT_KEY}.config' entry: it was not written by "
            "mitoseg-train, so the model and target are unknown"
        )
    config = OmegaConf.create(checkpoint[CHECKPOINT_KEY]["config"])
    prefix = "net."
    weights = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    return config, weights


def check_target(stored: DictConfig, source: str, target: Any | None = None) -> None:
    """Refuse a checkpoint whose model does not fit its target, or does not fit ``target`` (the
    target config of the current run, e.g. when resuming training)."""
    channels = list(stored.target.channels)
    out = stored.model.get("out_channels")
    if out is not None and int(out) != len(channels):
        raise CheckpointError(
            f"checkpoint {source}: model.out_channels={out} but target "
            f"'{stored.target.get('name')}' has {len(channels)} channels {channels}"
        )
    if target is not None and list(target.channels) != channels:
        raise CheckpointError(
            f"checkpoint {source} was trained for target '{stored.target.get('name')}' "
            f"(channels {channels}), but this run's target '{target.get('name')}' has channels "
            f"{list(target.channels)}: choose target={stored.target.get('name')} or start fresh"
        )


def build_net(config: DictConfig, weights: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Instantiate ``config.model`` and load ``weights`` strictly."""
    check_target(config, source)
    net = instantiate(config.model)
    result = net.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"weights in {source} do not fit model {config.model.get('_target_')}: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return net


def build_datamodule(cfg: DictConfig) -> Any:
    """The data module of ``cfg.data`` with the target's transform.

    The transform goes in after instantiation (``_partial_``): Hydra would otherwise turn a
    dataclass argument back into a config.
    """
    return instantiate(cfg.data, _partial_=True)(target=instantiate(cfg.target.transform))


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data, interpolations resolved (what checkpoints carry)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return container
