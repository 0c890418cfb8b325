"""Shared fixtures: small synthetic volumes in tmp_path; markers for real data and GPUs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mitoseg import io
from mitoseg.datasets.synthetic import make_volume

REPO = Path(__file__).resolve().parents[1]
LUCCHI = (REPO / ".." / "shared" / "data" / "lucchi_pp").resolve()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    for item in items:
        if "realdata" in item.keywords and not (LUCCHI / "train_im.tif").exists():
            item.add_marker(pytest.mark.skip(reason=f"real data not found at {LUCCHI}"))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="no CUDA device"))


@pytest.fixture(scope="session")
def small_volume() -> tuple[np.ndarray, np.ndarray]:
    """Synthetic raw uint8 and labels uint32, (24, 48, 56)."""
    return make_volume((24, 48, 56), seed=3)


@pytest.fixture()
def small_zarr(tmp_path: Path, small_volume: tuple[np.ndarray, np.ndarray]) -> tuple[Path, Path]:
    raw, labels = small_volume
    raw_path, label_path = tmp_path / "raw.zarr", tmp_path / "labels.zarr"
    io.write_volume(raw_path, raw, chunks=(8, 32, 32))
    io.write_volume(label_path, labels, chunks=(8, 32, 32))
    return raw_path, label_path
