"""Lucchi++ under a wall-clock training budget: ``experiment=lucchipp_cpu`` against a plain MONAI
baseline, one after the other on the same machine, scored on the test volume by the same code.

- ours: ``mitoseg-train experiment=lucchipp_cpu`` with ``trainer.max_time`` = the budget. Its
  checkpoint and threshold are chosen on the validation part of the training volume.
- monai: ``benchmarks/lucchipp_monai_baseline.py``, what a user would write instead (MONAI UNet
  16-32-64-128 with 2 residual units, AdamW + cosine, 96^3 patches, batch 2, BCE + Dice, flips
  and transposes, ``sliding_window_inference`` with Gaussian blending, threshold 0.5).

Each run's scores land in OUT/<impl>/metrics.json; the table is printed and saved as
OUT/summary.json and OUT/summary.md. Re-running with ``--impls monai`` keeps the other rows;
``--reuse`` collects runs that have finished (their metrics.json) instead of running them again.

    python benchmarks/lucchipp_budget.py --root ../shared/data/lucchi_pp --minutes 60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from results import record

HERE = Path(__file__).resolve().parent
KEYS = ("fg_iou", "mean_iou", "precision", "recall", "f1")
SLICES = (40, 120)  # test slices shown in the overlay PNG


def hms(minutes: float) -> str:
    total = int(round(minutes * 60))
    return f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def run_logged(cmd: list[str], out: Path, reuse: bool) -> float | None:
    """Run ``cmd`` with its output in OUT.log; seconds taken, or None when a finished run (its
    metrics.json) is reused."""
    if reuse and (out / "metrics.json").is_file():
        return None
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def run_ours(root: Path, out: Path, minutes: float, extra: list[str], reuse: bool) -> dict:
    import torch

    cmd = [
        str(Path(sys.executable).parent / "mitoseg-train"), "experiment=lucchipp_cpu",
        f"data.root={root}", f"trainer.max_time={hms(minutes)}", f"hydra.run.dir={out}",
        "overwrite=true", *extra,
    ]  # fmt: skip
    wall = run_logged(cmd, out, reuse)
    metrics = json.loads((out / "metrics.json").read_text())
    write_overlay(root, out, out.parent / "ours_overlay.png")
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {
        "impl": "ours",
        "command": "mitoseg-train " + " ".join(cmd[1:]),
        "steps": int(last["global_step"]),
        # the step count callbacks.step_budget fitted to the budget on this machine, if on
        "step_budget": last["mitoseg"]["run"].get("step_budget"),
        "threshold": metrics["selected"]["threshold"],
        "test": metrics["final"],
        "wall_s": wall,
    }


def write_overlay(root: Path, run: Path, png: Path) -> None:
    """Raw, ground truth and the run's test mask (TP / FP / FN in colour) on two test slices,
    cropped to a 384 x 512 window so that the PNG stays small."""
    import tifffile

    from mitoseg import io
    from mitoseg.analyze import plots

    window = (slice(192, 576), slice(256, 768))
    mask = io.open_volume(run / "test_mask.zarr")
    # Only the shown slices are filled; the stacks are indexed by test z so the titles are right.
    shape = (max(SLICES) + 1, 384, 512)
    raw, truth, pred = (np.zeros(shape, np.uint8) for _ in range(3))
    for z in SLICES:
        raw[z] = tifffile.imread(root / "test_im.tif", key=z)[window]
        truth[z] = tifffile.imread(root / "test_label.tif", key=z)[window] > 0
        pred[z] = np.asarray(mask[(z, *window)])
    plots.overlay_png(png, raw, SLICES, truth=truth, prediction=pred)


def run_monai(root: Path, out: Path, minutes: float, extra: list[str], reuse: bool) -> dict:
    cmd = [
        sys.executable, str(HERE / "lucchipp_monai_baseline.py"), "--root", str(root),
        "--minutes", str(minutes), "--out", str(out), *extra,
    ]  # fmt: skip
    wall = run_logged(cmd, out, reuse)
    result = json.loads((out / "metrics.json").read_text())
    result.update(impl="monai", command=" ".join(cmd[1:]), wall_s=wall)
    return result


def table(rows: list[dict]) -> str:
    head = "| impl | steps | threshold | " + " | ".join(f"test {k}" for k in KEYS) + " |"
    lines = [head, "|" + "---|" * (3 + len(KEYS))]
    for row in rows:
        scores = " | ".join(f"{row['test'][k]:.4f}" for k in KEYS)
        lines.append(f"| {row['impl']} | {row['steps']} | {row['threshold']} | {scores} |")
    if {"ours", "monai"} <= {r["impl"] for r in rows}:
        by = {r["impl"]: r["test"]["fg_iou"] for r in rows}
        lines.append(f"\nours - monai test fg IoU: {by['ours'] - by['monai']:+.4f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE.parent.parent / "shared/data/lucchi_pp")
    parser.add_argument("--minutes", type=float, default=60.0, help="training budget per run")
    parser.add_argument("--impls", nargs="+", default=["ours", "monai"], choices=["ours", "monai"])
    parser.add_argument("--out", type=Path, default=Path(".bench/lucchipp_budget"))
    parser.add_argument(
        "--reuse", action="store_true", help="collect a finished run's metrics.json, not rerun it"
    )
    parser.add_argument("--ours-args", nargs="*", default=[], help="extra Hydra overrides")
    parser.add_argument("--monai-args", nargs="*", default=[], help="extra baseline options")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    rows = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    runners = {"ours": (run_ours, args.ours_args), "monai": (run_monai, args.monai_args)}
    for impl in args.impls:
        runner, extra = runners[impl]
        row = runner(
            args.root.resolve(), (args.out / impl).resolve(), args.minutes, extra, args.reuse
        )
        row.update(minutes=args.minutes, cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d"))
        rows[impl] = row
        tmp = summary_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(summary_path)
        print(json.dumps(row), flush=True)
    text = table([rows[k] for k in ("ours", "monai") if k in rows])
    (args.out / "summary.md").write_text(text + "\n")
    print(text)
    if "ours" in rows:  # the headline: ours against the baseline of this --out folder
        ours, monai = rows["ours"], rows.get("monai")
        words = ours["command"].split()
        seed = next((w.split("=", 1)[1] for w in words if w.startswith("seed=")), "0")
        record(
            f"lucchipp_cpu_test_fg_iou_seed{seed}",
            ours["test"]["fg_iou"],
            "IoU",
            baseline=monai["test"]["fg_iou"] if monai else None,
            baseline_name="plain MONAI UNet baseline (benchmarks/lucchipp_monai_baseline.py)"
            if monai
            else None,
            date=ours.get("date"),
            notes=f"Lucchi++ test fg IoU, {ours['minutes']:g} min, {ours['steps']} steps, "
            f"threshold {ours['threshold']} chosen on validation",
        )


if __name__ == "__main__":
    main()
