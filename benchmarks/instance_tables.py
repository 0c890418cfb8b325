"""Instance tables: one training per target, same budget, same machine, one after the other.

- ``synthetic``: ``experiment=synthetic_instance target=bc / ac / bcd`` (``--minutes`` each, 20 in
  BENCHMARKS.md); each run chooses its decoder on the validation volume and scores the held-out
  test volume once (its ``metrics.json``).
- ``lucchipp``: ``experiment=lucchipp_bc / lucchipp_bcd / lucchipp_a`` on ``lucchipp_cpu``'s
  60-minute budget, and the baseline ``lucchipp_cpu`` (semantic) whose test mask is scored as its
  3D connected components. Every row is scored by ``mitoseg-evaluate RUN/test_*.zarr
  ROOT/test_label.tif --components`` against the 32 components of the test labels (AP .5:.95,
  AP-50, AP-75, accuracy at IoU 0.75, ARE, VOI).

Runs land in OUT/<name>/; the table is printed and saved as OUT/summary.json and OUT/summary.md.
``--reuse`` collects finished runs instead of training again; ``--names`` picks rows.
``--baseline pretrained`` scores the baseline row from the shipped model ``lucchipp`` instead of
training it: that model is this row's network (``lucchipp_cpu``, seed 0, 7709 steps, its best
validation checkpoint, the decoder settings chosen on validation), predicted here in fp32, so a
table of one new row still has its baseline measured in the same run (minutes, not hours).

    python benchmarks/instance_tables.py synthetic --minutes 20 --out .bench/synthetic_instances
    python benchmarks/instance_tables.py lucchipp --root ../shared/data/lucchi_pp --minutes 60 \\
        --out .bench/lucchipp_instances
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from results import record

BIN = Path(sys.executable).parent
RUNS = {
    "synthetic": {
        "bc": ["experiment=synthetic_instance", "target=bc"],
        "ac": ["experiment=synthetic_instance", "target=ac"],
        "bcd": ["experiment=synthetic_instance", "target=bcd"],
    },
    "lucchipp": {
        "semantic + components": ["experiment=lucchipp_cpu"],
        "bc": ["experiment=lucchipp_bc"],
        "bcd": ["experiment=lucchipp_bcd"],
        "a": ["experiment=lucchipp_a"],
    },
}
KEYS = ("ap50_95", "ap75", "ap50", "accuracy75", "are", "voi_split", "voi_merge", "n_pred")


def hms(minutes: float) -> str:
    total = int(round(minutes * 60))
    return f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def budget(args: argparse.Namespace) -> list[str]:
    """The training budget: ``--steps`` (the same step count anywhere, whatever else runs on
    the machine) or ``--minutes`` of this machine."""
    if args.steps:
        steps = f"trainer.max_steps={args.steps}"
        return [steps, "trainer.max_time=null", "~callbacks.step_budget"]
    cmd = [f"trainer.max_time={hms(args.minutes)}"]
    if args.suite == "synthetic":
        cmd.append("trainer.max_steps=100000")  # the time budget ends training
    return cmd


def train(name: str, overrides: list[str], out: Path, args: argparse.Namespace) -> Path:
    """Run mitoseg-train for one row (unless reused); its run folder. With ``--reuse``, a run
    that was interrupted (``checkpoints/last.ckpt`` and no ``metrics.json``) resumes."""
    run = out / name.replace(" + ", "_").replace(" ", "_")
    if args.reuse and (run / "metrics.json").is_file():
        return run
    cmd = [str(BIN / "mitoseg-train"), *overrides, *budget(args), f"seed={args.seed}"]
    if args.suite == "lucchipp":
        cmd.append(f"data.root={Path(args.root).resolve()}")
    resume = args.reuse and (run / "checkpoints" / "last.ckpt").is_file()
    cmd += [f"hydra.run.dir={run}", "ckpt=last" if resume else "overwrite=true"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return run


def shipped_baseline(out: Path, args: argparse.Namespace) -> Path:
    """The baseline row from the shipped model: the test volume predicted and thresholded by
    ``mitoseg-predict pretrained=lucchipp`` (fp32, as the training run's test-time prediction),
    its training scores and chosen settings as the run's ``metrics.json``."""
    from mitoseg import pretrained

    run = out / "semantic_components_pretrained"
    manifest = pretrained.find("lucchipp").manifest
    if not (args.reuse and (run / "test_mask.zarr").exists()):
        cmd = [str(BIN / "mitoseg-predict"), "pretrained=lucchipp",
               f"input={Path(args.root).resolve() / 'test_im.tif'}",
               f"output={run / 'test_probs.zarr'}", f"segmentation={run / 'test_mask.zarr'}",
               "trainer.precision=32-true", "overwrite=true", f"hydra.run.dir={run}"]  # fmt: skip
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    chosen = manifest["scores"]
    metrics = {"selected": chosen["selected"], "swept": chosen["swept"],
               "final": {"set": "test", **chosen["test"]}}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return run


def scores(run: Path, args: argparse.Namespace) -> dict:
    """The row's test scores and the decoder settings chosen on validation."""
    metrics = json.loads((run / "metrics.json").read_text())
    chosen = metrics.get("selected", {})
    row = {"selected": {k: chosen[k] for k in metrics.get("swept", []) if k in chosen}}
    row.update(metrics["final"])
    if args.suite == "lucchipp":
        pred = next(p for p in (run / "test_instances.zarr", run / "test_mask.zarr") if p.exists())
        truth = Path(args.root).resolve() / "test_label.tif"
        cmd = [str(BIN / "mitoseg-evaluate"), str(pred), str(truth), "--components"]
        cmd += ["--out", str(run / "evaluate"), "--overwrite"]
        subprocess.run(cmd, check=True)
        row.update(json.loads((run / "evaluate" / "scores.json").read_text())["scores"])
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=sorted(RUNS))
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per row")
    p.add_argument("--steps", type=int, help="a step budget per row instead of --minutes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", help="Lucchi++ folder (train_im.tif ...), for the lucchipp suite")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--names", nargs="*", help="rows to run (default all)")
    p.add_argument("--reuse", action="store_true", help="collect finished runs")
    p.add_argument(
        "--baseline", choices=["train", "pretrained"], default="train",
        help="lucchipp: train the semantic row, or score the shipped model lucchipp",
    )  # fmt: skip
    args = p.parse_args()
    if args.suite == "lucchipp" and not args.root:
        p.error("the lucchipp suite needs --root")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, overrides in RUNS[args.suite].items():
        if args.names and name not in args.names:
            continue
        if name == "semantic + components" and args.baseline == "pretrained":
            rows[name] = scores(shipped_baseline(args.out, args), args)
            continue
        rows[name] = scores(train(name, overrides, args.out, args), args)
    lines = ["| target | " + " | ".join(KEYS) + " | chosen on validation |"]
    lines.append("|" + "---|" * (len(KEYS) + 2))
    for name, row in rows.items():
        cells = [f"{row[k]:.{0 if k == 'n_pred' else 4}f}" if isinstance(row.get(k), float)
                 else str(row.get(k, "-")) for k in KEYS]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['selected']} |")
    table = "\n".join(lines)
    print(table)
    (args.out / "summary.md").write_text(table + "\n")
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2, default=str))
    # a budget other than the suite's usual one gets its own records instead of replacing those
    usual = {"synthetic": 20.0, "lucchipp": 60.0}[args.suite]
    size = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    suffix = "" if args.steps or args.minutes == usual else f"_{args.minutes:g}min"
    # the Lucchi++ rows against the semantic network's mask as components, when in this table
    reference = rows.get("semantic + components", {}).get("ap75")
    for name, row in rows.items():
        key = name.replace(" + ", "_").replace(" ", "_")
        against = {}
        if reference is not None and name != "semantic + components":
            against = {"baseline": reference, "baseline_name": "lucchipp_cpu mask as components"}
        notes = f"{size}, seed {args.seed}"
        if name == "semantic + components" and args.baseline == "pretrained":
            notes = "the shipped model lucchipp (this row's network: 7709 steps, seed 0), fp32"
        record(
            f"{args.suite}_{key}_test_ap75{suffix}", row["ap75"], "AP-75", notes=notes, **against
        )


if __name__ == "__main__":
    main()
