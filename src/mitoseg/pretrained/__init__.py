"""Pretrained models shipped with mitoseg: ``mitoseg-predict pretrained=lucchipp ...``.

An entry is a folder ``<name>/`` holding

- ``weights.pt``: the network's state dict alone (float32 tensors, no code), read with
  ``torch.load(weights_only=True)`` after its sha256 has been checked against the manifest;
- ``manifest.json``: the name, the weights' file name and sha256, and ``config``: what a training
  checkpoint stores for ``mitoseg-predict`` (``model``, ``target``, ``postprocess`` with the
  decoder parameters chosen on validation, ``predict``, ``evaluate``, ``seed``, and ``data``: the
  training voxel size and raw intensity mapping), with the scores (``scores``), what was chosen
  on validation (``selected``) and where the weights came from (``source``);
- ``model_card.md``: training data, voxel size, recipe, scores, intended use and limits.

Entries are looked up in the folders of ``$MITOSEG_PRETRAINED`` (separated by ``os.pathsep``),
then in this package's folder; the first folder that holds a name wins.
``python -m mitoseg.cli.pretrained make`` writes an entry from a training checkpoint. Finding
entries and reading manifests needs no torch (``mitoseg-segment pretrained=<name>`` reads the
decoder only); :func:`load_weights` imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PACKAGE_DIR = Path(__file__).resolve().parent
ENV = "MITOSEG_PRETRAINED"
MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"
CARD = "model_card.md"
FORMAT = 1  # manifest layout version


class PretrainedError(ValueError):
    """An unknown, incomplete or corrupted pretrained model; the message names the name or file."""


def search_path() -> list[Path]:
    """The folders searched for entries: ``$MITOSEG_PRETRAINED``'s, then the package's."""
    extra = [Path(p).expanduser() for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    return [*extra, PACKAGE_DIR]


def available() -> dict[str, Path]:
    """``{name: folder}`` of every entry (a folder with a ``manifest.json``) on the search path."""
    found: dict[str, Path] = {}
    for root in search_path():
        if root.is_dir():
            for manifest in sorted(root.glob(f"*/{MANIFEST}")):
                found.setdefault(manifest.parent.name, manifest.parent)
    return found


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


@dataclass(frozen=True)
class Pretrained:
    """One registry entry: its folder and parsed manifest."""

    name: str
    folder: Path
    manifest: dict[str, Any]

    @property
    def weights_path(self) -> Path:
        return self.folder / str(self.manifest.get("weights", WEIGHTS))

    @property
    def card_path(self) -> Path:
        return self.folder / CARD

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])

    @property
    def config(self) -> dict[str, Any]:
        """What a checkpoint stores for prediction (model, target, postprocess, predict, ...)."""
        return self.manifest["config"]


def _names(found: dict[str, Path]) -> str:
    return ", ".join(sorted(found)) or "none installed"


def is_name(ref: str) -> bool:
    """Whether ``ref`` names an entry (and is no existing file, which would be a checkpoint)."""
    return not Path(ref).expanduser().exists() and ref in available()


def find(name: str) -> Pretrained:
    """The entry ``name``.

    Raises:
        PretrainedError: no entry of that name (the message lists the names there are and the
            folders searched), or its manifest is unreadable or lacks a key.
    """
    found = available()
    if name not in found:
        incomplete = [root / name for root in search_path() if (root / name).is_dir()]
        if incomplete:
            raise PretrainedError(
                f"pretrained model '{name}': {incomplete[0]} has no {MANIFEST} (its weights are "
                "not installed yet; python -m mitoseg.cli.pretrained make writes them); "
                f"available: {_names(found)}"
            )
        folders = ", ".join(str(p) for p in search_path())
        raise PretrainedError(
            f"unknown pretrained model '{name}'; available: {_names(found)} (searched {folders}; "
            f"${ENV} adds folders)"
        )
    path = found[name] / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PretrainedError(f"cannot read {path}: {error}") from error
    missing = [k for k in ("name", "sha256", "config") if k not in manifest]
    if missing:
        raise PretrainedError(f"{path} lacks the key(s) {missing}")
    return Pretrained(name, found[name], manifest)


def load_weights(entry: Pretrained) -> dict[str, torch.Tensor]:
    """The entry's state dict, after its sha256 matches the manifest's.

    Raises:
        PretrainedError: the weights file is missing, its sha256 differs from the manifest's
            (both named), or it is not a plain state dict loadable with ``weights_only=True``.
    """
    import torch

    from mitoseg.train.checkpoints import UnsafeCheckpointError, load_weights_only

    path = entry.weights_path
    if not path.is_file():
        raise PretrainedError(
            f"pretrained model '{entry.name}': weights file {path} is missing (the manifest "
            f"{entry.folder / MANIFEST} names it)"
        )
    found = sha256_of(path)
    if found != entry.sha256:
        raise PretrainedError(
            f"pretrained model '{entry.name}': {path} has sha256 {found}, but its manifest "
            f"records {entry.sha256}: the file is damaged or was replaced; reinstall mitoseg or "
            "rewrite the entry with python -m mitoseg.cli.pretrained make"
        )
    try:
        weights = load_weights_only(path)
    except UnsafeCheckpointError as error:
        raise PretrainedError(str(error)) from error
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise PretrainedError(f"{path} is not a state dict (names -> tensors)")
    return weights
