"""The memory allocator of ``mitoseg-predict`` and ``mitoseg-train``: tcmalloc where the system
has it (Linux).

PyTorch on a CPU allocates and frees tensors of many sizes for every batch of tiles. glibc's
malloc keeps what is freed in its heap, in holes between what is still in use, and does not give
it back; tcmalloc does. Measured on a 0.1 Gvox prediction with a 96^3-tile U-Net
(benchmarks/predict_scale.py, BENCHMARKS.md): 300-340 MiB above the start with tcmalloc against
460-620 MiB with glibc, and no slower. An allocator is chosen when a process starts, so the
command starts itself again, once, with the library in ``LD_PRELOAD`` (what PyTorch's own CPU
launcher does), before anything large is imported.
``mitoseg-train`` does the same for its test-time prediction (its training steps: not worse in
one demo run each, benchmarks/studies/predict_scale.md).

``MITOSEG_MALLOC`` chooses: ``auto`` (default: tcmalloc if a library is found, else glibc),
``tcmalloc`` (an error if none is found), ``system`` (glibc), or the path of a library to
preload. tcmalloc is the Debian / Ubuntu package ``libtcmalloc-minimal4``, conda's
``gperftools``.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

ENV = "MITOSEG_MALLOC"
# Set in the started-again process: the library it was given (not started again a second time).
MARK = "MITOSEG_MALLOC_PRELOADED"
NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
INSTALL = "apt install libtcmalloc-minimal4 (Debian, Ubuntu) or conda install gperftools"


class AllocatorError(ValueError):
    """``MITOSEG_MALLOC`` names an allocator that cannot be used."""


def search_dirs() -> list[Path]:
    """Where a tcmalloc library is looked for: this Python's and conda's lib folders, then the
    system's."""
    dirs = [Path(sys.prefix) / "lib"]
    if os.environ.get("CONDA_PREFIX"):
        dirs.append(Path(os.environ["CONDA_PREFIX"]) / "lib")
    arch = f"{platform.machine()}-linux-gnu"
    dirs += [Path("/usr/lib") / arch, Path("/lib") / arch, Path("/usr/lib64"), Path("/usr/lib")]
    return [*dirs, Path("/usr/local/lib")]


def find_tcmalloc(dirs: Sequence[Path] | None = None) -> Path | None:
    """The first tcmalloc library in ``dirs`` (default :func:`search_dirs`), or None."""
    for folder in search_dirs() if dirs is None else dirs:
        for name in NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def choose(value: str, dirs: Sequence[Path] | None = None) -> Path | None:
    """The library to preload for a ``MITOSEG_MALLOC`` value; None: glibc's malloc.

    Raises:
        AllocatorError: ``tcmalloc`` and none found, or a path that is not a file.
    """
    value = value.strip() or "auto"
    if value == "system":
        return None
    if value in ("auto", "tcmalloc"):
        found = find_tcmalloc(dirs)
        if found is None and value == "tcmalloc":
            where = ", ".join(str(d) for d in (search_dirs() if dirs is None else dirs))
            raise AllocatorError(
                f"{ENV}=tcmalloc: no {' or '.join(NAMES)} in {where}; install it ({INSTALL}), "
                f"give its path ({ENV}=/path/to/libtcmalloc_minimal.so.4) or use {ENV}=system"
            )
        return found
    path = Path(value)
    if not path.is_file():
        raise AllocatorError(
            f"{ENV}={value}: not a file; use auto, tcmalloc, system or a library's path"
        )
    return path


def preload(prog: str) -> None:
    """Start this command again with the chosen allocator preloaded (Linux; once: a started-again
    process carries :data:`MARK`). Nothing happens elsewhere, with ``system``, or when it is
    already loaded. A bad ``MITOSEG_MALLOC`` ends the command with its error (exit 2)."""
    if not sys.platform.startswith("linux") or os.environ.get(MARK) is not None:
        return
    try:
        library = choose(os.environ.get(ENV, "auto"))
    except AllocatorError as err:
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if library is None or loaded() is not None:
        return
    env = dict(os.environ)
    env[MARK] = str(library)
    env["LD_PRELOAD"] = " ".join(p for p in (str(library), env.get("LD_PRELOAD", "")) if p)
    # tcmalloc reports every allocation above 1 GiB on stderr unless told otherwise
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 42))
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def loaded() -> str | None:
    """The tcmalloc (or :data:`MARK`'s) library mapped into this process, or None."""
    wanted = os.environ.get(MARK)
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    wanted_path = str(Path(wanted).resolve()) if wanted else None
    for line in maps:
        parts = line.split(maxsplit=5)
        path = parts[5] if len(parts) == 6 else ""
        if "tcmalloc" in Path(path).name or (wanted_path is not None and path == wanted_path):
            return path
    return None


def describe() -> str:
    """This process's allocator, for the log: the library, or glibc and how to get tcmalloc."""
    library = loaded()
    if library is not None:
        return f"{library} ({ENV}={os.environ.get(ENV, 'auto')})"
    if os.environ.get(ENV, "auto").strip() == "system":
        return f"glibc malloc ({ENV}=system)"
    if os.environ.get(MARK):
        return f"glibc malloc: {os.environ[MARK]} was given to LD_PRELOAD but is not loaded"
    return (
        "glibc malloc: no tcmalloc found (with it, prediction needs up to 40 % less memory: "
        f"{INSTALL})"
    )
