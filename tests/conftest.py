"""Shared fixtures: small synthetic volumes in tmp_path; markers for real data and GPUs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mitoseg import io
from mitoseg.datasets.synthetic import make_volume

REPO = Path(__file__).resolve().parents[1]
LUCCHI = (REPO / ".." / "shared" / "data" / "lucchi_pp").resolve()


# The files that take longest (whole CLI runs), longest first. `make test` runs the suite on two
# pytest-xdist workers, one file per worker at a time (--dist loadfile): starting these first keeps
# one long file from running alone at the end. Order only; every file still runs whole.
LONG_FILES = (
    "test_readme.py",
    "test_cli_scale.py",
    "test_realdata_recipes.py",
    "test_cli.py",
    "test_signals.py",
    "test_cli_instance.py",
    "test_reliability.py",
    "test_predict_blocks.py",
    "test_checkpoint_compat.py",
    "test_realdata.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable

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
