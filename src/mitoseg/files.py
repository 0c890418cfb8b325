"""Outputs appear whole or not at all: write under a temporary name beside the target, then
rename (numpy-free, torch-free).

Every file and folder mitoseg writes goes through :func:`replace_with`: single files through
:func:`write_atomic`, folders built in one go through :func:`atomic_dir`, and resumable outputs
(written over several runs) under :func:`partial_path` until :func:`publish` renames them.
Outputs that belong together (a raw / labels pair) are staged through :func:`output_unit`: all
of them appear, or none.

Two guards keep a user's data safe from ``overwrite``:

- :func:`check_output_apart`: no output may be, lie inside, or contain one of the command's
  inputs (compared as resolved real paths), with or without ``overwrite``;
- :func:`check_replaceable`: a folder is removed only when mitoseg wrote it. Plain folders built
  by :func:`atomic_dir` carry a :data:`MARKER_FILE`; zarr stores carry the :data:`MARKER_ATTR`
  attribute in their root ``zarr.json`` (set by :func:`mitoseg.io.create_volume`; a file inside
  a store would make zarr warn). Stores mitoseg wrote before the marker existed count as ours
  by their attributes: ``kind`` (one of :data:`LEGACY_KINDS`), or ``axes`` with
  ``voxel_size_nm``, on the store or on its level ``0``.

Single files (csv, json, png) named as an output are replaced when they are not an input;
a folder is never replaced by a file.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

MARKER_FILE = ".mitoseg"
"""Marks a plain folder (not a zarr store) as written by mitoseg."""

MARKER_ATTR = "mitoseg"
"""Root attribute of every zarr store mitoseg writes (``{"writer": "mitoseg"}``)."""

MARKER_VALUE = {"writer": "mitoseg"}

LEGACY_KINDS = frozenset({"raw", "labels", "probabilities", "mask", "instances"})
"""``kind`` attributes of the volumes mitoseg wrote before :data:`MARKER_ATTR` existed."""


CACHE_ENV = "MITOSEG_CACHE"
"""Environment variable naming the cache folder (see :func:`cache_dir`)."""


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The folder where inputs are converted once and kept (conversion cache).

    ``$MITOSEG_CACHE`` when set, else ``$XDG_CACHE_HOME/mitoseg`` (when it is an absolute path,
    as the XDG base-directory specification asks), else ``~/.cache/mitoseg``: the user's cache
    folder, never the current directory. Not created here; writers create it when they need it.

    Args:
        environ: the environment to read; None: ``os.environ``.
    """
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser()
    xdg = env.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "mitoseg"


class OutputExistsError(FileExistsError):
    """The output is there already and ``overwrite`` was not given; names the path."""


class UnsafeOutputError(ValueError):
    """An output that would destroy data: it is, lies inside or contains an input, or replacing
    it would remove something mitoseg did not write. The message names the paths."""


