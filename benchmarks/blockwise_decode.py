"""Blockwise decoding against the in-memory decoder, side by side on the same probabilities.

For each target (BC, BCD, A, AC) and size, one run decodes the same probabilities in memory
(``run_decoder``, one process), then block by block on a local Dask cluster of 1 and of 2 worker
processes (``decode_blockwise``, cluster start-up excluded), each in a fresh process; it reports
seconds, Mvox/s, blockwise against in memory, 2 workers against 1 (and, for what two cores give
on this machine, two in-memory decoders run at once against one alone), the CPU seconds of every
process (client and workers: on a shared machine a steadier measure of the work than the wall
clock), the peak memory (in memory: the process; blockwise: the largest worker, and the client)
and whether the blockwise output is identical to the in-memory one.

Inputs: mitochondria of the five hard shape families (:mod:`mitoseg.datasets.shape_families`:
tubes, branched, necked chains, small ones, touching pairs) at MitoEM's 30 x 8 x 8 nm, placed
at random without overlap in a pattern of 40 z-slices, repeated along z to the size (ids offset
per repeat); each target's perfect probabilities blurred and noised (as ``decode_speed.py``),
uint8 or float32, chunks (C, 32, 256, 256) as mitoseg-predict writes them. Objects cross block
faces on every axis; every component fits in the default halo, so outputs must be identical.

    python benchmarks/blockwise_decode.py --sizes 0.03 [--targets bc bcd a ac] [--workers 1 2]
        [--plane 1024] [--dtype uint8] [--memory-max-gvox 4] [--dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from blockwise_scale import (
    cpu_seconds,
    markdown,
    on_cluster,
    parse_with_child,
    peak_kib,
    reset_peak,
)
from results import record

VOXEL_SIZE_NM = (30.0, 8.0, 8.0)
SLAB = 40  # z-slices of the repeated pattern; not a multiple of the block depth
CHUNKS = (32, 256, 256)
WINDOW = 64  # z-slices written at a time
TARGETS = ("bc", "bcd", "a", "ac")


# --------------------------------------------------------------------------- inputs


def slab_labels(plane: int, seed: int = 0, draws: int = 6) -> np.ndarray:
    """uint32 (SLAB, plane, plane): ``draws`` volumes of each shape family, placed again and
    again at random places where their objects stay two voxels (z: one) from all others, ids
    1..n."""
    from scipy import ndimage

    from mitoseg.datasets.shape_families import SHAPE_FAMILIES, shape_family

    rng = np.random.default_rng(seed)
    parts = [shape_family(f, VOXEL_SIZE_NM, seed=seed * draws + s) for f in SHAPE_FAMILIES
             for s in range(draws)]  # fmt: skip
    # Objects keep two voxels (z: one) from each other's: distinct mitochondria.
    grown = {id(p): ndimage.binary_dilation(p > 0, np.ones((3, 5, 5), bool)) for p in parts}
    labels = np.zeros((SLAB, plane, plane), np.uint32)
    taken = np.zeros(labels.shape, bool)
    for _ in range(plane**2 // 50):
        part = parts[int(rng.integers(len(parts)))]
        if any(p > s for p, s in zip(part.shape, labels.shape, strict=True)):
            continue
        room = np.asarray(labels.shape) - np.asarray(part.shape) + 1
        start = [int(rng.integers(0, r)) for r in room]
        box = tuple(slice(a, a + p) for a, p in zip(start, part.shape, strict=True))
        if (taken[box] & (part > 0)).any():
            continue
        taken[box] |= grown[id(part)]
        labels[box] = np.where(part > 0, part + labels.max(), labels[box])
    return labels


def slab_probs(target: object, labels: np.ndarray, dtype: str, seed: int = 0) -> np.ndarray:
    """The target's perfect probabilities blurred and noised: (C, *labels.shape) ``dtype``."""
    from scipy import ndimage

    from mitoseg.evaluate.roundtrip import perfect_probs

    rng = np.random.default_rng(seed)
    probs = perfect_probs(target, labels, "float32")  # type: ignore[arg-type]
    sigma = (0.0, 0.5, 1.5, 1.5)
    probs = ndimage.gaussian_filter(probs, sigma, mode=("nearest", "wrap", "reflect", "reflect"))
    probs += 0.1 * ndimage.gaussian_filter(rng.standard_normal(probs.shape, np.float32), 2.0)
    probs += 0.03 * rng.standard_normal(probs.shape, dtype=np.float32)
    probs = np.clip(probs, 0.0, 1.0)
    return np.rint(probs * 255).astype(np.uint8) if dtype == "uint8" else probs


def write_probs(path: Path, depth: int, probs: np.ndarray) -> None:
    """Repeat the pattern to ``depth`` slices, WINDOW at a time; ``.done`` marks success."""
    from mitoseg import io

    shape = (probs.shape[0], depth, *probs.shape[2:])
    attrs = {"voxel_size_nm": list(VOXEL_SIZE_NM), "kind": "probabilities"}
    out = io.create_volume(
        path, shape, probs.dtype, chunks=(shape[0], *CHUNKS), attrs=attrs, overwrite=True
    )
    for z0 in range(0, depth, WINDOW):
        z = np.arange(z0, min(z0 + WINDOW, depth))
        out[:, z0 : z0 + z.size] = probs[:, z % SLAB]
    path.with_suffix(".done").touch()


