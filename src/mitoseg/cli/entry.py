"""How every Hydra entry point ends: one error line, or a resume hint after a signal.

- A refused command (bad config key or value, missing input, unreadable checkpoint, an output in
  the way: :data:`REFUSALS`) prints one line ``mitoseg-predict: error: ...`` naming the key, file
  or value, and exits with status 2, as the argparse tools do. ``MITOSEG_DEBUG=1`` shows the full
  traceback instead. A run folder that Hydra created for the refused run and that holds only
  what Hydra wrote there (``.hydra/``, the log) is removed.
- SIGTERM / SIGINT (:mod:`mitoseg.signals`) end with a line saying how to resume, and exit
  status ``128 + signum``.

Other exceptions (bugs) keep their traceback.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from mitoseg import signals

DEBUG_ENV = "MITOSEG_DEBUG"
DEBUG_HINT = f"{DEBUG_ENV}=1 shows the traceback"
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def _set(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


_HYDRA_FULL_ERROR = {"given": False}  # the user's HYDRA_FULL_ERROR=1 counts as debugging too


def debugging() -> bool:
    """Whether to show tracebacks: ``MITOSEG_DEBUG=1`` (or Hydra's ``HYDRA_FULL_ERROR=1``)."""
    return _set(DEBUG_ENV) or _HYDRA_FULL_ERROR["given"]


def refusals() -> tuple[type[BaseException], ...]:
    """The errors that mean "this command cannot run as given" (not a bug): bad values (every
    validation error of mitoseg is a ValueError: VolumeError, CheckpointError, ...), missing or
    existing files, and Hydra / OmegaConf config errors."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        HydraException,
        OmegaConfBaseException,
    )


class Refused(BaseException):
    """A refusal raised in a Hydra task, carried past Hydra's job runner (which would print
    its own "Error executing job" line for an ``Exception``) to :func:`run_hydra`."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _clean(text: str) -> list[str]:
    """The lines of an error message without OmegaConf's ``full_key:`` / ``object_type=`` and
    Hydra's config search path."""
    lines = [line.strip() for line in text.splitlines()]
    if "Config search path:" in lines:
        lines = lines[: lines.index("Config search path:")]
    skip = ("full_key:", "object_type=", "reference_type=")
    return [line for line in lines if line and not line.startswith(skip)]


def one_line(error: BaseException) -> str:
    """An error message on one line, naming the config key where OmegaConf knows it."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    key = getattr(error, "full_key", None)
    if isinstance(error, MissingMandatoryValue) and key:
        return f"missing value for '{key}': pass {key}=..."
    parts = _clean(str(error)) or [type(error).__name__]
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException):  # Hydra's composition errors wrap the reason
        parts += [p for p in _clean(str(cause)) if p not in parts]
    text = " ".join(parts)
    if key and key not in text:
        text += f" (config key '{key}')"
    return text


def exit_interrupted(prog: str, stop: signals.Interrupted) -> NoReturn:
    """Say that ``prog`` stopped and how to resume (the last line); exit ``128 + signum``."""
    print(f"{prog}: stopped by {stop.name}", file=sys.stderr, flush=True)
    print(f"{prog}: {stop.hint or 'rerun the same command'}", file=sys.stderr, flush=True)
    sys.exit(stop.exit_code)


def run_hydra(prog: str, hydra_main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function as the console script ``prog`` (see the module docstring)."""
    # Hydra then re-raises what the task or the composition raised, instead of printing its
    # own shortened traceback and exiting 1; the refusals become one line here.
    before = os.environ.get("HYDRA_FULL_ERROR")
    _HYDRA_FULL_ERROR["given"] = _set("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with signals.handled():
            hydra_main()
    except signals.Interrupted as stop:
        exit_interrupted(prog, stop)
    except (Refused, *refusals()) as error:
        if debugging():
            raise
        reason = error.error if isinstance(error, Refused) else error
        print(f"{prog}: error: {one_line(reason)} ({DEBUG_HINT})", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def command(prog: str, args: list[str] | None = None) -> str:
    """The command line to rerun: ``prog`` with ``args`` (default: this process's arguments)."""
    return shlex.join([prog, *(sys.argv[1:] if args is None else args)])


@contextmanager
def hydra_task(resume: Callable[[], str]) -> Iterator[None]:
    """Around a Hydra task's body: a signal gets the hint ``resume()`` (called then); a refusal
    removes the run folder when Hydra created it for this run and it holds only Hydra's files.

    In a multirun a refusal stays an ``Exception``: Hydra runs the other jobs, then names the
    failed job's overrides and re-raises it to :func:`run_hydra`."""
    single, created = _single_run(), _fresh_run_dir()
    try:
        yield
    except signals.Interrupted as stop:
        try:
            stop.hint = resume()
        except Exception:  # noqa: BLE001 - a hint that cannot be made must not hide the stop
            stop.hint = "rerun the same command"
        raise
    except refusals() as error:
        if created is not None:
            _remove_run_dir(*created)
        if debugging() or not single:
            raise
        raise Refused(error) from error


def _single_run() -> bool:
    """Whether this task is a single run (not one job of ``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return not HydraConfig.initialized() or HydraConfig.get().mode == RunMode.RUN


def _hydra_files(run_dir: Path, subdir: str | None, log_name: str) -> list[Path] | None:
    """The files of ``run_dir`` if they are only Hydra's (its config copies, the job log)."""
    files = []
    for entry in run_dir.iterdir():
        if entry.name == log_name and entry.is_file():
            files.append(entry)
        elif subdir is not None and entry.name == subdir and entry.is_dir():
            inner = list(entry.iterdir())
            if any(p.name not in HYDRA_FILES or not p.is_file() for p in inner):
                return None
            files.extend(inner)
        else:
            return None
    return files


def _fresh_run_dir() -> tuple[Path, str | None, str] | None:
    """(run folder, Hydra's subfolder, log name) when Hydra made the folder for this run: only
    its files there, and an empty log (a folder of an earlier run has that run's log)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    subdir, log_name = hydra.output_subdir, f"{hydra.job.name}.log"
    files = _hydra_files(run_dir, subdir, log_name) if run_dir.is_dir() else None
    if files is None or any(f.name == log_name and f.stat().st_size > 0 for f in files):
        return None
    return run_dir, subdir, log_name


def _remove_run_dir(run_dir: Path, subdir: str | None, log_name: str) -> None:
    """Remove Hydra's files and ``run_dir`` if that is all it holds (checked again: the task
    may have written there), then the parents left empty, up to the working directory."""
    import logging

    files = _hydra_files(run_dir, subdir, log_name)
    if files is None:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):  # the job log's handler: close it before removing
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) in files:
            root.removeHandler(handler)
            handler.close()
    for file in files:
        file.unlink()
    if subdir is not None and (run_dir / subdir).is_dir():
        (run_dir / subdir).rmdir()
    run_dir.rmdir()
    cwd, parent = Path.cwd().resolve(), run_dir.resolve().parent
    while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
