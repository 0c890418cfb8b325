"""Fine-tuning table (issue 21.2): a small anisotropic stack with a few labelled slices, trained
from scratch and from the pretrained model at the same small budget, and the pretrained model
without fine-tuning, scored on a part of the stack that no run trained on.

The stack comes from the part of the Lucchi++ training volume that ``lucchipp_cpu`` (the
pretrained model) never trained on: its validation part, the last 20 % along x
(``conf/data/lucchipp.yaml``: ``val_fraction`` 0.2, ``val_axis`` 2). Every ``--every``-th
section (6: 30 nm sections from 5 nm ones) from z 0 on, ``--sections`` of them (20), at
30 x 5 x 5 nm. Along y it is cut in two halves without overlap:

- the fine-tune part (y 0-383): labels kept only on ``--labelled`` slices (2, 9, 16; the other
  sections are zeroed in its label file, and ``data.train.labelled_slices`` says so);
- the evaluation part (y 384-767): every section labelled; no run sees it before scoring.

Rows, each predicted on the evaluation part with ``mitoseg-predict`` (tiles 16 x 128 x 128,
the checkpoint's overlap and TTA) and scored by foreground IoU at threshold 0.5, no median
(``evaluate.semantic.evaluate_thresholds``; the best threshold on the evaluation part is shown
for reference only, it is chosen on the data scored):

- ``scratch``: ``mitoseg-train experiment=finetune_sparse init=null``, ``--minutes`` of training;
- ``finetuned``: the same with ``init=<--init>`` (a pretrained name or a checkpoint);
- ``pretrained``: ``--init``'s model as it is, on the 30 nm sections;
- ``pretrained_resampled``: the same with ``resample=true`` (predicted at its 5 nm, resampled
  back).

The fine-tuned runs keep their best checkpoint by validation IoU on the labelled slices of the
fine-tune part's own validation split (the last 20 % along x). Runs land in OUT/<row>/; the
stack in OUT/data/ (Lucchi++ data: never commit it). The table is printed and saved as
OUT/summary.json and OUT/summary.md; the records go to benchmarks/results.json. ``--reuse``
keeps finished trainings and predictions of an earlier run into the same OUT; ``--results
PATH`` records elsewhere (trial runs).

    python benchmarks/finetune_table.py --root /path/to/lucchi_pp --minutes 10 \\
        --init lucchipp --out .bench/finetune
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from results import RESULTS, record

from mitoseg import io
from mitoseg.evaluate.semantic import evaluate_thresholds
from mitoseg.geometry import Box, split_axis
from mitoseg.io.sources import is_zarr
from mitoseg.predict.blocks import journal_path

BIN = Path(sys.executable).parent
VOXEL_NM = (30.0, 5.0, 5.0)
TILE = "[16,128,128]"
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
USUAL_MINUTES = 10.0


def hms(minutes: float) -> str:
    total = max(1, int(round(minutes * 60)))
    return f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def make_stack(root: Path, out: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The fine-tune and evaluation parts as zarr volumes (raw uint8, labels uint8 masks) in
    ``out``; written once."""
    paths = {k: out / f"{k}.zarr" for k in ("tune_raw", "tune_labels", "eval_raw", "eval_labels")}
    if all(is_zarr(p) for p in paths.values()):
        return paths
    raw = tifffile.imread(root / "train_im.tif")
    labels = tifffile.imread(root / "train_label.tif") > 0
    _, held_out = split_axis(Box.whole(raw.shape), 2, 0.2)  # lucchipp_cpu's validation part
    z = np.arange(0, raw.shape[0], args.every)[: args.sections]
    if len(z) < args.sections:
        raise SystemExit(f"only {len(z)} sections at every {args.every}th of {raw.shape[0]}")
    x = slice(held_out.offset[2], held_out.stop[2])
    half = raw.shape[1] // 2
    parts = {"tune": slice(0, half), "eval": slice(half, 2 * half)}
    attrs = {"axes": list(io.AXES), "voxel_size_nm": list(VOXEL_NM)}
    for part, y in parts.items():
        part_raw, part_labels = raw[z, y, x], labels[z, y, x].astype(np.uint8)
        if part == "tune":  # nothing beyond the labelled slices reaches the fine-tune runs
            keep = np.isin(np.arange(len(z)), args.labelled)
            part_labels[~keep] = 0
        io.write_volume(
            paths[f"{part}_raw"], part_raw, attrs={**attrs, "kind": "raw"}, overwrite=True
        )
        io.write_volume(
            paths[f"{part}_labels"], part_labels, attrs={**attrs, "kind": "mask"}, overwrite=True
        )
    print(
        f"stack: sections z {z.tolist()} of train_im.tif, x {x.start}-{x.stop - 1} (held out), "
        f"tune y 0-{half - 1}, eval y {half}-{2 * half - 1}: {paths['tune_raw'].parent}"
    )
    return paths


def budget(args: argparse.Namespace) -> list[str]:
    if args.steps:
        return [
            f"trainer.max_steps={args.steps}",
            "trainer.max_time=null",
            "~callbacks.step_budget",
        ]
    return [f"trainer.max_time={hms(args.minutes)}"]  # callbacks.step_budget fits the steps


