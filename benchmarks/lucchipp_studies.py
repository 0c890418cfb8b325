"""Test-time studies of a trained Lucchi++ run, on the validation part only (never the test volume).

Two Hydra multiruns over the run's best checkpoint:

1. TTA: ``mitoseg-predict -m tta=none,flip_yx,flip,flip_transpose`` (1, 4, 8, 16 variants) on the
   validation part of the training volume, then ``mitoseg-segment -m`` over every threshold
   (median 7), so each TTA mode is scored at its own best threshold.
2. Post-process: ``mitoseg-segment -m`` over threshold x median size on the run's validation
   probabilities (its own TTA setting).

The tables are the multiruns' ``sweep_summary.md`` files, printed at the end.

    python benchmarks/lucchipp_studies.py .bench/lucchipp_budget/ours \
        --root ../shared/data/lucchi_pp
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from mitoseg import io
from mitoseg.geometry import Box, split_axis

BIN = Path(sys.executable).parent
THRESHOLDS = "0.3,0.4,0.5,0.6,0.7,0.8"
TTA_MODES = ("none", "flip_yx", "flip", "flip_transpose")


def tool(name: str, *args: str) -> None:
    subprocess.run([str(BIN / name), *args], check=True)


def validation_raw(run: Path, root: Path, out: Path) -> Path:
    """The run's validation part of ``train_im.tif`` (data.val_fraction along data.val_axis)."""
    from omegaconf import OmegaConf

    data = OmegaConf.load(run / ".hydra" / "config.yaml").data
    raw = io.convert(root / "train_im.tif", out / "train_im.zarr", overwrite=True)
    _, val = split_axis(Box.whole(raw.shape), data["val_axis"], data["val_fraction"])
    path, crop = out / "val_raw.zarr", raw[val.slices]
    labels = io.open_volume(run / "val_labels.zarr")
    if labels.shape != crop.shape:
        raise ValueError(f"{path} {crop.shape} != {run}/val_labels.zarr {labels.shape}")
    io.write_volume(path, crop, chunks=(32, 256, 256), overwrite=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished mitoseg-train run folder")
    parser.add_argument("--root", type=Path, required=True, help="folder with train_im.tif")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN/studies")
    args = parser.parse_args()
    run = args.run.resolve()
    out = (args.out or run / "studies").resolve()
    out.mkdir(parents=True, exist_ok=True)
    (best,) = (run / "checkpoints").glob("step*.ckpt")
    raw = validation_raw(run, args.root, out)
    labels = run / "val_labels.zarr"
    tool(
        "mitoseg-predict", "-m", f"ckpt={best}", f"input={raw}", f"tta={','.join(TTA_MODES)}",
        f"output={out}/val_probs_${{tta}}.zarr", "overwrite=true",
        "trainer.enable_progress_bar=false", f"hydra.sweep.dir={out}/tta_predict",
    )  # fmt: skip
    probs = ",".join(f"{out}/val_probs_{mode}.zarr" for mode in TTA_MODES)
    tool(
        "mitoseg-segment", "-m", f"probs={probs}", f"labels={labels}",
        f"postprocess.threshold={THRESHOLDS}", "save_output=false", "progress=false",
        f"hydra.sweep.dir={out}/tta",
    )  # fmt: skip
    tool(
        "mitoseg-segment", "-m", f"probs={run / 'val_probs.zarr'}", f"labels={labels}",
        f"postprocess.threshold={THRESHOLDS}", "postprocess.median_size=0,3,5,7,9",
        "save_output=false", "progress=false", f"hydra.sweep.dir={out}/postprocess",
    )  # fmt: skip
    for study in ("tta", "postprocess"):
        print(f"\n## {study}\n")
        print((out / study / "sweep_summary.md").read_text())


if __name__ == "__main__":
    main()
