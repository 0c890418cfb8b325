"""``mitoseg-train``: fit a model, then tile-predict, decode and score at test time."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from mitoseg import allocator, io, signals
from mitoseg.analyze.report import columns_of, results_table, settings_text
from mitoseg.bioimage.package import is_model_package
from mitoseg.cli.common import (
    CONFIG_PATH,
    CheckpointError,
    build_datamodule,
    build_module,
    check_model,
    check_target,
    load_checkpoint,
    resolved,
    write_sweep_summary,
)
from mitoseg.cli.entry import command, hydra_task, run_hydra
from mitoseg.cli.pretrained import adopt_init_model, init_net
from mitoseg.evaluate.testtime import TestEvaluation
from mitoseg.files import check_output_apart, write_json_atomic
from mitoseg.hardware import resolve_compute
from mitoseg.train.callbacks import ConfigInCheckpoint
from mitoseg.train.checkpoints import RngStateInCheckpoint
from mitoseg.train.interrupt import StopOnSignal

log = logging.getLogger(__name__)

STORED_KEYS = ("model", "target", "postprocess", "predict", "evaluate", "seed")


def last_checkpoint(cfg: DictConfig) -> Path:
    """``${output_dir}/checkpoints/last.ckpt``: the latest state, what ``ckpt=last`` resumes."""
    return Path(cfg.output_dir) / "checkpoints" / "last.ckpt"


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from, checked against this run's target and model.

    ``ckpt=last`` is ``${output_dir}/checkpoints/last.ckpt``: rerun an interrupted run with its
    ``hydra.run.dir`` and ``ckpt=last``.
    """
    if cfg.ckpt is None:
        return None
    if str(cfg.ckpt) == "last":
        path = last_checkpoint(cfg)
        if not path.is_file():
            raise CheckpointError(
                f"ckpt=last: there is no {path} to resume from; pass the interrupted run's "
                "hydra.run.dir, or ckpt=<path to a .ckpt>, or leave ckpt out to start fresh"
            )
    else:
        path = Path(cfg.ckpt).expanduser()
    if is_model_package(path):
        raise CheckpointError(
            f"ckpt={cfg.ckpt} is a model package: it holds the weights but not the training "
            "state that resuming needs; start from its weights with init= instead"
        )
    stored, _ = load_checkpoint(path)
    check_target(stored, str(path), cfg.target)
    check_model(stored, str(path), cfg.model)
    log.info("resuming from %s", path)
    return str(path)


def refuse_finished_run(output_dir: Path, overwrite: bool) -> None:
    """A fresh run must not mix its checkpoints and results with an earlier run's."""
    earlier = [p.name for p in (output_dir / "metrics.json", output_dir / "checkpoints")]
    earlier = [name for name in earlier if (output_dir / name).exists()]
    if earlier and not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds a run ({', '.join(earlier)}): resume it with ckpt=last, "
            "choose another hydra.run.dir, or pass overwrite=true to start over there"
        )


def fill_voxel_size(cfg: DictConfig) -> None:
    """Set a null ``data.train.voxel_size_nm`` to the one the training file states, so that
    ``data.isotropic`` (derived from it unless set) and the checkpoint hold the data's real voxel
    size.

    Raises:
        VolumeError: the training file states no voxel size and the data config gives none.
    """
    if cfg.data.train.get("voxel_size_nm") is None:
        volumes = instantiate(cfg.data.train)
        root = Path(cfg.data.root).expanduser() if cfg.data.get("root") else None
        size = volumes.voxel_size(root)
        if size is None:
            raise io.VolumeError(
                f"training volume {volumes.raw_path(root)} states no voxel size: set "
                "data.train.voxel_size_nm=[Z,Y,X] (nm)"
            )
        with open_dict(cfg):
            cfg.data.train.voxel_size_nm = [float(v) for v in size]
    size, isotropic = list(cfg.data.train.voxel_size_nm), cfg.data.isotropic
    log.info("training voxel size %s nm: isotropic=%s", size, isotropic)
    pools = cfg.model.get("pool_sizes")
    levels = list(pools) if OmegaConf.is_list(pools) else [pools]
    if isotropic is False and pools is not None and all(_pools_z(p) for p in levels):
        log.warning(
            "the training voxels are anisotropic (%s nm) but model.pool_sizes=%s pools z as much "
            "as y and x at every level; model=resunet_aniso pools in-plane first",
            " x ".join(f"{v:g}" for v in size), pools,
        )  # fmt: skip


