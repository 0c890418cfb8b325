"""``mitoseg-train``: fit a model, then tile-predict, decode and score at test time."""

from __future__ import annotations

import logging
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from mitoseg.callbacks import ConfigInCheckpoint, TestEvaluation
from mitoseg.cli.common import (
    CONFIG_PATH,
    build_datamodule,
    check_target,
    load_checkpoint,
    resolved,
)
from mitoseg.report import results_table

log = logging.getLogger(__name__)

STORED_KEYS = ("model", "target", "postprocess", "predict", "evaluate", "seed")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and (if ``cfg.test``) test; returns the metrics of the test evaluation."""
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.ckpt is not None:
        stored, _ = load_checkpoint(cfg.ckpt)
        check_target(stored, str(cfg.ckpt), cfg.target)
    datamodule = build_datamodule(cfg)
    module = instantiate(cfg.module, net=instantiate(cfg.model), loss=instantiate(cfg.target.loss))
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    stored = resolved(cfg)
    stored = {k: stored[k] for k in STORED_KEYS} | {
        "data": {"voxel_size_nm": stored["data"]["train"].get("voxel_size_nm")}
    }
    callbacks.append(ConfigInCheckpoint(stored))
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt)
    if not cfg.test:
        return {}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
    evaluation = next(c for c in callbacks if isinstance(c, TestEvaluation))
    return evaluation.metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    if not metrics:
        return None
    print(results_table(metrics))
    final = metrics["final"]
    chosen = ", ".join(f"{k}={final[k]:g}" for k in metrics["swept"])
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
    _main()
