"""GPU runs (skipped without CUDA): the bf16 trainer config trains, tests and predicts."""

import json
from pathlib import Path

import pytest

from tests.test_cli import TINY, run

pytestmark = pytest.mark.gpu


def test_gpu_bf16_training_and_test(tmp_path: Path) -> None:
    run("mitoseg-train", *TINY, "trainer=gpu", "module.channels_last=true", cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["final"]["fg_iou"] <= 1.0