def _real(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _shown(path: str | Path) -> str:
    """``path`` as given, with its real path when that differs (symlinks, ``..``, ``~``)."""
    real = _real(path)
    return str(path) if Path(path) == real else f"{path} (= {real})"


def check_output_apart(output: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an ``output`` that is, lies inside, or contains one of ``inputs``.

    Paths are compared as resolved real paths (``~``, relative paths, ``..`` and symlinks),
    whether or not they exist yet. Call it before anything is loaded or written; it holds with
    or without ``overwrite``. None entries of ``inputs`` are skipped.

    Raises:
        UnsafeOutputError: naming the output, the input and how they overlap.
    """
    out = _real(output)
    for given in inputs:
        if given is None or str(given) == "":
            continue
        source = _real(given)
        if out == source:
            how = "is the input"
        elif source in out.parents:
            how = "lies inside the input"
        elif out in source.parents:
            how = "contains the input"
        else:
            continue
        raise UnsafeOutputError(
            f"output {_shown(output)} {how} {_shown(given)}: mitoseg never writes into its own "
            "input, with or without overwrite; choose an output path outside the input"
        )


def _zarr_attributes(folder: Path) -> dict[str, Any] | None:
    """Attributes of the zarr node stored in ``folder`` (v3 ``zarr.json`` or v2 ``.zattrs``),
    None when ``folder`` holds no zarr node."""
    for name in ("zarr.json", ".zattrs", ".zgroup", ".zarray"):
        try:
            doc = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            return {}
        if name == "zarr.json":
            attributes = doc.get("attributes", {})
            return attributes if isinstance(attributes, dict) else {}
        return doc if name == ".zattrs" else {}
    return None


def _legacy_volume(attrs: dict[str, Any]) -> bool:
    return attrs.get("kind") in LEGACY_KINDS or ("axes" in attrs and "voxel_size_nm" in attrs)


def written_by_mitoseg(path: str | Path) -> bool:
    """Whether the folder ``path`` was written by mitoseg (see the module docstring).

    Files and missing paths are False; a folder counts when it holds :data:`MARKER_FILE`, or is
    a zarr store whose root attributes carry :data:`MARKER_ATTR`, or one of the attributes of
    mitoseg's volumes from before the marker (on the store or its level ``0``).
    """
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / MARKER_FILE).is_file():
        return True
    attrs = _zarr_attributes(path)
    if attrs is None:
        return False
    if MARKER_ATTR in attrs or _legacy_volume(attrs):
        return True
    level0 = _zarr_attributes(path / "0")
    return level0 is not None and _legacy_volume(level0)


def check_replaceable(path: str | Path, what: str = "folder") -> None:
    """Refuse to replace an existing ``path`` that mitoseg did not write.

    A symlink is fine (replacing it removes the link, not its target); an existing folder must
    be empty or :func:`written_by_mitoseg`. Where ``what`` is ``"folder"`` an existing file is
    refused (a folder output never replaces a file); where ``what`` is ``"file"`` an existing
    folder is.

    Raises:
        UnsafeOutputError: naming the path and why it is kept.
    """
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return
    if what == "file":
        if path.is_dir():
            raise UnsafeOutputError(
                f"{path} is a folder: mitoseg writes a file there and never removes a folder "
                "in its place; choose another output path"
            )
        return
    if not path.is_dir():
        raise UnsafeOutputError(
            f"{path} is a file, not an output folder of mitoseg: overwrite does not remove it; "
            "choose another output path"
        )
    if any(path.iterdir()) and not written_by_mitoseg(path):  # an empty folder loses nothing
        raise UnsafeOutputError(
            f"{path} was not written by mitoseg (no {MARKER_FILE} file or '{MARKER_ATTR}' zarr "
            "attribute): overwrite only replaces mitoseg's own outputs; remove it yourself or "
            "choose another output path"
        )


def mark_folder(folder: Path) -> None:
    """Mark a plain folder as written by mitoseg; zarr stores carry the attribute instead."""
    if _zarr_attributes(folder) is None:
        (folder / MARKER_FILE).write_text("written by mitoseg\n")


def sibling(path: Path, tag: str) -> Path:
    """A fresh name ``.{path.name}.{tag}-<random>`` beside ``path`` (not created)."""
    return path.parent / f".{path.name}.{tag}-{secrets.token_hex(4)}"


def partial_path(output: Path) -> Path:
    """Where a resumable output is built until it is complete: ``.{name}.partial`` beside it."""
    return output.with_name(f".{output.name}.partial")


def replace_with(tmp: Path, dst: Path) -> None:
    """Rename ``tmp`` to ``dst``. An old ``dst`` (file or folder) is moved aside first and
    removed afterwards, so ``dst`` is never half-deleted."""
    if dst.exists() or dst.is_symlink():
        old = sibling(dst, "old")
        os.replace(dst, old)
        os.replace(tmp, dst)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, dst)


def publish(partial: Path, dst: Path) -> None:
    """Move a finished resumable output from ``partial`` (see :func:`partial_path`) to ``dst``."""
    replace_with(partial, dst)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    The result appears complete or not at all; on any error the temporary file is removed.

    Raises:
        UnsafeOutputError: ``path`` is a folder (a file never replaces a folder).
    """
    path = Path(path)
    check_replaceable(path, "file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(path, "tmp")
    try:
        write(tmp)
        replace_with(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` (synced), then rename it into place."""

    def write(tmp: Path) -> None:
        with tmp.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    return write_atomic(path, write)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON with sorted keys, written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _missing_parents(path: Path) -> list[Path]:
    """The ancestors of ``path`` that do not exist yet, deepest first."""
    return [parent for parent in path.parents if not parent.exists()]


@contextmanager
def output_unit(dsts: Sequence[Path], overwrite: bool) -> Iterator[list[Path]]:
    """Several outputs as one unit of work (e.g. ``raw.zarr`` and ``labels.zarr`` of a pair):
    all of them appear, or none.

    Existing ``dsts`` are refused before anything is written unless ``overwrite``, and then only
    when mitoseg wrote them. Yields one fresh staging path beside each of ``dsts`` (not created)
    for the caller to write (e.g. with :func:`atomic_dir`). When the block ends normally each
    staged output replaces its ``dst`` (atomic renames, one after another); on any exception
    every staged output and every folder made for them is removed, and ``dsts`` are left as
    they were.

    Raises:
        OutputExistsError: a ``dst`` exists and ``overwrite`` is False.
        UnsafeOutputError: a ``dst`` exists and mitoseg did not write it.
    """
    dsts = [Path(d) for d in dsts]
    for dst in dsts:
        if dst.exists() and not overwrite:
            raise OutputExistsError(f"{dst} already exists; pass overwrite=True / --overwrite")
        check_replaceable(dst)
    made = sorted({p for d in dsts for p in _missing_parents(d)}, key=lambda p: -len(p.parts))
    staged = [sibling(dst, "unit") for dst in dsts]
    try:
        yield staged
    except BaseException:
        for path in staged:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        for folder in made:  # deepest first; only folders left empty
            with suppress(OSError):
                folder.rmdir()
        raise
    for path, dst in zip(staged, dsts, strict=True):
        replace_with(path, dst)


@contextmanager
def atomic_dir(
    dst: Path, overwrite: bool, finish: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``dst`` on success.

    Yields an empty folder ``.{dst.name}.tmp-<random>`` beside ``dst``. On normal exit
    ``finish(tmp)`` runs (e.g. a volume's pyramid), the folder is marked as ours
    (:func:`mark_folder`), then it replaces ``dst`` (an old ``dst`` is removed only now, when
    ``overwrite``, and only when mitoseg wrote it); on any exception, KeyboardInterrupt
    included, the folder is deleted and ``dst`` is left untouched.

    Raises:
        OutputExistsError: ``dst`` exists and ``overwrite`` is False.
        UnsafeOutputError: ``dst`` exists and was not written by mitoseg
            (:func:`check_replaceable`).
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise OutputExistsError(f"{dst} already exists; pass overwrite=True / --overwrite")
    check_replaceable(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0o700 mode would stick to the renamed output.
    tmp = sibling(dst, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if finish is not None:
            finish(tmp)
        mark_folder(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_with(tmp, dst)
