"""Pretrained models in the entry points: ``pretrained=<name>`` (mitoseg-predict), ``init=<name
or checkpoint>`` (mitoseg-train), and ``python -m mitoseg.cli.pretrained`` (list the entries,
make one from a training checkpoint)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mitoseg import pretrained
from mitoseg.cli.common import CheckpointError, _flat, load_checkpoint
from mitoseg.train.checkpoints import upgrade_targets
from mitoseg.train.transfer import TransferError, transfer_weights

log = logging.getLogger(__name__)


def load_pretrained(name: str) -> tuple[DictConfig, dict[str, torch.Tensor], Path]:
    """The stored config, weights (sha256 checked) and weights file of the entry ``name``."""
    entry = pretrained.find(name)
    weights = pretrained.load_weights(entry)
    return OmegaConf.create(upgrade_targets(entry.config)), weights, entry.weights_path


def load_model(ref: str) -> tuple[DictConfig, dict[str, torch.Tensor], str]:
    """A checkpoint path or a pretrained model's name -> its stored config, network weights and
    a description of the source (``pretrained:<name>`` or the path).

    A path that exists is a checkpoint; otherwise a registered name; otherwise the error says
    which (a missing checkpoint, or an unknown name with the names there are).
    """
    path = Path(ref).expanduser()
    if path.exists():
        stored, weights = load_checkpoint(path)
        return stored, weights, str(path)
    if ref in pretrained.available():
        stored, weights, _ = load_pretrained(ref)
        return stored, weights, f"pretrained:{ref}"
    if path.suffix or len(path.parts) > 1:  # meant as a file
        names = ", ".join(sorted(pretrained.available())) or "none installed"
        raise CheckpointError(
            f"checkpoint not found: {path} (nor is it a pretrained model; available: {names})"
        )
    pretrained.find(ref)  # raises: the names there are, or the entry's missing files
    raise AssertionError(f"{ref} is neither a file nor a pretrained model")


def model_differences(stored: Any, model: Any) -> list[str]:
    """``"model.key=<there> there, <here> here"`` for each network setting other than the number
    of output channels that differs between a stored config's ``model`` and ``model``."""
    theirs, ours = _flat(stored, "model"), _flat(model, "model")
    keys = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    return [
        f"{k}={theirs.get(k)!r} there, {ours.get(k)!r} here"
        for k in keys
        if k != "model.out_channels"
    ]


def init_net(ref: str, net: nn.Module, cfg: DictConfig) -> dict[str, Any]:
    """``init=<ref>``: copy the weights of a pretrained model or checkpoint into ``net`` (this
    run's fresh network); layers whose shape depends on another target are reinitialised and
    listed in the log. Returns the report stored in checkpoints and ``metrics.json``.

    Raises:
        CheckpointError: no such checkpoint or name, or another network (the settings that
            differ named).
    """
    stored, weights, source = load_model(ref)
    differences = model_differences(stored.model, cfg.model)
    try:
        report = transfer_weights(net, weights, source, differences)
    except TransferError as error:
        raise CheckpointError(f"init={ref}: {error}") from error
    if differences:  # same tensors, other settings (e.g. dropout): worth knowing
        log.info("init=%s: network settings that differ: %s", ref, "; ".join(differences))
    theirs, ours = list(stored.target.channels), list(cfg.target.channels)
    if theirs != ours:
        log.info(
            "init=%s: trained for target '%s' %s, this run's target '%s' has %s",
            ref, stored.target.get("name"), theirs, cfg.target.get("name"), ours,
        )  # fmt: skip
    size = OmegaConf.select(stored, "data.voxel_size_nm")
    here = OmegaConf.select(cfg, "data.train.voxel_size_nm")
    if size is not None and here is not None and list(size) != list(here):
        log.info("init=%s: trained at %s nm, this run's data is %s nm", ref, list(size), list(here))
    log.info(
        "%s (optimiser and schedule start fresh; ckpt=last resumes instead)", report.describe()
    )
    result = report.to_dict()
    result["target"] = {"source": stored.target.get("name"), "here": cfg.target.get("name")}
    return result
