"""Blockwise decode, evaluation and connected components on Dask: Mvox/s and peak RSS by size.

Peak memory should stay flat as the volume grows; 2 workers against 1 give the speed-up.

Inputs, made once per size and reused from ``--dir``: uint8 BC probabilities (2, Z, Y, X) in
chunks of (2, 32, 256, 256), as mitoseg-predict writes them, and uint32 ground-truth instances
(Z, Y, X). One slab of 80 z-slices of synthetic mitochondria at (15, 4, 4) nm (objects of about
1e4 voxels, touching pairs, necked chains) is placed once and repeated along z with ids offset
per repeat; the probabilities are its smoothed mask and contour band plus noise, periodic in z
so that the seams look like any other place. Objects cross block faces in every axis, and many
mask components hold several seeds (the flood path). Writing streams 64 slices at a time.

Each (size, stage, workers) runs in a fresh process that starts its own ``LocalCluster`` (one
thread per worker process) and times the stage alone, cluster start-up excluded:

- decode: ``decode_blockwise(BCWatershed())`` (published defaults) to instances.zarr, pyramid
  included; "serial s" is the part outside the block passes (planning, pyramid, renames);
- evaluate: ``blockwise_overlaps`` of truth and decoded instances + ``scores_from_overlaps``;
- cc: exact 26-connected components of the truth's foreground (``connected_components``).

Memory is VmHWM (peak RSS) minus the RSS after imports, reset through /proc/self/clear_refs:
of the client process, which also hosts the scheduler, and of each worker process, read on the
workers with ``client.run`` (nanny processes not counted). A worker's peak follows the block
shape and halo; it is flat in the volume once the volume is deeper than a block.

    python benchmarks/blockwise_scale.py --sizes 0.1 0.5 2.0 --dir /scratch/bw-bench
        [--plane 1024] [--block-shape 64 512 512] [--halo 16 64 64]
        [--stages decode evaluate cc] [--workers 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from results import record

STAGES = ("decode", "evaluate", "cc")
SLAB = 80  # z-slices of the repeated pattern; not a multiple of the block depth
VOXEL_SIZE_NM = (15.0, 4.0, 4.0)
CHUNKS = (32, 256, 256)
WINDOW = 64  # z-slices written at a time
PAIRS, CHAINS = 60, 15  # per slab of 1024 x 1024 in-plane
T = TypeVar("T")


# --------------------------------------------------------------------------- inputs


def slab_labels(plane: int, seed: int = 0) -> np.ndarray:
    """uint32 (SLAB, plane, plane) instance ids 1..n, about 10 % foreground."""
    from mitoseg.datasets.synthetic import _place_objects  # labels only: no raw image to paint

    labels = np.zeros((SLAB, plane, plane), np.uint32)
    share = plane**2 / 1024**2
    pairs, chains = max(1, round(PAIRS * share)), max(1, round(CHAINS * share))
    rng = np.random.default_rng(seed)
    _place_objects(labels, np.asarray(VOXEL_SIZE_NM), rng, None, pairs, chains)
    return labels


def slab_probs(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint8 (2, *labels.shape) foreground and contour, periodic in z like the repeated truth."""
    from scipy import ndimage

    from mitoseg.train.targets import instance_contour

    rng = np.random.default_rng(seed)
    sigma, wrap = (0.5, 1.5, 1.5), ("wrap", "reflect", "reflect")
    r, step = 2, np.uint32(labels.max())
    # The neighbouring repeats, ids shifted, so that the band also follows the seams.
    padded = np.concatenate(
        [
            np.where(labels[-r:] > 0, labels[-r:] + step, 0),
            labels,
            np.where(labels[:r] > 0, labels[:r] + 2 * step, 0),
        ]
    )
    contour = instance_contour(padded, width=4, in_plane=False)[r:-r]
    out = np.empty((2, *labels.shape), np.uint8)
    for c, channel in enumerate([labels > 0, contour]):
        value = ndimage.gaussian_filter(channel.astype(np.float32), sigma, mode=wrap)
        noise = rng.standard_normal(labels.shape, np.float32)
        value += 0.15 * ndimage.gaussian_filter(noise, 2.0, mode=wrap)
        value += 0.04 * rng.standard_normal(labels.shape, np.float32)
        out[c] = np.rint(np.clip(value, 0, 1) * 255)
    return out


