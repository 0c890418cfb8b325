"""Peak memory of ``mitoseg.io.convert``: Lucchi++ train volume and a large synthetic stack.

Each case runs in a fresh child process; its peak resident set size is read with
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` in a separate measuring process per case (that
value is a maximum over all waited-for children, so cases must not share a parent). The
baseline child only imports the modules a conversion uses. The "large" case converts a
multi-page TIFF of ``--large-pages`` Lucchi-sized pages (800: 600 MiB, about 5x the train
volume), built page by page from the train pages (every other pass flipped) in a temporary
folder that is deleted afterwards: peak memory must not grow with the volume. Prints a
markdown table.

Usage::

    python benchmarks/convert_memory.py [--data ../shared/data/lucchi_pp] [--chunks 32 256 256]
        [--large-pages 800] [--skip-large]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from results import record

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
LARGE = "large.tif"  # the synthetic stack, in its own temporary folder


@dataclass(frozen=True)
class Case:
    """One child process: ``file`` (in the data folder) converted with ``kwargs``."""

    file: str | None  # None: the imports-only baseline
    kwargs: str = ""
    z_range: tuple[int, int] | None = None
    large: bool = False  # reads the synthetic stack instead of the data folder


CASES: dict[str, Case] = {
    "baseline (imports only)": Case(None),
    "raw train_im.tif, first 32 slices": Case("train_im.tif", z_range=(0, 32)),
    "raw train_im.tif": Case("train_im.tif"),
    "labels train_label.tif": Case("train_label.tif", kwargs="labels=True, "),
    "raw synthetic multi-page TIFF": Case(LARGE, large=True),
}

_IMPORTS = "import mitoseg.io, numpy, zarr, tifffile, h5py, PIL, tqdm"
_CONVERT = (
    "import sys; from mitoseg.io import convert; "
    "a = convert(sys.argv[1] + '/{name}', sys.argv[2] + '/out.zarr', {kwargs}"
    "chunks=tuple(map(int, sys.argv[3:6]))); print(list(a.shape), str(a.dtype))"
)

logger = logging.getLogger("convert_memory")


def child_code(case: Case) -> str:
    if case.file is None:
        return _IMPORTS
    kwargs = case.kwargs + (f"z_range={case.z_range}, " if case.z_range else "")
    return _CONVERT.format(name=case.file, kwargs=kwargs)


def measure(name: str, data: Path, chunks: list[int]) -> dict[str, float | str]:
    """Run one case in a child process; peak RSS (MiB), wall time (s) and the child's stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        argv = [sys.executable, "-c", child_code(CASES[name]), str(data), tmp, *map(str, chunks)]
        done = subprocess.run(argv, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"case {name!r} failed:\n{done.stderr}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return {"peak_mib": peak_kib / 1024, "seconds": seconds, "output": done.stdout.strip()}


def measure_isolated(name: str, data: Path, chunks: list[int]) -> dict[str, float | str]:
    """``measure`` in a fresh process of its own, so RUSAGE_CHILDREN sees this case only."""
    argv = [sys.executable, __file__, "--measure", name, "--data", str(data), "--chunks"]
    done = subprocess.run([*argv, *map(str, chunks)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout)


def volume_mib(case: Case, data: Path, large_dir: Path | None) -> float:
    """Decoded size of the converted slices (all test volumes are uint8 (Z, Y, X))."""
    if case.file is None:
        return float("nan")
    folder = large_dir if case.large else data
    assert folder is not None
    from mitoseg.io import volume_shape

    shape = volume_shape(folder / case.file)
    depth = case.z_range[1] - case.z_range[0] if case.z_range else shape[0]
    return depth * int(np.prod(shape[1:])) / MIB


def write_large_tiff(path: Path, train: Path, depth: int) -> None:
    """``depth`` deflate pages cycling through the train pages, every other cycle flipped in y."""
    import tifffile

    with tifffile.TiffFile(train) as src:
        pages = src.pages
        n = len(pages)
        first = pages[0].asarray()

        def stack() -> Iterator[np.ndarray]:
            for z in range(depth):
                page = pages[z % n].asarray()
                yield page if (z // n) % 2 == 0 else page[::-1]

        tifffile.imwrite(
            path,
            stack(),
            shape=(depth, *first.shape),
            dtype=first.dtype,
            bigtiff=True,
            compression="zlib",
            compressionargs={"level": 1},
        )


def table(results: dict[str, dict[str, float | str]], volumes: dict[str, float]) -> str:
    """Markdown table of peak RSS against the baseline and each case's volume size."""
    base = float(results["baseline (imports only)"]["peak_mib"])
    rows = [
        "| case | volume MiB | peak RSS MiB | peak - baseline MiB | (peak - baseline) / volume "
        "| time s | output |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        peak, vol = float(r["peak_mib"]), volumes[name]
        if CASES[name].file is None:
            rows.append(f"| {name} | | {peak:.0f} | 0 | | {float(r['seconds']):.1f} | |")
            continue
        rows.append(
            f"| {name} | {vol:.0f} | {peak:.0f} | {peak - base:.0f} | {(peak - base) / vol:.2f} "
            f"| {float(r['seconds']):.1f} | {r['output']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data" / "lucchi_pp")
    p.add_argument("--chunks", type=int, nargs=3, default=[32, 256, 256], metavar=("Z", "Y", "X"))
    p.add_argument("--large-pages", type=int, default=800, help="pages of the synthetic stack")
    p.add_argument("--skip-large", action="store_true", help="leave out the synthetic stack")
    p.add_argument("--measure", choices=list(CASES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    data = args.data.resolve()
    if args.measure:
        print(json.dumps(measure(args.measure, data, args.chunks)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (data / "train_im.tif").exists():
        logger.error("no train_im.tif in %s; pass --data", data)
        return 2
    names = [n for n in CASES if not (CASES[n].large and args.skip_large)]
    results: dict[str, dict[str, float | str]] = {}
    volumes: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="convert_memory-") as tmp:
        large_dir = None
        if not args.skip_large:
            large_dir = Path(tmp)
            start = time.perf_counter()
            write_large_tiff(large_dir / LARGE, data / "train_im.tif", args.large_pages)
            size = (large_dir / LARGE).stat().st_size / MIB
            logger.info("wrote %s (%.0f MiB) in %.1f s", LARGE, size, time.perf_counter() - start)
        for name in names:
            case = CASES[name]
            logger.info("measuring %s", name)
            folder = large_dir if case.large else data
            assert folder is not None
            results[name] = measure_isolated(name, folder, args.chunks)
            volumes[name] = volume_mib(case, data, large_dir)
    print(f"data {data}, chunks {tuple(args.chunks)}\n")
    print(table(results, volumes))
    large = "raw synthetic multi-page TIFF"
    if large in results:  # the headline: peak memory does not grow with the volume
        base = float(results["baseline (imports only)"]["peak_mib"])
        peak = float(results[large]["peak_mib"])
        record(
            "convert_peak_rss_mib",
            peak,
            "MiB",
            baseline=base,
            baseline_name="peak RSS of a child process that only imports the conversion modules",
            notes=f"{args.large_pages}-page synthetic multi-page TIFF ({volumes[large]:.0f} MiB): "
            f"{peak - base:.0f} MiB above imports, chunks {tuple(args.chunks)}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
