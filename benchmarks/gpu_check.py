"""The GPU check in one run, under 10 minutes: the GPU tests, a short ``lucchipp_best`` training
and a timed ``mitoseg-predict`` of a 1 Gvox synthetic volume in bf16 with ``torch.compile`` off
and on, then one table (also ``OUT/gpu_check.md`` and ``.json``).

Each part runs as a subprocess under its own time budget (``--budget-*``, seconds; they sum to
9 minutes): a part over its budget gets SIGTERM (training then saves ``last.ckpt``, which the
prediction uses) and, 20 s later, SIGKILL; the table says so, and the next part runs. Without a
GPU (or with ``--tiny``) every part is shrunk to a few steps and a tiny volume, and the table
says that no GPU was available. ``--dry-run`` prints the commands and runs nothing.

    benchmarks/gpu_check.sh /path/to/lucchi_pp [--out DIR] [--tiny] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tifffile

REPO = Path(__file__).resolve().parents[1]
GRACE_S = 20  # after SIGTERM: training saves last.ckpt, prediction keeps its finished blocks
GVOX_SHAPE = (256, 2048, 2048)  # 1.07 Gvox
TINY_SHAPE = (32, 128, 128)
# lucchipp_best as it is, stopped early: the fit by time (its schedule still spans 20000 steps)
TRAIN_GPU = ["trainer.max_time=00:00:02:30"]
# a few steps of a much smaller network and patch, for a machine without a GPU
TRAIN_TINY = [
    "trainer.accelerator=cpu",
    "trainer.max_steps=2",
    "data.patch_shape=[32,32,32]",
    "data.batch_size=1",
    "data.num_workers=0",
    "data.samples_per_epoch=2",
    "data.augment.elastic_prob=0.0",
    "model.widths=[4,8]",
    "predict.tta=none",
    "predict.batch_size=1",
]


@dataclass
class Part:
    """One row of the table: a command, its budget and what came of it."""

    name: str
    what: str
    command: list[str]
    budget_s: float
    result: str = ""
    seconds: float = 0.0
    status: str = "not run"
    log: str = field(default="", repr=False)


def tool(name: str) -> list[str]:
    """A console script beside this Python, else the module run by this Python."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return [str(path)]
    module = {"mitoseg-train": "train", "mitoseg-predict": "predict"}[name]
    code = f"import sys; from mitoseg.cli.{module} import main; sys.argv[0] = {name!r}; main()"
    return [sys.executable, "-c", code]


def gpu_description() -> str | None:
    """The GPU's name and software, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}"


def run_part(part: Part, cwd: Path, env: dict[str, str]) -> None:
    """Run ``part.command`` under its budget: SIGTERM at the budget, SIGKILL ``GRACE_S`` later."""
    start = time.perf_counter()
    log_path = cwd / f"{part.name.replace(' ', '_')}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            part.command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            code = proc.wait(timeout=part.budget_s)
            part.status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            part.status = f"stopped at its {part.budget_s:.0f} s budget"
    part.seconds = time.perf_counter() - start
    part.log = log_path.read_text(errors="replace")


def tests_result(log: str) -> str:
    """``3 passed, 1 skipped`` from pytest's last line."""
    found = re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", log)
    return ", ".join(f"{n} {what}" for n, what in found[-4:]) or "no summary"


def train_result(log: str, run_dir: Path) -> str:
    """The test score line of ``mitoseg-train`` and the step reached."""
    score = re.findall(r"test (fg_iou [0-9.]+)", log)
    steps = re.findall(r"global_step[\"']?:?\s*(\d+)", log)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    parts = [f"test {score[-1]}" if score else "no test score"]
    if steps:
        parts.append(f"step {steps[-1]}")
    parts.append("last.ckpt saved" if ckpt.exists() else "no checkpoint")
    return ", ".join(parts)