def inputs(args: argparse.Namespace, target: str, gvox: float) -> Path:
    depth = math.ceil(gvox * 1e9 / args.plane**2)
    path = args.dir / f"{target}_{args.dtype}_{depth}x{args.plane}x{args.plane}.zarr"
    if not path.with_suffix(".done").exists():
        from mitoseg.evaluate.roundtrip import target_decoders

        start = time.perf_counter()
        transform = target_decoders(VOXEL_SIZE_NM)[target][0]
        write_probs(path, depth, slab_probs(transform, pattern(args.plane), args.dtype))
        print(f"wrote {path.name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return path


_PATTERN: dict[int, np.ndarray] = {}


def pattern(plane: int) -> np.ndarray:
    if plane not in _PATTERN:
        _PATTERN[plane] = slab_labels(plane)
    return _PATTERN[plane]


# --------------------------------------------------------------------------- child process


def block_settings(args: argparse.Namespace) -> dict:
    """``decode_blockwise``'s block and halo of ``--block-shape`` / ``--halo`` (None: its
    defaults)."""
    given = {"block_shape": args.block_shape, "halo": args.halo}
    return {key: tuple(value) for key, value in given.items() if value}


def child(args: argparse.Namespace) -> None:
    """Decode once (in memory with --workers-n -1, else blockwise); print a JSON line."""
    from mitoseg import io
    from mitoseg.decode.base import with_voxel_size
    from mitoseg.decode.blockwise import decode_blockwise
    from mitoseg.decode.run import run_decoder
    from mitoseg.evaluate.roundtrip import target_decoders

    probs, output = args.probs, args.output
    decoder = target_decoders(VOXEL_SIZE_NM)[args.target][1]
    if args.workers_n < 0:
        base, cpu = reset_peak(), cpu_seconds()
        start = time.perf_counter()
        run_decoder(decoder, probs, output)
        seconds = time.perf_counter() - start
        peaks = {"peak_mib": (peak_kib() - base) / 1024, "cpu_s": cpu_seconds() - cpu}
    else:
        decoder = with_voxel_size(decoder, io.open_volume(probs).attrs["voxel_size_nm"], probs)
        run, took = on_cluster(
            args.workers_n,
            lambda client: decode_blockwise(
                decoder, probs, output, client=client, progress=False, **block_settings(args)
            ),
        )
        seconds = took["seconds"]
        peaks = {
            "peak_mib": max(took["worker_mib"]),
            "client_mib": took["client_mib"],
            "cpu_s": took["cpu_s"],
            "stages": run.summary["stages"],
        }
    print(json.dumps({"seconds": seconds, **peaks}))


def command(args: argparse.Namespace, target: str, probs: Path, workers: int, output: Path) -> list:
    line = [sys.executable, __file__, "--child", target, "--workers-n", str(workers),
            "--probs", str(probs), "--output", str(output)]  # fmt: skip
    for name in ("block_shape", "halo"):
        if getattr(args, name):
            line += [f"--{name.replace('_', '-')}", *map(str, getattr(args, name))]
    return line


def spawn(
    args: argparse.Namespace, target: str, probs: Path, workers: int, copies: int = 1
) -> dict:
    """Decode in ``copies`` fresh processes at once (in memory: ``workers`` -1); the figures of
    the slowest, with ``seconds_each``."""
    outputs = [probs.with_name(probs.stem + f"_out{workers}_{i}.zarr") for i in range(copies)]
    running = [
        subprocess.Popen(
            command(args, target, probs, workers, out),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for out in outputs
    ]
    found = []
    for process in running:
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{target} ({workers} workers) failed:\n{stderr[-3000:]}")
        found.append(json.loads(stdout.strip().splitlines()[-1]))
    slowest = max(range(copies), key=lambda i: found[i]["seconds"])
    each = [f["seconds"] for f in found]
    return {**found[slowest], "output": outputs[slowest], "seconds_each": each}


# --------------------------------------------------------------------------- report


def measure(args: argparse.Namespace, target: str, gvox: float) -> list[dict]:
    from mitoseg import io

    probs = inputs(args, target, gvox)
    voxels = math.prod(io.open_volume(probs).shape[1:])
    in_memory = gvox <= args.memory_max_gvox
    modes = ([(-1, 1)] if in_memory else []) + [(w, 1) for w in args.workers]
    if in_memory and 2 in args.workers:
        modes.insert(1, (-1, 2))  # what 2 cores give: two in-memory decoders at once
    rows: list[dict] = []
    for workers, copies in modes:
        result = spawn(args, target, probs, workers, copies)
        row = {"target": target, "gvox": voxels / 1e9, "workers": workers, "copies": copies}
        row |= result
        row["mvox_per_s"] = voxels / 1e6 / result["seconds"]
        memory = next((r for r in rows if r["workers"] == -1 and r["copies"] == 1), None)
        one = next((r for r in rows if r["workers"] == 1), None)
        if copies == 2 and memory is not None:
            row["vs_one"] = 2 * memory["seconds"] / result["seconds"]  # the machine's scaling
        if memory is not None and workers >= 0:
            row["vs_memory"] = row["mvox_per_s"] / memory["mvox_per_s"]
            row["cpu_vs_memory"] = row["cpu_s"] / memory["cpu_s"]
            same = np.array_equal(
                io.open_volume(row["output"])[:], io.open_volume(memory["output"])[:]
            )
            row["identical"] = bool(same)
        if one is not None and workers > 1:
            row["vs_one"] = one["seconds"] / result["seconds"]
        rows.append(row)
        print(table([row], header=False), file=sys.stderr, flush=True)
    for row in rows:
        row["output"] = str(row["output"])
    return rows


def table(rows: list[dict], header: bool = True) -> str:
    columns = ("target | Gvox | decoder | s | Mvox/s | vs in memory | vs 1 worker (process) "
               "| CPU s "
               "| CPU vs in memory | peak MiB | client MiB | identical | stages (s)")  # fmt: skip
    lines: list[list[str]] = []
    for r in rows:
        mode = "in memory" if r["workers"] < 0 else f"blockwise, {r['workers']} worker(s)"
        if r.get("copies", 1) > 1:
            mode = f"in memory, {r['copies']} processes at once (each on the whole volume)"
        ratio = {k: f"{r[k]:.2f}x" if k in r else "-" for k in ("vs_memory", "vs_one")}
        stages = " ".join(f"{k} {v:.1f}" for k, v in r.get("stages", {}).items()) or "-"
        cells = [r["target"], f"{r['gvox']:.3f}", mode, f"{r['seconds']:.2f}",
                 f"{r['mvox_per_s']:.1f}", ratio["vs_memory"], ratio["vs_one"],
                 f"{r['cpu_s']:.1f}", f"{r['cpu_vs_memory']:.2f}x" if "cpu_vs_memory" in r else "-",
                 f"{r['peak_mib']:.0f}", f"{r['client_mib']:.0f}" if "client_mib" in r else "-",
                 str(r.get("identical", "-")), stages]  # fmt: skip
        lines.append(cells)
    return markdown(columns, lines, header)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.1, 0.5, 2.0], help="Gvox")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--plane", type=int, default=1024, help="Y = X of every volume")
    parser.add_argument("--dtype", choices=["uint8", "float32"], default="uint8")
    parser.add_argument("--memory-max-gvox", type=float, default=1.0,
                        help="decode in memory only up to this size (the in-memory A and AC "
                        "decoders need about 20 bytes per voxel)")  # fmt: skip
    parser.add_argument(
        "--dir", type=Path, default=Path(tempfile.gettempdir()) / "mitoseg-blockwise-decode"
    )
    parser.add_argument("--block-shape", type=int, nargs=3, help="default: decode_blockwise's")
    parser.add_argument("--halo", type=int, nargs=3, help="default: decode_blockwise's")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--no-record", action="store_true", help="leave results.json alone")
    return parse_with_child(parser, TARGETS, ("--probs", "--output"))


