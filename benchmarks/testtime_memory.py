"""Test-time memory of ``mitoseg-train`` follows the block, like ``mitoseg-predict``'s.

For each size, a test volume of 32 x S x S voxels (random uint8, foreground labels in a corner)
is predicted twice in the same run, with the same tiny checkpoint-sized network, tiles and
blocks: by the test-time evaluation at the end of ``mitoseg-train`` (2 training steps on a small
volume first) and by ``mitoseg-predict`` with the checkpoint it wrote (the baseline). Each reports
the peak RSS of its process during prediction (Linux: the count is reset when prediction starts,
so input checks before it and decoding after it are not in it), from the one predictor's log
line. The volume grows in y and x, where the slab stitcher that test time used before kept
a whole (C, tile_z, Y, X) slab; memory that follows the block stays flat.

    python benchmarks/testtime_memory.py --sizes 0.01 0.05 0.13
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from results import record

BIN = Path(sys.executable).parent
DEPTH = 32
BLOCK = [32, 256, 256]
PEAK = re.compile(r"rank 0 wrote \d+ blocks in [\d.]+ s, peak RSS (\d+) MiB \((\d+) MiB when")
PREDICT_PEAK = re.compile(r"peak RSS (\d+) MiB \((\d+) MiB when")


def write_volumes(root: Path, side: int) -> tuple[Path, Path]:
    from mitoseg import io

    rng = np.random.default_rng(side)
    raw = root / f"raw_{side}.zarr"
    labels = root / f"labels_{side}.zarr"
    chunks = (32, 256, 256)
    out = io.create_volume(raw, (DEPTH, side, side), "uint8", chunks=chunks)
    for z in range(DEPTH):  # slice by slice: this process stays small
        out[z] = rng.integers(0, 256, (side, side), dtype=np.uint8)
    io.finalize_volume(raw)
    mask = io.create_volume(labels, (DEPTH, side, side), "uint32", chunks=chunks)
    mask[:, : side // 4, : side // 4] = 1
    io.finalize_volume(labels)
    return raw, labels


def run(command: list[str], cwd: Path) -> str:
    env = {**os.environ, "MITOSEG_CACHE": str(cwd / "cache")}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout + result.stderr


def measure(root: Path, side: int, train: tuple[Path, Path]) -> tuple[float, ...]:
    """(peak, RSS at start) of test-time prediction and of mitoseg-predict, MiB, for a
    32 x side x side test volume."""
    raw, labels = write_volumes(root, side)
    cwd = root / f"run_{side}"
    cwd.mkdir()
    blocks = [f"callbacks.test_evaluation.block_shape={BLOCK}".replace(" ", "")]
    run(
        [
            str(BIN / "mitoseg-train"), "data=files", f"data.train.raw={train[0]}",
            f"data.train.labels={train[1]}", f"data.test.raw={raw}", f"data.test.labels={labels}",
            "data.train.voxel_size_nm=[5,5,5]",  # the volumes carry none
            "data.patch_shape=[16,64,64]", "model.widths=[4,8]", "trainer.max_steps=2",
            "data.samples_per_epoch=2", "logger=none", "trainer.enable_progress_bar=false",
            "evaluate.sweep.threshold=[0.5]", "postprocess.median_size=0", "hydra.run.dir=run",
            *blocks,
        ],
        cwd,
    )  # fmt: skip
    found = PEAK.search((cwd / "run" / "train.log").read_text())
    if found is None:
        raise SystemExit(f"no prediction peak in {cwd / 'run' / 'train.log'}")
    ckpt = next((cwd / "run" / "checkpoints").glob("step*.ckpt"))
    output = run(
        [
            str(BIN / "mitoseg-predict"), f"ckpt={ckpt}", f"input={raw}", "output=probs.zarr",
            f"block_shape={BLOCK}".replace(" ", ""), "trainer.enable_progress_bar=false",
        ],
        cwd,
    )  # fmt: skip
    predicted = PREDICT_PEAK.search(output)
    if predicted is None:
        raise SystemExit(f"no peak RSS in mitoseg-predict's output:\n{output[-2000:]}")
    return (*map(float, found.groups()), *map(float, predicted.groups()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.01, 0.05, 0.13])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        root = Path(tmp).resolve()
        train = write_volumes(root, 128)
        for gvox in args.sizes:
            side = max(256, int(round((gvox * 1e9 / DEPTH) ** 0.5 / 256)) * 256)
            rows.append((DEPTH * side * side / 1e9, side, *measure(root, side, train)))
            print(f"{rows[-1][0]:.3f} Gvox: {rows[-1][2:]}", flush=True)
    print(
        "\n| test volume | test time: peak RSS (at start) | added | "
        "mitoseg-predict: peak RSS (at start) | added |\n|---|---|---|---|---|"
    )
    for gvox, side, t_peak, t_start, p_peak, p_start in rows:
        print(
            f"| {gvox:.3f} Gvox (32 x {side}^2) | {t_peak:.0f} MiB ({t_start:.0f}) | "
            f"{t_peak - t_start:.0f} MiB | {p_peak:.0f} MiB ({p_start:.0f}) | "
            f"{p_peak - p_start:.0f} MiB |"
        )
    gvox, _, t_peak, t_start, p_peak, p_start = rows[-1]
    record(
        "testtime_predict_added_rss_largest",
        round(t_peak - t_start),
        "MiB",
        baseline=round(p_peak - p_start),
        baseline_name=f"mitoseg-predict of the same {gvox:.3f} Gvox volume (added RSS)",
        notes="memory added while predicting (peak minus RSS at the start); from "
        f"{rows[0][0]:.3f} Gvox: {rows[0][2] - rows[0][3]:.0f} MiB at test time, "
        f"{rows[0][4] - rows[0][5]:.0f} MiB in mitoseg-predict",
    )


if __name__ == "__main__":
    main()