def predict_result(log: str) -> str:
    """``12.3 Mvox/s, bf16-mixed, peak RSS 900 MiB`` from mitoseg-predict's report."""
    found = re.search(r"in ([0-9.]+) s \(([0-9.]+) Mvox/s, ([\w-]+)\), peak RSS (\d+) MiB", log)
    if not found:
        return "no report"
    seconds, speed, precision, rss = found.groups()
    return f"{speed} Mvox/s ({seconds} s predicting, {precision}), peak RSS {rss} MiB"


def make_volume_file(path: Path, shape: tuple[int, int, int]) -> None:
    """A synthetic EM volume of ``shape`` (uint8, 5 nm): one generated block, tiled."""
    import numpy as np

    from mitoseg import io
    from mitoseg.datasets.synthetic import make_volume

    block = make_volume(
        tuple(min(s, b) for s, b in zip(shape, (64, 256, 256), strict=True)), seed=0
    )[0]
    out = io.create_volume(
        path, shape, np.uint8, chunks=(32, 256, 256), attrs={"voxel_size_nm": [5.0, 5.0, 5.0]},
        overwrite=True,
    )  # fmt: skip
    reps = [-(-s // b) for s, b in zip(shape[1:], block.shape[1:], strict=True)]
    for z in range(0, shape[0], block.shape[0]):
        depth = min(block.shape[0], shape[0] - z)
        slab = np.tile(block[:depth], (1, *reps))[:, : shape[1], : shape[2]]
        out[z : z + depth] = slab


def crop_lucchi(src: Path, dst: Path, yx: tuple[int, int] = (256, 384)) -> None:
    """The four Lucchi++ TIFFs cropped to their central ``yx`` (all slices), zlib-compressed:
    small enough to carry to the GPU machine (about 33 MB), large enough for lucchipp_best's
    128^3 patches."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("train_im", "train_label", "test_im", "test_label"):
        volume = tifffile.imread(src / f"{name}.tif")
        y0, x0 = ((s - c) // 2 for s, c in zip(volume.shape[1:], yx, strict=True))
        crop = volume[:, y0 : y0 + yx[0], x0 : x0 + yx[1]]
        tifffile.imwrite(dst / f"{name}.tif", crop, compression="zlib")
    print(f"wrote {dst}: Lucchi++ cropped to {crop.shape}")


def plan(args: argparse.Namespace, gpu: bool, out: Path) -> list[Part]:
    """The parts of the check, in order."""
    tiny = args.tiny or not gpu
    files = sorted(
        str(p) for p in (REPO / "tests").glob("test_*.py") if "mark.gpu" in p.read_text()
    )
    train_dir = out / "train"
    ckpt = train_dir / "checkpoints" / "last.ckpt"
    volume = out / "synthetic.zarr"
    shape = TINY_SHAPE if tiny else GVOX_SHAPE
    gvox = shape[0] * shape[1] * shape[2] / 1e9
    train = [
        "experiment=lucchipp_best",
        f"data.root={args.data}",
        f"hydra.run.dir={train_dir}",
        "logger=none",
        "overwrite=true",
        "trainer.enable_progress_bar=false",
        *(TRAIN_TINY if tiny else TRAIN_GPU),
    ]
    parts = [
        Part(
            "gpu tests",
            f"pytest -m gpu ({', '.join(Path(f).name for f in files)})",
            [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:xdist", "-q", *files],
            args.budget_tests,
        ),
        Part(
            "train",
            "lucchipp_best, " + ("2 steps of a tiny network" if tiny else "2.5 min fit + test"),
            [*tool("mitoseg-train"), *train],
            args.budget_train,
        ),
        Part(
            "volume",
            f"synthetic {shape} uint8 ({gvox:.3g} Gvox)",
            [sys.executable, __file__, "--make-volume", str(volume), *map(str, shape)],
            args.budget_volume,
        ),
    ]
    for compiled in (False, True):
        command = [
            *tool("mitoseg-predict"),
            f"ckpt={ckpt}",
            f"input={volume}",
            f"output={out / f'probs_compile_{str(compiled).lower()}.zarr'}",
            "trainer.precision=bf16-mixed",
            "tta=none",
            f"compile={str(compiled).lower()}",
            "overwrite=true",
            "trainer.enable_progress_bar=false",
            f"cache_dir={out / 'cache'}",
            *(["trainer.accelerator=cpu", "batch_size=1"] if tiny else []),
        ]
        name = f"predict compile {'on' if compiled else 'off'}"
        what = f"{gvox:.3g} Gvox, bf16, no TTA, torch.compile {'on' if compiled else 'off'}"
        budget = args.budget_compile if compiled else args.budget_predict
        parts.append(Part(name, what, command, budget))
    return parts


def table(parts: list[Part], header: str) -> str:
    lines = [header, "", "| part | what | result | s | status |", "|---|---|---|---|---|"]
    for p in parts:
        lines.append(f"| {p.name} | {p.what} | {p.result} | {p.seconds:.1f} | {p.status} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", help="the Lucchi++ folder (train_im.tif, ...)")
    parser.add_argument("--out", type=Path, default=REPO / ".bench" / "gpu_check")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes even with a GPU")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--budget-tests", type=float, default=75)
    parser.add_argument("--budget-train", type=float, default=220)
    parser.add_argument("--budget-volume", type=float, default=45)
    parser.add_argument("--budget-predict", type=float, default=60, help="compile off")
    parser.add_argument("--budget-compile", type=float, default=100, help="compile on")
    parser.add_argument("--total", type=float, default=570, help="seconds for everything")
    parser.add_argument("--make-volume", nargs=4, metavar=("PATH", "Z", "Y", "X"))
    parser.add_argument(
        "--crop-lucchi", type=Path, metavar="DST", help="write a crop of DATA to carry, then stop"
    )
    args = parser.parse_args()
    if args.crop_lucchi:
        crop_lucchi(Path(args.data), args.crop_lucchi)
        return
    if args.make_volume:
        path, *shape = args.make_volume
        make_volume_file(Path(path), tuple(int(s) for s in shape))  # type: ignore[arg-type]
        return
    if not args.data:
        parser.error("give the Lucchi++ folder (train_im.tif, train_label.tif, test_*.tif)")
    gpu = gpu_description()
    header = (
        f"GPU check on {gpu}" + (" (--tiny)" if args.tiny else "")
        if gpu
        else "GPU check: no GPU was available; every part ran for a few steps / a tiny volume "
        "on the CPU"
    )
    out = args.out.resolve()
    parts = plan(args, gpu is not None, out)
    if args.dry_run:
        print(header)
        for p in parts:
            print(f"[{p.name}, {p.budget_s:.0f} s] {' '.join(p.command)}")
        return
    marker = out / ".mitoseg-gpu-check"  # only a folder of an earlier check is replaced
    if out.exists() and any(out.iterdir()) and not marker.exists():
        sys.exit(f"--out {out} holds files of something else: choose another folder")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    marker.touch()
    env = {**os.environ, "MITOSEG_CACHE": str(out / "cache"), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    for part in parts:
        left = args.total - (time.perf_counter() - start) - GRACE_S
        if left < 5:
            part.status = f"skipped: the {args.total:.0f} s of the check were spent"
            continue
        part.budget_s = min(part.budget_s, left)
        print(f"[{time.perf_counter() - start:5.0f} s] {part.name}: {part.what}", flush=True)
        run_part(part, out, env)
        if part.name == "gpu tests":
            part.result = tests_result(part.log)
        elif part.name == "train":
            part.result = train_result(part.log, out / "train")
        elif part.name.startswith("predict"):
            part.result = predict_result(part.log)
        else:
            part.result = "written" if part.status == "ok" else "missing"
        if part.status != "ok":
            print(part.log[-2000:], flush=True)
    text = table(parts, header) + f"\n\ntotal {time.perf_counter() - start:.0f} s"
    print("\n" + text)
    (out / "gpu_check.md").write_text(text + "\n")
    (out / "gpu_check.json").write_text(
        json.dumps({"gpu": gpu, "parts": [asdict(p) | {"log": None} for p in parts]}, indent=1)
    )


if __name__ == "__main__":
    main()
