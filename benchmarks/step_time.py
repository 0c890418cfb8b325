"""Training-step time of the CPU recipe's network: norm x memory layout, in one process.

MONAI's UNet 16-32-64-128 (strides 2, 2 residual units) on a batch of 2 x 96^3 with AdamW, as in
``experiment=lucchipp_cpu``; the first row (instance norm, default layout) is the plain MONAI
baseline's setting and the reference of the ratios. ``--compile`` adds the recipe's setting
(batch norm, channels-last) under ``torch.compile`` (inductor); its compilation is not timed.
``--bf16`` adds it under bf16 autocast (``trainer.precision=bf16-mixed``), which pays only where
the CPU has bf16 instructions (AVX512-BF16, AMX) or on a GPU. ``--auto`` times a training step
and the prediction of a batch of tiles (forward pass, no gradients; Mvox/s) in fp32 in the
default layout, before (the previous defaults: fp32, channels-last) and after (what
``precision=auto`` and ``channels_last=auto`` choose on this machine, :mod:`mitoseg.hardware`).
``--size`` sets the patch edge (96: the recipe's).

    python benchmarks/step_time.py --steps 4 [--compile] [--bf16] [--auto] [--size 96]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from monai.networks.nets import UNet
from results import record

SHAPE = (2, 1, 96, 96, 96)


def time_training_steps(
    net: torch.nn.Module,
    shape: tuple[int, ...],
    channels_last: bool,
    steps: int,
    compiled: bool,
    bf16: bool = False,
) -> float:
    """Seconds per BCE forward + backward + AdamW step of ``net`` on random data of ``shape``
    (N, 1, Z, Y, X), after untimed warm-up steps (three when compiled: it compiles there);
    ``bf16``: the forward pass and loss under CPU bf16 autocast, as Lightning's bf16-mixed."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(*shape), (torch.rand(*shape) > 0.5).float()
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    forward = torch.compile(net) if compiled else net
    warm = 3 if compiled else 1
    for i in range(steps + warm):
        if i == warm:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(forward(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def step_seconds(
    norm: str, channels_last: bool, steps: int, compiled: bool = False, bf16: bool = False
) -> float:
    torch.manual_seed(0)
    net = UNet(3, 1, 1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm=norm)
    return time_training_steps(net, SHAPE, channels_last, steps, compiled, bf16)


def predict_seconds(
    net: torch.nn.Module, shape: tuple[int, ...], channels_last: bool, steps: int, bf16: bool
) -> float:
    """Seconds per forward pass of ``net`` (eval mode, no gradients) on a batch of ``shape``."""
    layout = torch.channels_last_3d if channels_last else torch.preserve_format
    net = net.eval().to(memory_format=layout)
    x = torch.rand(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        net(x)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            net(x)
    return (time.perf_counter() - start) / steps


def before_after(steps: int) -> None:
    """fp32 in the default layout against this machine's auto choice: training and prediction."""
    from mitoseg.hardware import resolve_compute

    auto = resolve_compute("auto", "auto", "cpu")
    bf16 = auto.precision.startswith("bf16")
    print(f"\nauto on this machine: {auto.describe()}")
    print("| run | precision | layout | s / training step | prediction Mvox/s |")
    print("|---|---|---|---|---|")
    rows = {}
    runs = (
        ("fp32", False, False),
        ("before: the previous defaults", True, False),
        ("after: auto", auto.channels_last, bf16),
    )
    for name, layout, half in runs:
        train = step_seconds("batch", layout, steps, bf16=half)
        torch.manual_seed(0)
        net = UNet(
            3, 1, 1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm="batch"
        )
        infer = predict_seconds(net, SHAPE, layout, steps, half)
        rows[name] = (train, math.prod(SHAPE) / infer / 1e6)
        precision = auto.precision if half else "32-true"
        print(f"| {name} | {precision} | {'channels-last 3D' if layout else 'default'} | "
              f"{train:.2f} | {rows[name][1]:.2f} |", flush=True)  # fmt: skip
    (t0, p0), (t1, p1) = rows["before: the previous defaults"], rows["after: auto"]
    print(f"after / before: training step {t0 / t1:.2f}x faster, prediction {p1 / p0:.2f}x")
    before = "the previous defaults: fp32, channels-last 3D"
    notes = f"{auto.describe()}; batch {list(SHAPE)}, batch norm, {steps} steps"
    record("step_time_auto_s", t1, "s/step", baseline=t0, baseline_name=before, notes=notes)
    record(
        "predict_batch_auto_mvox_per_s", p1, "Mvox/s", baseline=p0, baseline_name=before,
        notes=notes + "; forward pass of one batch, no gradients",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row")
    parser.add_argument("--bf16", action="store_true", help="add a bf16 autocast row")
    parser.add_argument("--auto", action="store_true", help="fp32 against precision=auto only")
    parser.add_argument("--size", type=int, default=96, help="patch edge in voxels")
    args = parser.parse_args()
    global SHAPE
    SHAPE = (2, 1, args.size, args.size, args.size)
    if args.auto:
        before_after(args.steps)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {SHAPE}")
    print("| norm | layout | s / step | speed vs instance, default layout |")
    print("|---|---|---|---|")
    reference = recipe = None
    base = "instance norm, default layout (the plain MONAI baseline's setting)"
    for norm in ("instance", "batch"):
        for channels_last in (False, True):
            seconds = step_seconds(norm, channels_last, args.steps)
            reference = reference or seconds
            recipe = seconds if norm == "batch" and channels_last else recipe
            layout = "channels-last 3D" if channels_last else "default"
            print(f"| {norm} | {layout} | {seconds:.2f} | {reference / seconds:.2f}x |", flush=True)
    record(
        "step_time_recipe_s",
        recipe,
        "s/step",
        baseline=reference,
        baseline_name=base,
        notes=f"batch norm, channels-last 3D: {reference / recipe:.2f}x",
    )
    if args.compile:
        seconds = step_seconds("batch", True, args.steps, compiled=True)
        ratio = reference / seconds
        print(f"| batch, torch.compile | channels-last 3D | {seconds:.2f} | {ratio:.2f}x |")
        record(
            "step_time_compile_s",
            seconds,
            "s/step",
            baseline=reference,
            baseline_name=base,
            notes=f"the recipe's setting under torch.compile: {ratio:.2f}x",
        )
    if args.bf16:
        seconds = step_seconds("batch", True, args.steps, bf16=True)
        ratio = reference / seconds
        print(f"| batch, bf16 autocast | channels-last 3D | {seconds:.2f} | {ratio:.2f}x |")
        record(
            "step_time_bf16_s",
            seconds,
            "s/step",
            baseline=reference,
            baseline_name=base,
            notes=f"the recipe's setting under bf16 autocast: {ratio:.2f}x",
        )


if __name__ == "__main__":
    main()
