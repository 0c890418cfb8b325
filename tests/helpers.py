"""Helpers shared by test files: ``mitoseg-predict`` in this process."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from mitoseg.cli.common import compose_config


def predict_config(tmp_path: Path, *overrides: str) -> DictConfig:
    """The config ``mitoseg-predict`` composes with ``overrides``, on the CPU, without a progress
    bar, its cache in ``tmp_path / "cache"`` (``overrides`` may change these too)."""
    return compose_config(
        "predict",
        [
            f"cache_dir={tmp_path / 'cache'}",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            *overrides,
        ],
    )


def predict_in_process(tmp_path: Path, *overrides: str) -> Path:
    """``mitoseg-predict`` with :func:`predict_config`, in this process; returns its output."""
    from mitoseg.cli.predict import predict

    return predict(predict_config(tmp_path, *overrides))