def train(name: str, init: str, stack: dict[str, Path], args: argparse.Namespace) -> Path:
    """One ``mitoseg-train experiment=finetune_sparse`` run; its best checkpoint."""
    run = args.out / name
    best = sorted((run / "checkpoints").glob("step*.ckpt"))
    if args.reuse and best:
        return best[0]
    slices = ",".join(str(s) for s in args.labelled)
    cmd = [
        str(BIN / "mitoseg-train"),
        "experiment=finetune_sparse",
        f"init={init}",
        f"data.train.raw={stack['tune_raw']}",
        f"data.train.labels={stack['tune_labels']}",
        f"data.train.labelled_slices=[{slices}]",
        "data.test=null",
        f"data.cache_dir={args.out / 'cache'}",
        f"seed={args.seed}",
        *budget(args),
        *args.set,
        f"hydra.run.dir={run}",
        "overwrite=true",
        "logger=none",
    ]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    best = sorted((run / "checkpoints").glob("step*.ckpt"))
    return best[0] if best else run / "checkpoints" / "last.ckpt"


def predict(
    name: str, model: str, stack: dict[str, Path], args: argparse.Namespace, extra: list[str]
) -> Path:
    """``mitoseg-predict`` of the evaluation part; its probabilities."""
    output = args.out / name / "eval_probs.zarr"
    if args.reuse and output.exists() and not journal_path(output).exists():
        return output
    source = f"ckpt={model}" if Path(model).expanduser().exists() else f"pretrained={model}"
    cmd = [
        str(BIN / "mitoseg-predict"),
        source,
        f"input={stack['eval_raw']}",
        f"output={output}",
        "overwrite=true",
        f"cache_dir={args.out / 'cache'}",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={args.out / name / 'predict'}",
        *extra,
    ]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return output


def score(probs: Path, stack: dict[str, Path]) -> dict[str, float]:
    """Foreground IoU at 0.5 (no median) on the evaluation part, and the best of the sweep."""
    table = evaluate_thresholds(
        io.open_volume(probs), io.open_volume(stack["eval_labels"]), THRESHOLDS, median_size=0
    )
    best = max(THRESHOLDS, key=lambda t: table[t]["fg_iou"])
    return {
        "fg_iou": table[0.5]["fg_iou"],
        "best_threshold": best,
        "best_fg_iou": table[best]["fg_iou"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="Lucchi++ folder (train_im.tif ...)")
    p.add_argument("--minutes", type=float, default=USUAL_MINUTES, help="training budget per run")
    p.add_argument("--steps", type=int, help="a step budget per run instead of --minutes")
    p.add_argument("--init", default="lucchipp", help="pretrained name or checkpoint path")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--every", type=int, default=6, help="keep every N-th section (6: 30 nm)")
    p.add_argument("--sections", type=int, default=20)
    p.add_argument("--labelled", type=int, nargs="+", default=[2, 9, 16])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], help="extra mitoseg-train overrides")
    p.add_argument("--reuse", action="store_true", help="keep finished runs and predictions")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the records go")
    args = p.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    labelled = "-".join(str(s) for s in args.labelled)
    data = args.out / "data" / f"every{args.every}-{args.sections}-labelled{labelled}"
    stack = make_stack(args.root.expanduser().resolve(), data, args)
    init = str(Path(args.init).resolve()) if Path(args.init).exists() else args.init
    tile = [f"tile_shape={TILE}"]
    rows = {}
    for name, start in (("scratch", "null"), ("finetuned", init)):
        rows[name] = score(
            predict(name, str(train(name, start, stack, args)), stack, args, tile), stack
        )
    rows["pretrained"] = score(predict("pretrained", init, stack, args, tile), stack)
    resampled = predict("pretrained_resampled", init, stack, args, ["resample=true"])
    rows["pretrained_resampled"] = score(resampled, stack)
    size = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    lines = [
        f"| model ({size} of training, {len(args.labelled)} of {args.sections} sections "
        "labelled) | fg IoU at 0.5 | best threshold (eval, reference) | its fg IoU |",
        "|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['fg_iou']:.4f} | {row['best_threshold']:g} | "
            f"{row['best_fg_iou']:.4f} |"
        )
    table = "\n".join(lines)
    print(table)
    (args.out / "summary.md").write_text(table + "\n")
    summary = {"init": args.init, "budget": size, "labelled": args.labelled, "rows": rows}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    suffix = "" if args.steps or args.minutes == USUAL_MINUTES else f"_{args.minutes:g}min"
    notes = f"{size}, seed {args.seed}, init {args.init}, labelled {args.labelled}"
    scratch = rows["scratch"]["fg_iou"]
    record(
        f"finetune_sparse_finetuned_fg_iou{suffix}",
        rows["finetuned"]["fg_iou"],
        "fg IoU",
        baseline=scratch,
        baseline_name="from scratch, same budget",
        notes=notes,
        path=args.results,
    )
    record(
        f"finetune_sparse_pretrained_fg_iou{suffix}",
        rows["pretrained"]["fg_iou"],
        "fg IoU",
        baseline=rows["pretrained_resampled"]["fg_iou"],
        baseline_name="resample=true",
        notes=notes,
        path=args.results,
    )


if __name__ == "__main__":
    main()