def main() -> None:
    args = parse_args()
    if args.child:
        args.target = args.child
        child(args)
        return
    rows = [row for gvox in args.sizes for t in args.targets for row in measure(args, t, gvox)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
        f"{load:.1f} at the end; {args.dtype} probabilities, chunks {list(CHUNKS)}, default "
        "block (64, 512, 512) and halo (16, 64, 64)"
    )
    print(table(rows))
    for target in args.targets:
        compared = [r["gvox"] for r in rows if r["target"] == target and "vs_memory" in r]
        if not compared:
            continue
        mine = [r for r in rows if r["target"] == target and r["gvox"] == max(compared)]
        one = next((r for r in mine if r["workers"] == 1 and "vs_memory" in r), None)
        two = next((r for r in mine if r["workers"] == 2 and "vs_one" in r), None)
        pair = next((r for r in mine if r.get("copies", 1) == 2), None)
        if one is None or two is None or args.no_record:
            continue
        notes = (f"{one['gvox']:.2f} Gvox {args.dtype}; 1 worker {one['vs_memory']:.2f}x in "
                 f"memory, 2 workers {two['vs_one']:.2f}x 1 worker, worker peak "
                 f"{max(one['peak_mib'], two['peak_mib']):.0f} MiB, identical: "
                 f"{one['identical'] and two['identical']}")  # fmt: skip
        record(
            f"blockwise_decode_{target}_1_worker_mvox_per_s",
            one["mvox_per_s"],
            "Mvox/s",
            baseline=one["mvox_per_s"] / one["vs_memory"],
            baseline_name="the in-memory decoder on the same probabilities",
            notes=notes,
        )
        if pair is not None:
            record(
                f"blockwise_decode_{target}_2_workers_speedup",
                two["vs_one"],
                "x 1 worker",
                baseline=pair["vs_one"],
                baseline_name="two in-memory decoders at once against one alone (the machine)",
                notes=notes,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
