"""Blockwise prediction against MONAI ``sliding_window_inference``: throughput and peak memory.

Both run the same small network with the same tile shape, overlap and Gaussian blending, end to
end from a uint8 zarr volume to a uint8 probability zarr (MONAI: read the whole volume, infer,
write). Each measurement runs in a fresh process and reports its own peak RSS; the table gives
the peak above the process's RSS after imports (torch, Lightning), which both share.

    python benchmarks/predict_scale.py --sizes 0.1 0.5 2.0 --monai-max-gvox 1.0
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import record

PLANE = (1024, 1024)
TILE = (32, 128, 128)
OVERLAP = 0.5
TILE_BATCH = 4


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def small_net():  # noqa: ANN201
    import torch
    from torch import nn

    torch.manual_seed(0)
    # One 3x3x3 convolution: cheap enough that the tiling, blending and I/O around it, which
    # is what differs between the two, are a large share of the time.
    return nn.Conv3d(1, 1, 3, padding=1).eval()


def make_volume(path: Path, depth: int) -> None:
    from mitoseg import io

    out = io.create_volume(path, (depth, *PLANE), "uint8", chunks=(32, 256, 256))
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 256, (32, *PLANE), dtype=np.uint8)
    for z in range(0, depth, 32):
        out[z : z + 32] = np.roll(pattern, z, axis=2)[: depth - z]


def run_ours(raw: Path, output: Path, block: tuple[int, int, int], workers: int) -> dict:
    import pytorch_lightning as pl

    from mitoseg import io
    from mitoseg.predict.blocks import BlockPlan, BlockPredictData, BlockWriter
    from mitoseg.train.module import SegmentationModule

    base = rss_mib()
    start = time.perf_counter()
    shape = tuple(io.open_volume(raw).shape)
    plan = BlockPlan(str(raw), shape, ("fg",), "uint8", block, TILE, OVERLAP, "gaussian",
                     "none", "bench")  # fmt: skip
    module = SegmentationModule(small_net(), channels=plan.channels, tile_batch=TILE_BATCH)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, use_distributed_sampler=False,
                         callbacks=[BlockWriter(plan, output, progress=False)])  # fmt: skip
    data = BlockPredictData(plan, output, overwrite=True, num_workers=workers)
    trainer.predict(module, datamodule=data, return_predictions=False)
    return {"seconds": time.perf_counter() - start, "base_mib": base, "peak_mib": rss_mib()}


def run_monai(raw: Path, output: Path) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from mitoseg import io

    net = small_net()
    base = rss_mib()
    start = time.perf_counter()
    volume = io.open_volume(raw)[:]
    x = torch.from_numpy(volume)[None, None].float().div_(255.0)  # as lean as a user can
    del volume
    with torch.inference_mode():
        probs = sliding_window_inference(
            x, TILE, TILE_BATCH, lambda t: torch.sigmoid(net(t)), overlap=OVERLAP,
            mode="gaussian", sigma_scale=0.125,
        )  # fmt: skip
        infer = time.perf_counter() - start
        del x
        stored = probs[0].clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).numpy()
        del probs
    io.write_volume(output, stored, chunks=(1, 32, 256, 256), overwrite=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "infer_seconds": infer, "base_mib": base, "peak_mib": rss_mib()}


def child(args: argparse.Namespace) -> None:
    if args.child == "ours":
        result = run_ours(Path(args.raw), Path(args.out), tuple(args.block), args.workers)
    else:
        result = run_monai(Path(args.raw), Path(args.out))
    print(json.dumps(result))


def measure(kind: str, raw: Path, out: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--raw", str(raw), "--out", str(out),
               "--block", *map(str, args.block), "--workers", str(args.workers)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(ours: Path, monai: Path) -> int:
    from mitoseg import io

    a, b = io.open_volume(ours), io.open_volume(monai)
    worst = 0
    for z in range(0, a.shape[1], 64):
        diff = np.abs(a[:, z : z + 64].astype(np.int16) - b[:, z : z + 64].astype(np.int16))
        worst = max(worst, int(diff.max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.1, 0.5, 2.0])
    parser.add_argument("--monai-max-gvox", type=float, default=1.0)
    parser.add_argument("--impls", nargs="+", choices=["ours", "monai"], default=["ours", "monai"])
    parser.add_argument("--block", type=int, nargs=3, default=[64, 1024, 1024])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", choices=["ours", "monai"], default=None)
    parser.add_argument("--raw")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="mitoseg-predict-bench-"))
    print("| Gvox | shape | impl | s | Mvox/s | peak MiB above imports | ratio vs MONAI |")
    print("|---|---|---|---|---|---|---|")
    headline = None  # the largest size that both ran
    for size in args.sizes:
        depth = max(32, round(size * 1e9 / (PLANE[0] * PLANE[1]) / 32) * 32)
        raw = scratch / f"raw_{depth}.zarr"
        if not raw.exists():
            make_volume(raw, depth)
        voxels = depth * PLANE[0] * PLANE[1]
        rows = {}
        if "ours" in args.impls:
            rows["ours"] = measure("ours", raw, scratch / "ours.zarr", args)
        if "monai" in args.impls and voxels / 1e9 <= args.monai_max_gvox:
            rows["monai"] = measure("monai", raw, scratch / "monai.zarr", args)
            if "ours" in rows:
                rows["monai"]["max_diff_uint8"] = compare(
                    scratch / "ours.zarr", scratch / "monai.zarr"
                )
        for name, r in rows.items():
            extra = r["peak_mib"] - r["base_mib"]
            ratio = ""
            if "monai" in rows and name == "ours":
                m = rows["monai"]
                speed = m["seconds"] / r["seconds"]
                memory = extra / (m["peak_mib"] - m["base_mib"])
                ratio = f"{speed:.2f}x speed, {memory:.3f}x memory"
            speed = voxels / r["seconds"] / 1e6
            cells = [f"{voxels / 1e9:.2f}", f"{depth}x{PLANE[0]}x{PLANE[1]}", name,
                     f"{r['seconds']:.1f}", f"{speed:.2f}", f"{extra:.0f}", ratio]  # fmt: skip
            print("| " + " | ".join(cells) + " |", flush=True)
        print(json.dumps({"gvox": voxels / 1e9, **rows}), file=sys.stderr, flush=True)
        if {"ours", "monai"} <= rows.keys():
            headline = voxels, rows
    if headline:
        voxels, rows = headline
        ours, monai = rows["ours"], rows["monai"]
        name = "MONAI sliding_window_inference on the whole volume, same network and tiling"
        notes = f"{voxels / 1e9:.2f} Gvox, block {args.block}, {args.workers} loader worker(s)"
        record(
            "predict_blockwise_mvox_per_s",
            voxels / ours["seconds"] / 1e6,
            "Mvox/s",
            baseline=voxels / monai["seconds"] / 1e6,
            baseline_name=name,
            notes=notes,
        )
        record(
            "predict_blockwise_peak_mib",
            ours["peak_mib"] - ours["base_mib"],
            "MiB",
            baseline=monai["peak_mib"] - monai["base_mib"],
            baseline_name=name,
            notes=notes + ", peak RSS above imports",
        )


if __name__ == "__main__":
    main()
