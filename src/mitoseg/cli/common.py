"""Helpers shared by the Hydra entry points."""

from __future__ import annotations

import csv
import io as text_io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mitoseg.bioimage.package import ModelPackageError, is_model_package, read_model_package
from mitoseg.evaluate.semantic import format_table
from mitoseg.files import write_text_atomic
from mitoseg.io.intensity import RawIntensity
from mitoseg.train.callbacks import CHECKPOINT_KEY
from mitoseg.train.checkpoints import UnsafeCheckpointError, load_weights_only, upgrade_targets

log = logging.getLogger(__name__)

CONFIG_PATH = str(Path(__file__).resolve().parents[1] / "conf")


def compose_config(
    name: str, overrides: Sequence[str] = (), *, hydra_node: bool = False
) -> DictConfig:
    """The config that the entry point ``name`` (``"train"``, ``"predict"``, ``"segment"``, ...)
    composes with ``overrides``, for use in this process (benchmarks, tests, the pretrained
    check): defaults, struct mode, an unknown key refused with ``ConfigCompositionException``.

    With ``hydra_node``, the config also holds Hydra's own ``hydra`` node (run folder, group
    choices, the overrides given), which becomes the current ``HydraConfig`` as in the entry
    point; delete the node before passing the config on, as the entry point never sees it.
    """
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(name, overrides=list(overrides), return_hydra_config=hydra_node)
    if hydra_node:
        HydraConfig.instance().set_config(cfg)
    return cfg


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the key at fault."""


def load_checkpoint(path: str | Path) -> tuple[DictConfig, dict[str, torch.Tensor]]:
    """The config stored by training and the network weights of a checkpoint.

    Loads with ``weights_only=True``: a checkpoint that would need to run code is refused.
    ``path`` may also be a bioimage.io model package of ``mitoseg-export-model``
    (:mod:`mitoseg.bioimage.package`).
    """
    path = Path(path).expanduser()
    if is_model_package(path):
        try:
            config, weights = read_model_package(path)
        except (FileNotFoundError, ModelPackageError) as error:
            raise CheckpointError(str(error)) from error
        return OmegaConf.create(upgrade_targets(config)), weights
    try:
        checkpoint = load_weights_only(path)
    except (FileNotFoundError, UnsafeCheckpointError) as error:
        raise CheckpointError(str(error)) from error
    if CHECKPOINT_KEY not in checkpoint or "config" not in checkpoint[CHECKPOINT_KEY]:
        raise CheckpointError(
            f"checkpoint {path} has no '{CHECKPOINT_KEY}.config' entry: it was not written by "
            "mitoseg-train, so the model and target are unknown"
        )
    # A checkpoint of an earlier layout names classes where they were then.
    config = OmegaConf.create(upgrade_targets(checkpoint[CHECKPOINT_KEY]["config"]))
    prefix = "net."
    weights = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    return config, weights


def trained_intensity(stored: DictConfig) -> RawIntensity | None:
    """The training volume's raw statistics and normalisation that a checkpoint's config records
    (``data.raw_intensity.train``); None for checkpoints written before they were recorded."""
    record = OmegaConf.select(stored, "data.raw_intensity.train")
    if record is None:
        return None
    return RawIntensity.from_dict(OmegaConf.to_container(record))


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


def _flat(config: Any, prefix: str) -> dict[str, Any]:
    """``{"model.widths": [4, 8], ...}``: the leaves of a nested config."""
    if OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=True)
    if not isinstance(config, dict):
        return {prefix: config}
    return {
        k: v for key, value in config.items() for k, v in _flat(value, f"{prefix}.{key}").items()
    }


def check_model(stored: DictConfig, source: str, model: Any) -> None:
    """Refuse a checkpoint whose network differs from ``model`` (this run's model config), e.g.
    when resuming training; the message lists the keys that differ."""
    theirs, ours = _flat(stored.model, "model"), _flat(model, "model")
    differ = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    if differ:
        details = "; ".join(f"{k}={theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ)
        raise CheckpointError(
            f"checkpoint {source} holds another model than this run: {details}. Resume with the "
            "checkpoint's model settings or start fresh"
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


def build_module(cfg: DictConfig) -> Any:
    """The LightningModule of ``cfg.module`` with the network of ``cfg.model`` and the loss of
    ``cfg.target``."""
    return instantiate(cfg.module, net=instantiate(cfg.model), loss=instantiate(cfg.target.loss))


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data, interpolations resolved (what checkpoints carry)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return container


def drop_shared_overrides(rows: list[dict[str, Any]]) -> None:
    """Keep only the overrides that differ between runs (what the sweep varied)."""
    split = [row["overrides"].split(" ") for row in rows]
    shared = set.intersection(*(set(s) for s in split)) if len(split) > 1 else set()
    for row, items in zip(rows, split, strict=True):
        row["overrides"] = " ".join(i for i in items if i not in shared)


def mark_best(rows: list[dict[str, Any]], metric: str | None) -> None:
    """Mark the row with the highest ``metric`` (None: fg_iou for masks, ap75 for instances)."""
    if metric is None:
        metric = "fg_iou" if rows and "fg_iou" in rows[0] else "ap75"
    scored = [r for r in rows if isinstance(r.get(metric), float) and r[metric] == r[metric]]
    for row in rows:
        row["best"] = ""
    if scored:
        max(scored, key=lambda r: r[metric])["best"] = "*"


def write_sweep_summary(
    sweep_dir: Path, rows: list[dict[str, Any]], metric: str | None, plot: bool = True
) -> None:
    """After a multirun: ``sweep_summary.csv`` and ``.md`` (one row per run, the varied overrides,
    the best run by ``metric`` marked) and, with ``plot``, ``sweep_plot.png`` of the scores
    against the swept decoder parameters; printed."""
    from mitoseg.analyze.plots import sweep_plot, unit_score_columns

    if not rows:
        return
    drop_shared_overrides(rows)
    mark_best(rows, metric)
    # Runs of different targets have different decoder settings: every column of any run, in
    # order of first appearance; a run without it gets an empty cell.
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(sweep_dir / "sweep_summary.csv", buffer.getvalue())
    table = format_table(rows, columns)
    write_text_atomic(sweep_dir / "sweep_summary.md", table + "\n")
    written = f"{sweep_dir}/sweep_summary.csv"
    scores = unit_score_columns(rows) if plot else []
    if scores:  # runs without labels have nothing to plot
        sweep_plot(sweep_dir / "sweep_plot.png", rows, scores)
        written += ", sweep_plot.png"
    print(f"sweep summary ({written}):\n{table}")