def fill_compute(cfg: DictConfig) -> None:
    """Resolve ``trainer.precision=auto`` and ``module.channels_last=auto`` for this machine
    (:mod:`mitoseg.hardware`: bf16 and channels-last where they compute faster), logging the
    choice and why; the run's config and its checkpoints then hold what was used."""
    compute = resolve_compute(
        cfg.trainer.get("precision", "32-true"),
        cfg.module.get("channels_last", False),
        cfg.trainer.get("accelerator", "auto"),
    )
    with open_dict(cfg):
        cfg.trainer.precision = compute.precision
        cfg.module.channels_last = compute.channels_last


def _pools_z(pool: Any) -> bool:
    """Whether one level's pool size is the same along z as in-plane (2, or [2, 2, 2])."""
    return isinstance(pool, int) or len(set(pool)) == 1


def data_paths(cfg: DictConfig) -> list[Path]:
    """The files of ``cfg.data`` (``raw`` and ``labels`` of train, val and test), under
    ``data.root`` when relative; synthetic data has none."""
    root = Path(cfg.data.root).expanduser() if cfg.data.get("root") else None
    paths = []
    for part in ("train", "val", "test"):
        node = cfg.data.get(part)
        if not OmegaConf.is_dict(node):
            continue
        for key in ("raw", "labels"):
            if key not in node or OmegaConf.is_missing(node, key) or not node[key]:
                continue
            path = Path(str(node[key])).expanduser()
            paths.append(root / path if root is not None and not path.is_absolute() else path)
    return paths


def check_data_apart(cfg: DictConfig) -> None:
    """Refuse a run folder that is, lies inside or contains a data file: training writes
    checkpoints and test-time outputs there (with overwrite too)."""
    check_output_apart(cfg.output_dir, data_paths(cfg))


def check_sparse_test(cfg: DictConfig) -> None:
    """Refuse ``test=true`` when the validation labels are sparse (``labelled_slices`` or
    ``ignore_label``): the test-time evaluation chooses the decoder on whole validation volumes,
    where unlabelled voxels would count as background.

    Raises:
        ValueError: naming the keys to set.
    """
    val = cfg.data.get("val")
    part = "val" if OmegaConf.is_dict(val) else "train"
    node = cfg.data[part] if OmegaConf.is_dict(cfg.data[part]) else {}
    keys = [k for k in ("labelled_slices", "ignore_label") if node.get(k) is not None]
    sparse = [f"data.{part}.{k}={node[k]}" for k in keys]
    if cfg.test and sparse:
        raise ValueError(
            f"{', '.join(sparse)}: the validation labels are sparse, and the test-time "
            "evaluation scores whole volumes; pass test=false (validation scores count labelled "
            "voxels only) and predict with mitoseg-predict, or give a fully labelled data.val"
        )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and (if ``cfg.test``) test; returns the metrics of the test evaluation."""
    check_data_apart(cfg)
    check_sparse_test(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    fill_voxel_size(cfg)
    fill_compute(cfg)
    log.info("memory allocator: %s", allocator.describe())
    adopt_init_model(cfg, HydraConfig.get().overrides.task if HydraConfig.initialized() else [])
    ckpt = resume_checkpoint(cfg)
    if ckpt is None and rank_zero_only.rank == 0:  # DDP ranks > 0 start once rank 0 has begun
        refuse_finished_run(Path(cfg.output_dir), bool(cfg.overwrite))
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    init = init_weights(cfg, module.net, ckpt)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    if not logger:  # Lightning refuses a learning-rate monitor without a logger (logger=none)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    run = resolved(cfg)
    if init is not None:
        run["init_weights"] = init
    stored = {k: run[k] for k in STORED_KEYS} | {
        "data": {
            "voxel_size_nm": run["data"]["train"].get("voxel_size_nm"),
            "isotropic": run["data"]["isotropic"],
        }
    }
    callbacks += [ConfigInCheckpoint(stored, run=run), RngStateInCheckpoint()]
    callbacks += [StopOnSignal(last_checkpoint(cfg))]  # after the callbacks that fill checkpoints
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    # A signal stops fitting after the current batch (a whole optimiser step), saving last.ckpt.
    with signals.deferred():
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        except SIGTERMException as stop:  # Lightning's own stop on SIGTERM
            raise signals.Interrupted(signal.SIGTERM) from stop
    signals.check()  # a signal during the last batch
    if not cfg.test:
        return {}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    evaluation = next(c for c in callbacks if isinstance(c, TestEvaluation))
    # Every rank predicts its own blocks of the validation part and the test volume (under
    # DDP too); global rank 0 then decodes and scores them.
    tested = best or str(ckpt or "last weights")
    loaders = evaluation.loaders(trainer, datamodule.eval_sets, tested)
    trainer.test(module, dataloaders=loaders, ckpt_path=best or None, weights_only=True)
    if not trainer.is_global_zero:
        return {}
    metrics = evaluation.evaluate(
        datamodule.eval_sets, best or None, logger or None, trainer.global_step
    )
    if init is not None:
        metrics["init_weights"] = init
        write_json_atomic(Path(cfg.output_dir) / "metrics.json", metrics)
    return metrics


def init_weights(cfg: DictConfig, net: Any, ckpt: str | None) -> dict[str, Any] | None:
    """``init=<pretrained name or checkpoint>``: start ``net`` from those weights (the optimiser
    and schedule start fresh); returns what was copied and reinitialised (None without init=).
    A resumed fine-tuning run (``ckpt``) checks and reports the same, then the checkpoint's
    weights replace them."""
    if cfg.get("init") is None:
        return None
    if ckpt is not None:
        log.info("resuming from %s: its weights replace those of init=%s", ckpt, cfg.init)
    return init_net(str(cfg.init), net, cfg)


def summary_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per training run of a sweep: its overrides (from ``.hydra/overrides.yaml``), the
    tested checkpoint, the decoder parameters chosen on validation, and the scores of the
    validation part (``val_*``, at those parameters) and of the test volume (``test_*``)."""
    rows = []
    for path in sorted(
        sweep_dir.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)
    ):
        metrics = json.loads(path.read_text())
        overrides = path.parent / ".hydra" / "overrides.yaml"
        items = OmegaConf.load(overrides) if overrides.is_file() else []
        selected = metrics["selected"]
        chosen = [r for r in metrics["val"] if all(r[k] == selected[k] for k in metrics["swept"])]
        val = chosen[0] if chosen else {}
        row: dict[str, Any] = {
            "run": path.parent.name,
            "overrides": " ".join(str(i) for i in items),
            "checkpoint": metrics.get("checkpoint") or "",
            **selected,
        }
        row.update({f"val_{k}": val.get(k, "") for k in columns_of(val or metrics["final"])})
        if metrics["final"]["set"] == "test":
            final = metrics["final"]
            row.update({f"test_{k}": final.get(k, "") for k in columns_of(final)})
        rows.append(row)
    return rows


