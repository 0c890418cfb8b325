"""precision=auto against fp32: the Lucchi++ validation part predicted with one checkpoint.

The validation part is the last 20 % along x of ``train_im.tif`` (``conf/data/lucchipp.yaml``,
``data.val_fraction``); ``mitoseg-predict`` (in process) predicts it with the checkpoint's own
tiling and TTA, once in fp32 in the default memory layout (``trainer.precision=32-true
channels_last=false``) and once with the defaults (``precision=auto``, ``channels_last=auto``:
bf16 and channels-last where this machine has them, :mod:`mitoseg.hardware`). The table gives
each run's choice, time, throughput and foreground IoU against the labels at probability 0.5,
and the goal: the auto run's IoU within 0.002 of fp32.

    python benchmarks/bf16_accuracy.py --ckpt CKPT --root /path/to/lucchi_pp
    python benchmarks/bf16_accuracy.py --ckpt CKPT --root ... --crop 32 128 64 --no-record  # dev
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

import mitoseg.cli  # noqa: F401  (registers the config resolvers)
from mitoseg import io
from mitoseg.cli.common import compose_config
from mitoseg.cli.predict import predict
from mitoseg.geometry import Box, split_axis

GOAL = 0.002  # the most the auto run's foreground IoU may differ from fp32's
RUNS = {  # name -> mitoseg-predict overrides
    "fp32": ["trainer.precision=32-true", "channels_last=false"],
    "auto": [],  # precision=auto, channels_last=auto
}


def validation_part(root: Path, crop: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 and foreground bool (Z, Y, X) of the last 20 % along x of the training volume;
    ``crop``: only its leading ``(z, y, x)`` corner (quick runs)."""
    raw = tifffile.imread(root / "train_im.tif")
    labels = tifffile.imread(root / "train_label.tif")
    _, box = split_axis(Box.whole(raw.shape), 2, 0.2)
    if crop:
        box = Box(box.offset, tuple(min(c, s) for c, s in zip(crop, box.shape, strict=True)))
    return raw[box.slices], labels[box.slices] > 0


def fg_iou(probs: Any, truth: np.ndarray) -> float:
    """Foreground IoU of channel 0 above probability 0.5 (uint8 outputs store 255 p)."""
    scale = float(probs.attrs.get("scale", 1))
    mask = probs[0] > 0.5 * scale
    union = int((mask | truth).sum())
    return int((mask & truth).sum()) / union if union else 1.0


def run_predict(ckpt: Path, raw: Path, output: Path, cache: Path, overrides: list[str]) -> float:
    """Seconds of one in-process ``mitoseg-predict`` (its setup included, as a user waits)."""
    files = [f"ckpt={ckpt}", f"input={raw}", f"output={output}", f"cache_dir={cache}"]
    cfg = compose_config("predict", [*files, "trainer.enable_progress_bar=false", *overrides])
    start = time.perf_counter()
    predict(cfg)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="a Lucchi++ checkpoint")
    parser.add_argument("--root", type=Path, required=True, help="folder of train_im.tif ...")
    parser.add_argument("--crop", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None)
    parser.add_argument("--tta", default=None, help="override the checkpoint's TTA (e.g. none)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--no-record", action="store_true", help="leave results.json alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    raw, truth = validation_part(args.root, args.crop)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mitoseg-bf16-"))
    work.mkdir(parents=True, exist_ok=True)
    raw_path = work / "val_raw.zarr"
    io.write_volume(raw_path, raw, attrs={"voxel_size_nm": [5.0, 5.0, 5.0]}, overwrite=True)
    extra = [f"tta={args.tta}"] if args.tta else []
    rows = {}
    for name, overrides in RUNS.items():
        output = work / f"val_{name}.zarr"
        seconds = run_predict(
            args.ckpt, raw_path, output, work / "cache", [*overrides, *extra, "overwrite=true"]
        )
        probs = io.open_volume(output)
        rows[name] = {"s": seconds, "iou": fg_iou(probs, truth), **probs.attrs["compute"]}
    voxels = raw.size
    print(f"\nLucchi++ validation part {raw.shape}, checkpoint {args.ckpt}")
    print("| run | precision | channels-last | s | Mvox/s | fg IoU @ 0.5 |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['precision']} | {row['channels_last']} | {row['s']:.1f} | "
            f"{voxels / row['s'] / 1e6:.3f} | {row['iou']:.4f} |"
        )
    fp32, auto = rows["fp32"], rows["auto"]
    delta, speed = auto["iou"] - fp32["iou"], fp32["s"] / auto["s"]
    verdict = "within" if abs(delta) <= GOAL else "NOT within"
    print(f"auto - fp32: {delta:+.4f} IoU ({verdict} {GOAL}), {speed:.2f}x the speed of fp32")
    if args.no_record:
        return
    from results import record

    where = f"{raw.shape} voxels, {auto['precision']}, channels-last {auto['channels_last']}"
    record(
        "bf16_auto_val_fg_iou",
        auto["iou"],
        "IoU",
        baseline=fp32["iou"],
        baseline_name="fp32, default layout, same checkpoint",
        notes=f"Lucchi++ validation part {where}: {delta:+.4f} ({verdict} {GOAL})",
    )
    record(
        "bf16_auto_predict_mvox_per_s",
        voxels / auto["s"] / 1e6,
        "Mvox/s",
        baseline=voxels / fp32["s"] / 1e6,
        baseline_name="fp32, default layout, same checkpoint",
        notes=f"{where}: {speed:.2f}x",
    )


if __name__ == "__main__":
    main()
