"""Read a bioimage.io model package that ``mitoseg-export-model`` wrote: mitoseg's config and
the network weights, as :func:`mitoseg.cli.common.load_checkpoint` returns them for a checkpoint.

A package is a zip file (or its unpacked folder, or that folder's ``rdf.yaml`` /
``bioimageio.yaml``) holding the resource description and the files it names. mitoseg reads
``config`` -> ``mitoseg`` -> ``config`` (the resolved model, target, decoder and prediction
settings that training stored in the checkpoint) and the ``pytorch_state_dict`` weights, loaded with
``weights_only=True`` after their sha256 is checked. Reading needs neither bioimageio.spec nor
bioimageio.core; a package of another tool is refused with what it lacks.
"""

from __future__ import annotations

import hashlib
import io as bytes_io
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch
import yaml

CONFIG_KEY = "mitoseg"  # the package's config.mitoseg section
FORMAT = 1  # of config.mitoseg; raise it when its layout changes
DESCRIPTION_FILES = ("rdf.yaml", "bioimageio.yaml")


class ModelPackageError(ValueError):
    """A model package that mitoseg cannot use; the message names the file and what is missing."""


def is_model_package(path: str | Path) -> bool:
    """Whether ``path`` looks like a bioimage.io model package (a ``.zip`` file or a zip file
    holding a description, an unpacked folder, or its description file) rather than a
    checkpoint; it need not be valid."""
    path = Path(path).expanduser()
    if path.is_dir():
        return any((path / name).is_file() for name in DESCRIPTION_FILES)
    if path.name.endswith(DESCRIPTION_FILES) or path.suffix.lower() == ".zip":
        return True
    if not (path.is_file() and zipfile.is_zipfile(path)):
        return False
    with zipfile.ZipFile(path) as archive:  # a torch checkpoint is a zip file too
        return any(name in DESCRIPTION_FILES for name in archive.namelist())


class _Files:
    """The files of a package by their relative names, in a zip or a folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_file() and path.name.endswith(DESCRIPTION_FILES):
            self.root, self.description = path.parent, path.name
            return
        if path.is_dir():
            self.root = path
            names = [n for n in DESCRIPTION_FILES if (path / n).is_file()]
        else:
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as error:
                raise ModelPackageError(
                    f"model package {path} is not a readable zip file: {error}"
                ) from error
            self.root = path
            names = [n for n in DESCRIPTION_FILES if n in self.zip.namelist()]
        if not names:
            raise ModelPackageError(
                f"model package {path} holds no {' or '.join(DESCRIPTION_FILES)}: not a "
                "bioimage.io model package"
            )
        self.description = names[0]

    def read(self, name: str) -> bytes:
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or "://" in name:
            raise ModelPackageError(
                f"model package {self.path} names {name!r}: mitoseg reads only files inside "
                "the package"
            )
        try:
            if self.zip is not None:
                return self.zip.read(str(relative))
            return (self.root / relative).read_bytes()
        except (KeyError, OSError) as error:
            raise ModelPackageError(
                f"model package {self.path} lacks the file {name!r} that its description names"
            ) from error


def _description(files: _Files) -> dict[str, Any]:
    try:
        description = yaml.safe_load(files.read(files.description))
    except yaml.YAMLError as error:
        raise ModelPackageError(
            f"{files.path}: {files.description} is not YAML: {error}"
        ) from error
    if not isinstance(description, dict) or description.get("type") != "model":
        raise ModelPackageError(
            f"{files.path}: {files.description} does not describe a model (type "
            f"{description.get('type') if isinstance(description, dict) else None!r})"
        )
    return description


def _mitoseg_section(description: dict[str, Any], path: Path) -> dict[str, Any]:
    section = (description.get("config") or {}).get(CONFIG_KEY)
    name = description.get("name", "?")
    if not isinstance(section, dict) or not isinstance(section.get("config"), dict):
        raise ModelPackageError(
            f"model package {path} ('{name}') has no config.{CONFIG_KEY}.config section: it was "
            "not written by mitoseg-export-model, so mitoseg does not know its network "
            "(model._target_ and arguments), its target channels or its decoder. Run it with "
            "bioimageio.core (`bioimageio predict`) instead"
        )
    if int(section.get("format", FORMAT)) > FORMAT:
        raise ModelPackageError(
            f"model package {path}: config.{CONFIG_KEY}.format={section['format']} was written "
            f"by a newer mitoseg (this one reads format {FORMAT}); update mitoseg"
        )
    return section


def written_by_mitoseg(path: str | Path) -> bool:
    """Whether ``path`` is a model package that ``mitoseg-export-model`` wrote (its description
    has a ``config.mitoseg`` section): the only kind ``--overwrite`` may replace."""
    try:
        _mitoseg_section(_description(_Files(Path(path))), Path(path))
    except ModelPackageError:
        return False
    return True


def _weights(description: dict[str, Any], files: _Files) -> dict[str, torch.Tensor]:
    entry = (description.get("weights") or {}).get("pytorch_state_dict")
    if not isinstance(entry, dict) or not entry.get("source"):
        formats = sorted(description.get("weights") or {})
        raise ModelPackageError(
            f"model package {files.path} has no weights.pytorch_state_dict (it has {formats}): "
            "mitoseg loads state-dict weights only"
        )
    data = files.read(str(entry["source"]))
    expected = entry.get("sha256")
    found = hashlib.sha256(data).hexdigest()
    if expected and found != expected:
        raise ModelPackageError(
            f"model package {files.path}: weights {entry['source']} have sha256 {found}, the "
            f"description records {expected}: the file is damaged or was replaced"
        )
    try:
        state = torch.load(bytes_io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several kinds for unsafe or damaged files
        raise ModelPackageError(
            f"model package {files.path}: weights {entry['source']} do not load as a plain "
            f"state dict (weights_only=True): {str(error).splitlines()[0]}"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelPackageError(
            f"model package {files.path}: weights {entry['source']} are not a state dict "
            "(names -> tensors)"
        )
    return state


def read_model_package(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """mitoseg's config (plain data, as a checkpoint stores it) and the network's state dict.

    Raises:
        ModelPackageError: naming the package and what is missing or wrong.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model package {path} not found")
    files = _Files(path)
    try:
        description = _description(files)
        section = _mitoseg_section(description, path)
        return section["config"], _weights(description, files)
    finally:
        if files.zip is not None:
            files.zip.close()