class SweepSummary(Callback):
    """Hydra callback: after ``mitoseg-train -m``, one table of every run, the best marked by its
    validation score (``evaluate.select_metric``), never by the test volume."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        metric = f"val_{config.evaluate.select_metric}"
        write_sweep_summary(sweep_dir, summary_rows(sweep_dir), metric, plot=False)


def resume_hint(cfg: DictConfig) -> str:
    """After a signal: the command that resumes from ``last.ckpt`` in this run's folder."""
    last = last_checkpoint(cfg)
    if not last.is_file():
        return f"no checkpoint was saved yet; rerun: {command('mitoseg-train')}"
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    keep = [o for o in overrides if not o.lstrip("+~").startswith(("ckpt=", "overwrite="))]
    args = [*keep, f"hydra.run.dir={Path(cfg.output_dir).resolve()}", "ckpt=last"]
    return f"{last} holds the latest state; to resume: {command('mitoseg-train', args)}"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _main(cfg: DictConfig) -> float | None:
    with hydra_task(lambda: resume_hint(cfg)):
        metrics = train(cfg)
    if not metrics:
        if rank_zero_only.rank == 0:
            print(f"wrote {cfg.output_dir} (checkpoints in {last_checkpoint(cfg).parent})")
        return None
    print(results_table(metrics))
    final = metrics["final"]
    chosen = settings_text(final, metrics["swept"])
    metric = cfg.evaluate.select_metric
    if metric not in final:  # a test volume without labels: predicted and decoded only
        print(f"decoded {final['set']} with {chosen} (chosen on validation); see {cfg.output_dir}")
        return None
    print(
        f"{final['set']} {metric} {final[metric]:.4f} with {chosen} (chosen on validation); "
        f"outputs in {cfg.output_dir}"
    )
    return float(final[metric])


def main() -> None:
    """``mitoseg-train``: errors in one line (exit 2); SIGTERM / SIGINT stop within seconds in
    every phase, fitting saves last.ckpt, and the exit status is 143 / 130
    (:mod:`mitoseg.cli.entry`)."""
    run_hydra("mitoseg-train", _main)
