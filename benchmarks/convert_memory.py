"""Peak memory of ``mitoseg.io.convert`` on the full Lucchi++ train volume.

Each case runs in a fresh child process; its peak resident set size is read with
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` in a separate measuring process per case (that
value is a maximum over all waited-for children, so cases must not share a parent). The
baseline child only imports the modules a conversion uses. Prints a markdown table.

Usage::

    python benchmarks/convert_memory.py [--data ../shared/data/lucchi_pp] [--chunks 32 256 256]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20

_CONVERT = (
    "import sys; from mitoseg.io import convert; "
    "a = convert(sys.argv[1] + '/{name}', sys.argv[2] + '/out.zarr', {kwargs}"
    "chunks=tuple(map(int, sys.argv[3:6]))); print(list(a.shape), str(a.dtype))"
)
# Fixing glibc's mmap threshold stops it from keeping freed slab-sized blocks on the heap:
# the difference to the default row is allocator retention, not data kept alive.
_FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "65536"}

# case -> (child code, extra environment)
CASES: dict[str, tuple[str, dict[str, str]]] = {
    "baseline (imports only)": ("import mitoseg.io, numpy, zarr, tifffile, h5py, PIL, tqdm", {}),
    "raw train_im.tif": (_CONVERT.format(name="train_im.tif", kwargs=""), {}),
    "raw, first 32 slices only": (
        _CONVERT.format(name="train_im.tif", kwargs="z_range=(0, 32), "),
        {},
    ),
    "raw, MALLOC_MMAP_THRESHOLD_=64k": (
        _CONVERT.format(name="train_im.tif", kwargs=""),
        _FIXED_MMAP,
    ),
    "raw, first 32 slices, MALLOC_MMAP_THRESHOLD_=64k": (
        _CONVERT.format(name="train_im.tif", kwargs="z_range=(0, 32), "),
        _FIXED_MMAP,
    ),
    "labels train_label.tif": (_CONVERT.format(name="train_label.tif", kwargs="labels=True, "), {}),
}

logger = logging.getLogger("convert_memory")


def measure(case: str, data: Path, chunks: list[int]) -> dict[str, float | str]:
    """Run one case in a child process; peak RSS (MiB), wall time (s) and the child's stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        code, env = CASES[case]
        argv = [sys.executable, "-c", code, str(data), tmp, *map(str, chunks)]
        done = subprocess.run(argv, capture_output=True, text=True, env=os.environ | env)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"case {case!r} failed:\n{done.stderr}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return {"peak_mib": peak_kib / 1024, "seconds": seconds, "output": done.stdout.strip()}


def measure_isolated(case: str, data: Path, chunks: list[int]) -> dict[str, float | str]:
    """``measure`` in a fresh process of its own, so RUSAGE_CHILDREN sees this case only."""
    argv = [sys.executable, __file__, "--measure", case, "--data", str(data), "--chunks"]
    done = subprocess.run([*argv, *map(str, chunks)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout)


def volume_bytes(data: Path) -> int:
    """Decoded size of train_im.tif (uint8 (Z, Y, X); the labels have the same size)."""
    import tifffile

    with tifffile.TiffFile(data / "train_im.tif") as tif:
        series = tif.series[0]
        return int(series.size) * series.dtype.itemsize


def table(results: dict[str, dict[str, float | str]], vol: float) -> str:
    """Markdown table of peak RSS against the baseline and the volume size."""
    base = float(results["baseline (imports only)"]["peak_mib"])
    rows = [
        "| case | peak RSS MiB | minus baseline MiB | volume MiB | peak / volume "
        "| (peak - baseline) / volume | time s | output |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case, r in results.items():
        peak = float(r["peak_mib"])
        rows.append(
            f"| {case} | {peak:.0f} | {peak - base:.0f} | {vol:.0f} | {peak / vol:.2f} "
            f"| {(peak - base) / vol:.2f} | {float(r['seconds']):.1f} | {r['output']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data" / "lucchi_pp")
    p.add_argument("--chunks", type=int, nargs=3, default=[32, 256, 256], metavar=("Z", "Y", "X"))
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
    results = {}
    for case in CASES:
        logger.info("measuring %s", case)
        results[case] = measure_isolated(case, data, args.chunks)
    size = volume_bytes(data)
    print(f"data {data}, chunks {tuple(args.chunks)}, volume {size:,} bytes\n")
    print(table(results, size / MIB))
    return 0


if __name__ == "__main__":
    sys.exit(main())
