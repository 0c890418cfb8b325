"""Imports point one way: the numpy-only stages never pull in torch or Lightning."""

import subprocess
import sys

NUMPY_ONLY = (
    "io",
    "geometry",
    "datasets.synthetic",
    "datasets.synthetic_shapes",
    "datasets.volumes",
    "datasets.fetch",
    "datasets.registry",
    "datasets.mitoem",
    "train.augment",
    "train.targets",
    "predict.blend",
    "decode.masks",
    "decode.watershed",
    "decode.run",
    "decode.blockwise",
    "evaluate.semantic",
    "evaluate.instance",
    "evaluate.blockwise",
    "analyze.measure",
    "analyze.export",
    "analyze.report",
    "baselines",
)


def test_numpy_only_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        + "".join(f"import mitoseg.{name}\n" for name in NUMPY_ONLY)
        + "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
