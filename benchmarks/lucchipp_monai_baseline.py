"""The plain MONAI baseline of ``lucchipp_budget.py``: what a user would write instead of mitoseg.

MONAI ``UNet`` (channels 16-32-64-128, strides 2, 2 residual units, its default instance norm),
AdamW with cosine decay over the wall-clock budget, random 96^3 crops of the whole training
volume, batch 2, BCE + Dice, random flips and 90-degree rotations in every plane (which with the
flips give every transpose), then MONAI ``sliding_window_inference`` with Gaussian blending on the
test volume, thresholded at 0.5. Scores come from ``mitoseg.evaluate.semantic`` so that both rows
of the
benchmark are counted by the same code.

    python benchmarks/lucchipp_monai_baseline.py --root ../shared/data/lucchi_pp --minutes 60 \
        --out .bench/lucchipp_budget/monai
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss
from monai.networks.nets import UNet
from monai.transforms import Compose, RandFlipd, RandRotate90d, RandSpatialCropd
from monai.utils import set_determinism

from mitoseg.evaluate.semantic import Confusion, semantic_scores

PATCH = (96, 96, 96)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def load(path: Path) -> np.ndarray:
    volume = tifffile.imread(path)
    if volume.ndim != 3:
        raise ValueError(f"{path}: expected a 3D stack, got shape {volume.shape}")
    return volume


def augment() -> Compose:
    keys = ("image", "label")
    return Compose(
        [
            RandSpatialCropd(keys, roi_size=PATCH, random_size=False),
            *(RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)),
            *(RandRotate90d(keys, prob=0.5, spatial_axes=ax) for ax in ((0, 1), (0, 2), (1, 2))),
        ]
    )


def train(image: np.ndarray, label: np.ndarray, minutes: float, seed: int) -> tuple[UNet, int]:
    set_determinism(seed=seed)
    net = UNet(3, 1, 1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    dice, bce = DiceLoss(sigmoid=True), torch.nn.BCEWithLogitsLoss()
    transform = augment()
    sample = {"image": torch.from_numpy(image)[None], "label": torch.from_numpy(label)[None]}
    budget = minutes * 60.0
    start, step = time.perf_counter(), 0
    net.train()
    while (elapsed := time.perf_counter() - start) < budget:
        # Cosine decay over the budget itself, so the schedule ends when the time does.
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1.0 + math.cos(math.pi * elapsed / budget))
        crops = [transform(sample) for _ in range(2)]
        x = torch.stack([torch.as_tensor(c["image"]) for c in crops])
        y = torch.stack([torch.as_tensor(c["label"]) for c in crops])
        logits = net(x)
        loss = bce(logits, y) + dice(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} {elapsed / 60:.1f} min loss {loss.item():.4f}", flush=True)
    return net, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder with the Lucchi++ TIFFs")
    parser.add_argument("--minutes", type=float, default=60.0, help="training budget")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--crop", type=int, default=0, help="smoke test: only the first N voxels along each axis"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    depth = (slice(0, args.crop or None),) * 3
    image = (load(args.root / "train_im.tif")[depth] / np.float32(255.0)).astype(np.float32)
    label = (load(args.root / "train_label.tif")[depth] > 0).astype(np.float32)
    started = time.perf_counter()
    net, steps = train(image, label, args.minutes, args.seed)
    train_s = time.perf_counter() - started
    del image, label

    test = (load(args.root / "test_im.tif")[depth] / np.float32(255.0)).astype(np.float32)
    truth = load(args.root / "test_label.tif")[depth] > 0
    net.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        logits = sliding_window_inference(
            torch.from_numpy(test)[None, None], PATCH, 2, net, overlap=0.25, mode="gaussian"
        )
    probs = torch.sigmoid(logits)[0, 0].numpy()
    infer_s = time.perf_counter() - started
    scores = {t: semantic_scores(Confusion.from_masks(probs > t, truth)) for t in THRESHOLDS}
    result = {
        "steps": steps,
        "threshold": 0.5,
        "test": scores[0.5],
        "test_all_thresholds": {str(t): s for t, s in scores.items()},
        "train_s": train_s,
        "infer_s": infer_s,
    }
    tmp = args.out / "metrics.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out / "metrics.json")
    print(json.dumps(result["test"]), flush=True)


if __name__ == "__main__":
    main()