def input_paths(root: Path, depth: int, plane: int) -> tuple[Path, Path]:
    tag = f"{depth}x{plane}x{plane}"
    return root / f"probs_{tag}.zarr", root / f"truth_{tag}.zarr"


def write_inputs(root: Path, depth: int, labels: np.ndarray, probs: np.ndarray) -> None:
    """Repeat the slab to ``depth`` slices, WINDOW at a time; a ``.done`` file marks success."""
    from mitoseg import io

    plane = labels.shape[-1]
    probs_path, truth_path = input_paths(root, depth, plane)
    shape = (depth, plane, plane)
    attrs = {"voxel_size_nm": list(VOXEL_SIZE_NM)}
    out_p = io.create_volume(
        probs_path,
        (2, *shape),
        np.uint8,
        chunks=(2, *CHUNKS),
        attrs=attrs | {"kind": "probabilities", "channels": ["fg", "contour"]},
        overwrite=True,
    )
    out_t = io.create_volume(
        truth_path,
        shape,
        np.uint32,
        chunks=CHUNKS,
        attrs=attrs | {"kind": "labels"},
        overwrite=True,
    )
    step = np.uint32(labels.max())
    for z0 in range(0, depth, WINDOW):
        z = np.arange(z0, min(z0 + WINDOW, depth))
        out_p[:, z0 : z0 + z.size] = probs[:, z % SLAB]
        part = labels[z % SLAB]
        shift = (z // SLAB).astype(np.uint32)[:, None, None] * step
        out_t[z0 : z0 + z.size] = np.where(part > 0, part + shift, np.uint32(0))
    probs_path.with_suffix(".done").touch()


# --------------------------------------------------------------------------- child process


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak() -> int:
    """Import what the tasks use, reset the peak RSS (Linux >= 4.0); the RSS now in KiB."""
    import cc3d  # noqa: F401
    import skimage.segmentation  # noqa: F401

    import mitoseg.decode.blockwise  # noqa: F401

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then the peak includes start-up: an upper bound
    return _status_kib("VmRSS")


def peak_kib() -> int:
    return _status_kib("VmHWM")


def run_stage(stage: str, args: argparse.Namespace, client: object) -> dict:
    from mitoseg import io
    from mitoseg.decode.base import with_voxel_size
    from mitoseg.decode.blockwise import connected_components, decode_blockwise
    from mitoseg.decode.instances import BCWatershed
    from mitoseg.evaluate.blockwise import blockwise_overlaps
    from mitoseg.evaluate.instance import scores_from_overlaps

    block, halo = tuple(args.block_shape), tuple(args.halo)
    if stage == "decode":
        kwargs = {"block_shape": block, "halo": halo, "client": client, "progress": False}
        # the size floors are in nm^3: the decoder takes the probabilities' voxel size
        voxel_size = io.open_volume(args.probs).attrs["voxel_size_nm"]
        decoder = with_voxel_size(BCWatershed(), voxel_size, args.probs)
        run = decode_blockwise(decoder, args.probs, args.decoded, **kwargs)
        return {"result": run.summary["instances"], "stages": run.summary["stages"]}
    if stage == "evaluate":
        overlaps = blockwise_overlaps(args.truth, args.decoded, block, client, progress=False)
        scores = scores_from_overlaps(overlaps)
        return {"result": scores["ap75"], "scores": scores}
    decoded = Path(args.decoded)
    cc = decoded.with_name(decoded.name.replace("instances_", "cc_"))
    n = connected_components(
        args.truth, cc, block_shape=block, client=client, overwrite=True, progress=False
    )
    return {"result": n}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def on_cluster(workers: int, work: Callable[[Any], T]) -> tuple[T, dict]:
    """``work(client)`` on a fresh local cluster of ``workers`` processes, timed alone (cluster
    start-up and shut-down excluded): its result, and seconds, memory above imports and at its
    peak (MiB) of the client and of each worker, CPU seconds of the client and workers together.
    """
    from mitoseg.decode.blockwise import dask_client

    with dask_client(None, workers) as client:
        worker_base, worker_cpu = client.run(reset_peak), client.run(cpu_seconds)
        client_base, client_cpu = reset_peak(), cpu_seconds()
        start = time.perf_counter()
        result = work(client)
        seconds = time.perf_counter() - start
        worker_peak, worker_done = client.run(peak_kib), client.run(cpu_seconds)
        client_peak, client_done = peak_kib(), cpu_seconds()
    cpu = client_done - client_cpu + sum(worker_done[w] - worker_cpu[w] for w in worker_cpu)
    return result, {
        "seconds": seconds,
        "client_mib": (client_peak - client_base) / 1024,
        "client_peak_mib": client_peak / 1024,
        "worker_mib": [(worker_peak[w] - worker_base[w]) / 1024 for w in worker_base],
        "worker_peak_mib": [kib / 1024 for kib in worker_peak.values()],
        "cpu_s": cpu,
    }


def child(args: argparse.Namespace) -> None:
    """Run one stage on a fresh local cluster; print a JSON line with time and memory."""
    result, peaks = on_cluster(args.workers, lambda client: run_stage(args.child, args, client))
    print(json.dumps({"seconds": peaks.pop("seconds"), **result, **peaks}))


def spawn(stage: str, workers: int, probs: Path, truth: Path, args: argparse.Namespace) -> dict:
    decoded = probs.with_name(probs.name.replace("probs", "instances"))
    command = [sys.executable, __file__, "--child", stage, "--workers-n", str(workers),
               "--probs", str(probs), "--truth", str(truth), "--decoded", str(decoded),
               "--block-shape", *map(str, args.block_shape),
               "--halo", *map(str, args.halo)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{stage} ({workers} workers) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


@functools.cache
def pattern(plane: int) -> tuple[np.ndarray, np.ndarray]:
    """The slab's labels and probabilities, made once per run."""
    start = time.perf_counter()
    labels = slab_labels(plane)
    probs = slab_probs(labels)
    print(f"made the {SLAB}-slice pattern in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return labels, probs


def measure(gvox: float, args: argparse.Namespace) -> list[dict]:
    depth = math.ceil(gvox * 1e9 / args.plane**2)
    probs, truth = input_paths(args.dir, depth, args.plane)
    if not probs.with_suffix(".done").exists():
        slab = pattern(args.plane)
        start = time.perf_counter()
        write_inputs(args.dir, depth, *slab)
        print(
            f"wrote {probs.name}, {truth.name} in {time.perf_counter() - start:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    decoded = probs.with_name(probs.name.replace("probs", "instances"))
    if "evaluate" in args.stages and "decode" not in args.stages and not decoded.exists():
        spawn("decode", max(args.workers), probs, truth, args)  # what evaluate scores
    voxels = depth * args.plane**2
    rows = []
    for stage in (s for s in STAGES if s in args.stages):
        for workers in args.workers:
            result = spawn(stage, workers, probs, truth, args)
            row = {
                "gvox": voxels / 1e9,
                "shape": [depth, args.plane, args.plane],
                "stage": stage,
                "workers": workers,
                **result,
            }
            row["mvox_per_s"] = voxels / 1e6 / result["seconds"]
            if "stages" in result:
                row["serial_s"] = result["seconds"] - sum(result["stages"].values())
            one = next((r for r in rows if r["stage"] == stage and r["workers"] == 1), None)
            if one is not None and workers > 1:
                row["speedup"] = one["seconds"] / result["seconds"]
                row["same_result"] = one["result"] == result["result"]
            rows.append(row)
            print(table([row], header=False), file=sys.stderr, flush=True)
    return rows


def markdown(columns: str, cells: list[list[str]], header: bool = True) -> str:
    """A Markdown table: ``columns`` (names joined by " | ") over a line per row of ``cells``;
    without ``header``, the rows alone."""
    lines = [f"| {columns} |", "|---" * len(columns.split(" | ")) + "|"] if header else []
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def table(rows: list[dict], header: bool = True) -> str:
    columns = ("Gvox | shape | stage | workers | s | Mvox/s | speed-up vs 1 | client MiB "
               "| worker MiB (max) | worker peak MiB | serial s | result")  # fmt: skip
    lines: list[list[str]] = []
    for r in rows:
        result = f"{r['result']:.3f} AP-75" if r["stage"] == "evaluate" else f"{r['result']} ids"
        if r.get("same_result") is False:
            result += " (differs from 1 worker)"
        speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        serial = f"{r['serial_s']:.1f}" if "serial_s" in r else "-"
        cells = [f"{r['gvox']:.3f}", "x".join(map(str, r["shape"])), r["stage"],
                 str(r["workers"]), f"{r['seconds']:.1f}", f"{r['mvox_per_s']:.1f}", speedup,
                 f"{r['client_mib']:.0f}", f"{max(r['worker_mib']):.0f}",
                 f"{max(r['worker_peak_mib']):.0f}", serial, result]  # fmt: skip
        lines.append(cells)
    return markdown(columns, lines, header)


def flatness(rows: list[dict]) -> str:
    """Peak memory above imports at the largest size against the smallest, per stage."""
    lines = []
    for stage in STAGES:
        mine = [r for r in rows if r["stage"] == stage]
        if len({r["gvox"] for r in mine}) < 2:
            continue
        small, large = min(r["gvox"] for r in mine), max(r["gvox"] for r in mine)
        ends = [[r for r in mine if r["gvox"] == g] for g in (small, large)]
        worker = [max(max(r["worker_mib"]) for r in e) for e in ends]
        client = [max(r["client_mib"] for r in e) for e in ends]
        lines.append(
            f"{stage}: {large / small:.0f}x the voxels, worker peak {worker[0]:.0f} -> "
            f"{worker[1]:.0f} MiB, client peak {client[0]:.0f} -> {client[1]:.0f} MiB"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.1, 0.5, 2.0], help="Gvox")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "mitoseg-blockwise-bench",
        help="scratch folder; inputs already there are reused",
    )
    parser.add_argument("--plane", type=int, default=1024, help="Y = X of every volume")
    parser.add_argument("--block-shape", type=int, nargs=3, default=[64, 512, 512])
    parser.add_argument("--halo", type=int, nargs=3, default=[16, 64, 64])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parse_with_child(parser, STAGES, ("--probs", "--truth", "--decoded"))


def parse_with_child(
    parser: argparse.ArgumentParser, children: Sequence[str], paths: Sequence[str]
) -> argparse.Namespace:
    """Add the hidden options of a child process (``--child`` one of ``children``,
    ``--workers-n``, the ``paths``) and parse; in the parent, ``--dir`` is made absolute and
    created."""
    parser.add_argument("--child", choices=children, help=argparse.SUPPRESS)
    parser.add_argument("--workers-n", type=int, help=argparse.SUPPRESS)
    for name in paths:
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:
        args.dir = args.dir.absolute()
        args.dir.mkdir(parents=True, exist_ok=True)
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        args.workers = args.workers_n
        child(args)
        return
    rows = [row for gvox in args.sizes for row in measure(gvox, args)]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"block {args.block_shape}, halo {args.halo}, chunks {list(CHUNKS)}"
    )
    print(table(rows))
    print(flatness(rows))
    pairs = [
        (a, b)
        for a in rows
        for b in rows
        if a["stage"] == b["stage"] == "decode"
        and a["gvox"] == b["gvox"]
        and a["workers"] == 1
        and b["workers"] == 2
    ]
    if pairs:  # the headline: decode with 2 workers against 1, at the largest size
        one, two = pairs[-1]
        record(
            "blockwise_decode_2_workers_seconds",
            two["seconds"],
            "s",
            baseline=one["seconds"],
            baseline_name="the same blockwise bc_watershed decode on Dask with 1 worker",
            notes=f"{two['gvox']:.2f} Gvox, block {args.block_shape}, halo {args.halo}: "
            f"{one['seconds'] / two['seconds']:.2f}x, same ids: {one['result'] == two['result']}, "
            f"worker peak {max(two['worker_mib']):.0f} MiB",
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
