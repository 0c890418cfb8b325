"""Training levers of ``experiment=lucchipp_cpu`` at a short CPU budget, scored on validation only.

Every arm is ``mitoseg-train experiment=lucchipp_cpu`` with one lever changed, trained for about
``--minutes`` on this machine, then tile-predicted (no TTA) and swept over thresholds on the
validation part of the training volume (``data.test=null``: the test volume is never read). The
arms run as one Hydra multirun, ``mitoseg-train -m experiment=lucchipp_cpu ... +arm=a,b,...``:
each arm is a config of the ``arm`` group written to OUT/conf/arm/ (its overrides and its step
budget), and mitoseg-train's sweep summary lands in OUT/sweep_summary.md. A
study compares its arms with the reference arm, which is shared by all studies; the seed study
repeats the reference with another seed, as a yardstick for run-to-run noise.

Fair budgets: levers that change the cost of a step (network, patch and batch, elastic
deformation) would leave a step-based schedule unfinished or cut short. Before the runs, every arm's
step time is probed in this process by a short real fit of its config (its loader, augmentation,
network, gradient clipping and AdamW step; no validation), and its ``trainer.max_steps`` (the end of
its cosine schedule) is the number of such steps that fits in the budget. ``trainer.max_time``
(twice the budget) only guards against a bad probe, and the recipe's step budget
(``callbacks.step_budget``, which re-times the steps at each validation) is off. One epoch is the
whole run, so validation runs once, at the end, and is the checkpoint that is scored.

Each arm's run folder is OUT/<arm>; the tables by study are printed and written to OUT/summary.md
and OUT/summary.json. ``--reuse`` collects finished arms (their metrics.json) instead of re-running
them, with the step-time probes of OUT/probes.json; the multirun then holds the other arms only.
``--probe-only`` writes OUT/probes.json and stops (to check the probes against the step times
of finished arms, which the tables show as ``s/step (run)``).

    python benchmarks/lucchipp_ablation.py --root ../shared/data/lucchi_pp --minutes 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REFERENCE = "reference"
# arm -> (study, what changes, overrides); the reference arm is experiment=lucchipp_cpu as it is.
ARMS: dict[str, tuple[str, str, list[str]]] = {
    REFERENCE: ("all", "lucchipp_cpu: MONAI UNet 16-128, 96^3 x 2, BCE + Dice, lr 2e-3", []),
    "seed1": ("seed", "seed 1 instead of 0", ["seed=1"]),
    "seed2": ("seed", "seed 2 instead of 0", ["seed=2"]),
    "class_balance": ("loss", "class-balanced BCE + Dice", ["target.loss.class_balance=true"]),
    "bce_only": ("loss", "BCE only (no Dice)", ["target.loss.dice_weight=0"]),
    "elastic": ("augmentation", "+ elastic deformation, p 0.3", ["data.augment.elastic_prob=0.3"]),
    "cutblur": ("augmentation", "+ cut-blur, p 0.3", ["data.augment.cutblur_prob=0.3"]),
    "no_intensity": (
        "augmentation", "no intensity augmentation (brightness, contrast, gamma)",
        ["data.augment.intensity_prob=0"],
    ),
    "flips_only": (
        "augmentation", "flips only: no transposes or 90-degree rotations",
        ["data.augment.transpose=false", "data.augment.rotate90=false"],
    ),
    "lr1e-3": ("optimiser", "AdamW lr 1e-3", ["module.optimizer.lr=0.001"]),
    "lr4e-3": ("optimiser", "AdamW lr 4e-3", ["module.optimizer.lr=0.004"]),
    "constant_lr": (
        "optimiser", "constant lr 2e-3 after the warm-up (no cosine decay)",
        ["module.scheduler.min_factor=1.0"],
    ),
    "patch64x4": ("patch", "64^3 x 4", ["data.patch_shape=[64,64,64]", "data.batch_size=4"]),
    "patch128x1": (
        "patch", "128^3 x 1", ["data.patch_shape=[128,128,128]", "data.batch_size=1"],
    ),
    "unet_deeper": (
        "network", "MONAI UNet 16-256, 5 levels",
        ["model.channels=[16,32,64,128,256]", "model.strides=[2,2,2,2]"],
    ),
    "unet_res1": ("network", "MONAI UNet, 1 residual unit per level", ["model.num_res_units=1"]),
    "resunet_s2": (
        "network", "ResidualUNet3D 16-128 + SE, stride-2 stem",
        ["model=resunet", "model.stem_stride=2"],
    ),
    "resunet_s2_nose": (
        "network", "ResidualUNet3D 16-128, stride-2 stem, no SE",
        ["model=resunet", "model.stem_stride=2", "model.se=false"],
    ),
    "resunet_s2_aniso": (
        "network", "ResidualUNet3D 16-128 + SE, stride-2 stem, (1,3,3) kernels at the top 2 levels",
        ["model=resunet", "model.stem_stride=2", "model.kernel_sizes=[[1,3,3],[1,3,3],3,3]"],
    ),
    "segresnet": (
        "network", "MONAI SegResNet, 8 initial filters, full res.",
        ["model=monai_segresnet", "model.init_filters=8"],
    ),
    "bf16": (
        "precision", "bf16 autocast (trainer.precision=bf16-mixed)",
        ["trainer.precision=bf16-mixed"],
    ),
}  # fmt: skip
STUDIES = ("seed", "loss", "augmentation", "optimiser", "patch", "network", "precision")


def hms(seconds: float) -> str:
    total = int(round(seconds))
    return f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def compose(overrides: list[str]):  # type: ignore[no-untyped-def]
    from hydra.core.global_hydra import GlobalHydra

    from mitoseg.cli.common import compose_config

    GlobalHydra.instance().clear()
    return compose_config("train", ["experiment=lucchipp_cpu", "data.root=/x", *overrides])


def probe_step_seconds(arms: list[str], stored: dict[str, float], root: Path) -> dict[str, float]:
    """Seconds per training step of each arm (:func:`probe_fit` on the data in ``root``).

    Each distinct cost (network, patch, batch, layout, precision, augmentation) is probed once, so
    arms that cost the same (seed, loss, learning rate) get the same step count, not probe noise.
    An arm that costs the same as one in ``stored`` (earlier probes, by arm) takes its value.

    The first fit in a process is first run once untimed: timed cold, the reference (probed
    first) came out 10-40 % slower per step than when probed again in the same process (cause not
    isolated), so the arms probed after it got more steps than it.
    """
    known = {cost_keys(a)[:2]: s for a, s in stored.items() if a in ARMS}
    warm = False
    out = {}
    for arm in arms:
        net_key, aug_key, cfg = cost_keys(arm)
        if (net_key, aug_key) not in known:
            cfg.data.root, cfg.data.test = str(root), None  # the test volume is never read
            if not warm:
                probe_fit(cfg, steps=1)  # warm-up, untimed
                warm = True
            known[net_key, aug_key] = probe_fit(cfg)
        out[arm] = known[net_key, aug_key]
    return out


def cost_keys(arm: str):  # type: ignore[no-untyped-def]
    """(network key, augmentation key, config) of an arm: arms with equal keys cost the same."""
    from omegaconf import OmegaConf

    cfg = compose(ARMS[arm][2])
    shape = {"patch": list(cfg.data.patch_shape), "batch": int(cfg.data.batch_size)}
    net = {"model": cfg.model, "cl": cfg.module.channels_last, "precision": cfg.trainer.precision}
    net_key = OmegaConf.to_yaml({**shape, **net})
    aug_key = OmegaConf.to_yaml({**shape, "augment": cfg.data.augment})
    return net_key, aug_key, cfg


def probe_fit(cfg, steps: int = 8) -> float:  # type: ignore[no-untyped-def]
    """Seconds per training step of a short fit of ``cfg`` (``steps`` + 1 steps, no validation,
    no logger or checkpoints): the median time from the end of one step to the end of the next.

    So a step's cost counts its batch's patch draws, zarr reads, augmentation and collation
    (per sample: a larger batch of smaller patches pays more of them) with the forward, backward,
    gradient clipping and AdamW step under the arm's precision and layout. The first step, which
    pays one-off costs (finding the foreground blocks, allocating), is not timed; the median keeps
    a stall of the host during one step from moving the arm's step count.
    """
    import tempfile

    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from mitoseg.cli.common import build_datamodule, build_module
    from mitoseg.cli.train import fill_compute

    class StepEnds(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_end(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            self.times.append(time.perf_counter())

    pl.seed_everything(int(cfg.seed), verbose=False)
    cfg = cfg.copy()
    cfg.data.samples_per_epoch = (steps + 1) * int(cfg.data.batch_size)
    fill_compute(cfg)  # trainer.precision / module.channels_last auto, as mitoseg-train
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    ends = StepEnds()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = instantiate(
            cfg.trainer, max_steps=steps + 1, max_time=None, limit_val_batches=0, logger=False,
            callbacks=[ends], enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=scratch,
        )  # fmt: skip
        trainer.fit(module, datamodule=datamodule)
    return statistics.median(b - a for a, b in zip(ends.times, ends.times[1:], strict=False))


def arm_config(name: str, steps: int) -> str:
    """The arm as a config of the ``arm`` group (``+arm=NAME``): its overrides (a config group
    one, such as ``model=resunet``, in its defaults list) and its step budget."""
    from omegaconf import OmegaConf

    from mitoseg.cli.common import CONFIG_PATH

    overrides = ARMS[name][2]
    groups = [o for o in overrides if (Path(CONFIG_PATH) / o.split("=")[0]).is_dir()]
    values = OmegaConf.from_dotlist([o for o in overrides if o not in groups])
    batch = int(compose(overrides).data.batch_size)
    budget = {"trainer": {"max_steps": steps}, "data": {"samples_per_epoch": steps * batch}}
    values = OmegaConf.merge(values, budget)
    head = f"# @package _global_\n# {name}: {ARMS[name][1]}\n"
    if groups:
        head += "defaults:\n" + "".join(
            f"  - override /{g.split('=')[0]}: {g.split('=')[1]}\n" for g in groups
        )
    return head + OmegaConf.to_yaml(values)


def run_sweep(names: list[str], root: Path, out: Path, seconds: float, steps: dict) -> None:
    """One Hydra multirun over the arms: ``mitoseg-train -m ... +arm=a,b,...``, each arm in
    OUT/<arm>; the arm configs are written to OUT/conf/arm/ first."""
    conf = out / "conf" / "arm"
    conf.mkdir(parents=True, exist_ok=True)
    for name in names:
        (conf / f"{name}.yaml").write_text(arm_config(name, steps[name]))
    cmd = [
        str(Path(sys.executable).parent / "mitoseg-train"), "-m", "experiment=lucchipp_cpu",
        f"data.root={root}", "data.test=null", "predict.tta=none",
        f"trainer.max_time={hms(2 * seconds)}", "~callbacks.step_budget",
        "trainer.enable_progress_bar=false",
        "overwrite=true", f"hydra.searchpath=[file://{out / 'conf'}]", f"+arm={','.join(names)}",
        f"hydra.sweep.dir={out}", "hydra.sweep.subdir=${hydra:runtime.choices.arm}",
    ]  # fmt: skip
    print(" ".join(cmd[1:]), flush=True)
    with open(out / "multirun.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def run_step_seconds(run: Path) -> float | None:
    """Seconds per training step as the arm trained: from the wall times of its logged training
    losses (TensorBoard, every ``trainer.log_every_n_steps``), from the second one logged to the
    last (so neither start-up nor the final validation counts); None without them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for events in sorted((run / "tensorboard").glob("events.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if "train/loss" in accumulator.Tags()["scalars"]:
            points += accumulator.Scalars("train/loss")
    if len(points) < 3:
        return None
    first, last = points[1], points[-1]
    return (last.wall_time - first.wall_time) / (last.step - first.step)


def collect(name: str, out: Path, step_s: float, max_steps: int) -> dict:
    """The row of a finished arm: steps trained, its step time as probed and as trained, fit time
    (from the job's start to its checkpoint, so including start-up and validation), validation
    scores."""
    import torch

    study, change, overrides = ARMS[name]
    run = out / name
    (best,) = (run / "checkpoints").glob("step*.ckpt")
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    metrics = json.loads((run / "metrics.json").read_text())
    at_half = [r for r in metrics["val"] if r["threshold"] == 0.5]
    best_row = max(metrics["val"], key=lambda r: r["fg_iou"])
    started = (run / ".hydra" / "config.yaml").stat().st_mtime  # written as the job starts
    return {
        "arm": name, "study": study, "change": change, "overrides": overrides,
        "probe_s_per_step": round(step_s, 3), "max_steps": max_steps,
        "steps": int(last["global_step"]), "run_s_per_step": run_step_seconds(run),
        "fit_minutes": round((best.stat().st_mtime - started) / 60, 1),
        "val_fg_iou_at_0.5": round(at_half[0]["fg_iou"], 4),
        "val_fg_iou_best": round(best_row["fg_iou"], 4), "best_threshold": best_row["threshold"],
    }  # fmt: skip


def tables(rows: list[dict]) -> str:
    """Markdown tables by study, each arm beside the reference. ``time vs ref`` is the arm's
    training time (steps x its step time as trained) over the reference's: about 1 for a fair arm
    on an idle host (a host whose speed drifts moves it for arms of equal cost too)."""
    by_arm = {r["arm"]: r for r in rows}
    ref = by_arm.get(REFERENCE)

    def trained_seconds(r: dict) -> float | None:
        return r["steps"] * r["run_s_per_step"] if r.get("run_s_per_step") else None

    def time_vs_ref(r: dict) -> str:
        ours, theirs = trained_seconds(r), ref and trained_seconds(ref)
        return f"{ours / theirs:.2f}" if ours and theirs else "-"

    lines = []
    for study in STUDIES:
        arms = [r for r in rows if r["study"] == study]
        if not arms:
            continue
        lines += [
            f"\n### {study}\n",
            "| arm | change | s/step (probe) | s/step (run) | steps | time vs ref | minutes "
            "| val fg IoU @0.5 | best val fg IoU (thr) | vs reference |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in ([ref] if ref else []) + arms:
            delta = (
                ""
                if not ref or r is ref
                else f"{r['val_fg_iou_best'] - ref['val_fg_iou_best']:+.4f}"
            )
            run_s = f"{r['run_s_per_step']:.3f}" if r.get("run_s_per_step") else "-"
            lines.append(
                f"| {r['arm']} | {r['change']} | {r['probe_s_per_step']:.3f} | {run_s} | "
                f"{r['steps']} | {time_vs_ref(r)} | {r['fit_minutes']} | "
                f"{r['val_fg_iou_at_0.5']:.4f} | {r['val_fg_iou_best']:.4f} "
                f"({r['best_threshold']}) | {delta} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder with the Lucchi++ TIFFs")
    parser.add_argument("--minutes", type=float, default=7.0, help="training budget per arm")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--out", type=Path, default=Path(".bench/lucchipp_ablation"))
    parser.add_argument("--reuse", action="store_true", help="collect finished arms")
    parser.add_argument("--probe-only", action="store_true", help="write OUT/probes.json, stop")
    parser.add_argument(
        "--steps", nargs="+", default=[], metavar="ARM=N",
        help="train ARM for N steps instead of its probed count (e.g. to match the training time "
        "an arm took to the reference's, from the tables' s/step (run))",
    )  # fmt: skip
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    arms = [REFERENCE] + [a for a in args.arms if a != REFERENCE]
    fixed = {}
    for item in args.steps:
        arm, _, count = item.partition("=")
        if arm not in arms or not count.isdigit() or int(count) < 1:
            parser.error(f"--steps {item}: expected ARM=N, ARM one of the arms run, N steps > 0")
        fixed[arm] = int(count)
    # Probes are kept in OUT/probes.json, so that re-runs (--reuse) give the same step counts.
    probes_path = out / "probes.json"
    probes = json.loads(probes_path.read_text()) if args.reuse and probes_path.is_file() else {}
    probes.update(probe_step_seconds(arms, probes, args.root.resolve()))
    probes_path.write_text(json.dumps(probes, indent=1))
    print("probed s/step:", json.dumps({a: round(s, 3) for a, s in probes.items()}), flush=True)
    if args.probe_only:
        return
    seconds = args.minutes * 60
    steps = {arm: max(50, int(seconds / probes[arm])) for arm in arms}
    steps.update(fixed)
    todo = [a for a in arms if not (args.reuse and (out / a / "metrics.json").is_file())]
    if todo:
        run_sweep(todo, args.root.resolve(), out, seconds, steps)
    rows = [collect(arm, out, probes[arm], steps[arm]) for arm in arms]
    (out / "summary.json").write_text(json.dumps({"minutes": args.minutes, "rows": rows}, indent=1))
    (out / "summary.md").write_text(tables(rows) + "\n")
    print(tables(rows))


if __name__ == "__main__":
    main()
