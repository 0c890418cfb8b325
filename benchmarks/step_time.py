"""Training-step time of the CPU recipe's network: norm x memory layout, in one process.

MONAI's UNet 16-32-64-128 (strides 2, 2 residual units) on a batch of 2 x 96^3 with AdamW, as in
``experiment=lucchipp_cpu``; the first row (instance norm, default layout) is the plain MONAI
baseline's setting and the reference of the ratios.

    python benchmarks/step_time.py --steps 4
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.networks.nets import UNet

SHAPE = (2, 1, 96, 96, 96)


def step_seconds(norm: str, channels_last: bool, steps: int) -> float:
    torch.manual_seed(0)
    net = UNet(3, 1, 1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm=norm)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(*SHAPE), (torch.rand(*SHAPE) > 0.5).float()
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    for i in range(steps + 1):  # the first step warms up and is not timed
        if i == 1:
            start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {SHAPE}")
    print("| norm | layout | s / step | speed vs instance, default layout |")
    print("|---|---|---|---|")
    reference = None
    for norm in ("instance", "batch"):
        for channels_last in (False, True):
            seconds = step_seconds(norm, channels_last, args.steps)
            reference = reference or seconds
            layout = "channels-last 3D" if channels_last else "default"
            print(f"| {norm} | {layout} | {seconds:.2f} | {reference / seconds:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
