"""Checkpoint files: atomic writes, weights-only reads, and the global RNG state they carry.

``AtomicCheckpointIO`` is the Trainer's checkpoint plugin (``conf/trainer/default.yaml``):

- A checkpoint is written to a temporary file in its own folder, flushed to disk and renamed over
  the old one, so a run killed while saving leaves the previous checkpoint whole. (Lightning's own
  plugin writes to the system temp folder and moves the file, a copy when that folder is on
  another file system.)
- A checkpoint is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and
  containers only. A file that would need to run code to load is refused with
  :class:`UnsafeCheckpointError`; nothing in it is executed.
"""

from __future__ import annotations

import logging
import os
import random
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from mitoseg.files import write_atomic

log = logging.getLogger(__name__)


# Modules that moved since checkpoints were first written: a stored config's ``_target_`` that
# starts with a key is read as the value (longest key first). Only ever add to this table.
MOVED_MODULES = {
    "mitoseg.synthetic_shapes": "mitoseg.datasets.synthetic_shapes",
    "mitoseg.synthetic": "mitoseg.datasets.synthetic",
    "mitoseg.volumes": "mitoseg.datasets.volumes",
    "mitoseg.augment": "mitoseg.train.augment",
    "mitoseg.targets": "mitoseg.train.targets",
    "mitoseg.losses": "mitoseg.train.losses",
    "mitoseg.nets": "mitoseg.train.nets",
    "mitoseg.module": "mitoseg.train.module",
    "mitoseg.data": "mitoseg.train.data",
    "mitoseg.callbacks": "mitoseg.train.callbacks",
    "mitoseg.checkpoint_io": "mitoseg.train.checkpoints",
    "mitoseg.postprocess": "mitoseg.decode.masks",
    "mitoseg.watershed": "mitoseg.decode.watershed",
    "mitoseg.watershed.BCWatershed": "mitoseg.decode.instances.BCWatershed",
    "mitoseg.watershed.AffinityWatershed": "mitoseg.decode.instances.AffinityWatershed",
    "mitoseg.watershed.ACWatershed": "mitoseg.decode.instances.ACWatershed",
}


def upgrade_targets(config: Any) -> Any:
    """``config`` (plain dicts and lists) with every ``_target_`` of an earlier layout rewritten
    to where that class or function lives now (:data:`MOVED_MODULES`); other values unchanged."""
    if isinstance(config, dict):
        return {
            k: _moved(v) if k == "_target_" and isinstance(v, str) else upgrade_targets(v)
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [upgrade_targets(v) for v in config]
    return config


def _moved(target: str) -> str:
    for old in sorted(MOVED_MODULES, key=len, reverse=True):
        if target == old or target.startswith(old + "."):
            return MOVED_MODULES[old] + target[len(old) :]
    return target


class UnsafeCheckpointError(ValueError):
    """A checkpoint that cannot be loaded as plain data (weights-only); names the file."""


def load_weights_only(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``; a file that needs more is refused.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: the file is not a checkpoint that loads as plain data (it holds
            objects whose loading would run code, or it is truncated or not a checkpoint at all).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - every failure means "not loadable as plain data"
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            raise UnsafeCheckpointError(
                f"{path} is not a mitoseg / PyTorch checkpoint (not the zip archive that "
                "torch.save writes: another kind of file, or a truncated copy)"
            ) from error
        raise UnsafeCheckpointError(
            f"checkpoint {path} cannot be loaded safely (weights only) and is refused; nothing "
            f"in it was run. Only checkpoints written by mitoseg-train load: {_reason(error)}"
        ) from error


def _reason(error: Exception) -> str:
    """What torch.load(weights_only=True) refused, without its advice to load unsafely."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)  # the function or class it would call
    if found:
        return f"it would run {found.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if found:
        return found.group(1).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line and "Weights only" not in line]
    return lines[0] if lines else type(error).__name__


def save_atomic(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename it into place."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())

    write_atomic(path, write)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin: atomic local writes, weights-only reads."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_atomic(checkpoint, path)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if weights_only is False:
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint {path} with weights_only=False: it could run code"
            )
        return load_weights_only(path, map_location)


def _rng_states() -> dict[str, Any]:
    """The global torch, CUDA, numpy and Python RNG states as weights-only-loadable data."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    state = states["numpy"]
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


class RngStateInCheckpoint(pl.Callback):
    """Save the global RNG states in every checkpoint and restore them on resume.

    Training patches do not depend on them (each is seeded by its index, see
    :class:`mitoseg.train.data.PatchDataset`); anything else that draws from the global generators
    (dropout, a random augmentation of a third-party net) continues as if never interrupted.
    """

    def state_dict(self) -> dict[str, Any]:
        return _rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _set_rng_states(state_dict)
        log.info("restored the global RNG states from the checkpoint")
