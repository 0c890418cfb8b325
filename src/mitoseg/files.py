"""Outputs appear whole or not at all: write under a temporary name beside the target, then
rename (numpy-free, torch-free).

Every file and folder mitoseg writes goes through :func:`replace_with`: single files through
:func:`write_atomic`, folders built in one go through :func:`atomic_dir`, and resumable outputs
(written over several runs) under :func:`partial_path` until :func:`publish` renames them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class OutputExistsError(FileExistsError):
    """The output is there already and ``overwrite`` was not given; names the path."""


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
    """
    path = Path(path)
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


@contextmanager
def atomic_dir(
    dst: Path, overwrite: bool, finish: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``dst`` on success.

    Yields an empty folder ``.{dst.name}.tmp-<random>`` beside ``dst``. On normal exit
    ``finish(tmp)`` runs (e.g. a volume's pyramid), then the folder replaces ``dst`` (an old
    ``dst`` is removed only now, when ``overwrite``); on any exception, KeyboardInterrupt
    included, the folder is deleted and ``dst`` is left untouched.

    Raises:
        OutputExistsError: ``dst`` exists and ``overwrite`` is False.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise OutputExistsError(f"{dst} already exists; pass overwrite=True / --overwrite")
    dst.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0o700 mode would stick to the renamed output.
    tmp = sibling(dst, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if finish is not None:
            finish(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_with(tmp, dst)
