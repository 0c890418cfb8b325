"""``mitoseg-export-model``: a checkpoint -> a bioimage.io model package (zip).

mitoseg-export-model CKPT OUT.zip [--name NAME] [--author NAME ...] [--license SPDX]
    [--cite TEXT=DOI_OR_URL ...] [--card CARD.md] [--sample VOLUME] [--no-test] [--overwrite]

The package (model spec 0.5) runs in bioimage.io tools and in ``mitoseg-predict ckpt=OUT.zip``;
see :mod:`mitoseg.bioimage.export`. Unless ``--no-test``, bioimageio.core then validates it and
runs both weight formats on its test input (``bioimageio test OUT.zip`` does the same).
Needs the ``bioimage`` extra: ``pip install 'mitoseg[bioimage]'``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mitoseg import io
from mitoseg.cli.common import CheckpointError, build_net, load_checkpoint, trained_intensity
from mitoseg.files import OutputExistsError, check_output_apart
from mitoseg.train.checkpoints import load_weights_only

log = logging.getLogger(__name__)

# the network families mitoseg trains (``--cite`` adds the data's and your own)
CITATIONS = {
    "mitoseg.": [
        ("Lee K, Zung J, Li P, Jain V, Seung HS. Superhuman accuracy on the SNEMI3D "
         "connectomics challenge. arXiv 2017 (residual symmetric U-Net)",
         "10.48550/arXiv.1706.00120"),
    ],
    "monai.": [
        ("Cardoso MJ et al. MONAI: An open-source framework for deep learning in "
         "healthcare. arXiv 2022", "10.48550/arXiv.2211.02701"),
    ],
}  # fmt: skip
UNET_3D = (
    "Cicek O, Abdulkadir A, Lienkamp SS, Brox T, Ronneberger O. 3D U-Net: learning dense "
    "volumetric segmentation from sparse annotation. MICCAI 2016",
    "10.1007/978-3-319-46723-8_49",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mitoseg-export-model",
        description="Write a checkpoint as a bioimage.io model package (spec 0.5): state-dict "
        "and TorchScript weights, test tensors, cover, model card; mitoseg-predict reads it.",
    )
    p.add_argument("ckpt", type=Path, help="checkpoint of mitoseg-train")
    p.add_argument("output", type=Path, help="model package to write (.zip)")
    p.add_argument("--name", help="model name (default: from the target and the output name)")
    p.add_argument("--description", help="one-line description")
    p.add_argument(
        "--author", action="append", help="an author (repeat for several; default: mitoseg user)"
    )
    p.add_argument("--license", default="CC-BY-4.0", help="SPDX licence id (default: CC-BY-4.0)")
    p.add_argument(
        "--cite",
        action="append",
        default=[],
        metavar="TEXT=DOI_OR_URL",
        help="a citation besides the network's (repeat for several), e.g. the training data",
    )
    p.add_argument("--card", type=Path, help="model card (Markdown); default: written from the "
                   "checkpoint, its run's metrics.json and config")  # fmt: skip
    p.add_argument("--sample", type=Path, help="a volume like the training data (any format "
                   "mitoseg reads): its central tile is the test input and the cover (default: "
                   "a synthetic EM tile)")  # fmt: skip
    p.add_argument("--no-test", dest="test", action="store_false",
                   help="skip bioimageio.core's test run of the written package")  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true", help="replace an OUT.zip mitoseg-export-model wrote"
    )
    return p


def citations(model_target: str, extra: list[str]) -> list[tuple[str, str]]:
    """The network family's citations, the 3D U-Net, then ``TEXT=DOI_OR_URL`` items."""
    found = [c for prefix, items in CITATIONS.items() if model_target.startswith(prefix)
             for c in items]  # fmt: skip
    pairs = []
    for item in extra:
        text, sep, ref = item.rpartition("=")
        if not sep or not text.strip() or not ref.strip():
            raise ValueError(f"--cite {item!r}: expected TEXT=DOI_OR_URL")
        pairs.append((text.strip(), ref.strip()))
    return [*found, UNET_3D, *pairs]


def central_tile(path: Path, tile: tuple[int, int, int], dtype: str) -> np.ndarray:
    """The (Z, Y, X) box of shape ``tile`` at the centre of the volume ``path``.

    Raises:
        VolumeError: the volume is smaller than ``tile``, has colour, or is not ``dtype`` (the
            training data's: the package's pre-processing maps that dtype's range).
    """
    with io.open_source(path) as source:
        shape = tuple(int(s) for s in source.shape[:3])
        if any(s < t for s, t in zip(shape, tile, strict=True)):
            raise io.VolumeError(f"--sample {path}: shape {shape} is smaller than a tile {tile}")
        if str(source.dtype) != dtype:
            raise io.VolumeError(
                f"--sample {path} is {source.dtype}, the model was trained on {dtype} data: give "
                "a sample stored like the training data"
            )
        start = [(s - t) // 2 for s, t in zip(shape, tile, strict=True)]
        slab = source.read(start[0], start[0] + tile[0])
    if slab.ndim != 3:
        raise io.VolumeError(f"--sample {path} has colour slices {slab.shape}: give a grey volume")
    return np.ascontiguousarray(
        slab[:, start[1] : start[1] + tile[1], start[2] : start[2] + tile[2]]
    )


def _metrics(ckpt: Path) -> dict[str, Any] | None:
    path = ckpt.resolve().parent.parent / "metrics.json"  # RUN/checkpoints/x.ckpt
    return json.loads(path.read_text()) if path.is_file() else None


def _model_io(stored: DictConfig, net: Any) -> Any:
    from mitoseg.bioimage.export import ModelIO

    voxel = OmegaConf.select(stored, "data.voxel_size_nm")
    if voxel is None:
        log.warning("the checkpoint records no voxel size: the package states 1 nm")
    return ModelIO(
        channels=list(stored.target.channels),
        voxel_size_nm=tuple(float(v) for v in voxel or (1, 1, 1)),  # type: ignore[arg-type]
        tile_shape=tuple(int(t) for t in stored.predict.tile_shape),  # type: ignore[arg-type]
        intensity=trained_intensity(stored),
        divisor=getattr(net, "divisor", None),
    )


def export(args: argparse.Namespace) -> Path:
    """Write the package of ``args`` (see :func:`build_parser`); returns its path."""
    from mitoseg.bioimage.card import model_card
    from mitoseg.bioimage.export import Architecture, PackageInfo, export_package
    from mitoseg.bioimage.package import written_by_mitoseg

    check_output_apart(args.output, [args.ckpt, args.card, args.sample])
    if args.output.exists() and not args.overwrite:
        raise OutputExistsError(f"{args.output} already exists; pass --overwrite to replace it")
    if args.output.exists() and not written_by_mitoseg(args.output):
        raise OutputExistsError(
            f"{args.output} exists and is not a model package written by mitoseg-export-model: "
            "--overwrite replaces only those; choose another output path"
        )
    if args.output.suffix.lower() != ".zip":
        raise ValueError(f"{args.output}: a model package is a .zip file")
    stored, weights = load_checkpoint(args.ckpt)
    if OmegaConf.select(stored, "predict.tile_shape") is None:
        raise CheckpointError(f"checkpoint {args.ckpt} has no predict.tile_shape")
    net = build_net(stored, weights, str(args.ckpt)).eval()
    config = OmegaConf.to_container(stored, resolve=True)
    assert isinstance(config, dict)
    target = str(config["model"]["_target_"])
    kwargs = {k: v for k, v in config["model"].items() if not k.startswith("_")}
    checkpoint = load_weights_only(args.ckpt.expanduser())  # the run and versions it records
    record = checkpoint.get("mitoseg", {})
    name = args.name or f"mitoseg {stored.target.get('name')} {args.output.stem}"
    card = (
        args.card.read_text()
        if args.card
        else model_card(
            name,
            config,
            record.get("run"),
            _metrics(args.ckpt),
            record.get("versions"),
            checkpoint.get("global_step"),
        )
    )
    info = PackageInfo(
        name=name,
        description=args.description
        or f"3D mitochondria segmentation in EM ({', '.join(stored.target.channels)})",
        authors=args.author or ["mitoseg user"],
        license=args.license,
        citations=citations(target, args.cite),
        documentation=card,
        bioimageio={
            "modality": "electron microscopy",
            "target_structure": ["mitochondria"],
            "task": "semantic segmentation"
            if stored.target.get("name") == "semantic"
            else "instance segmentation",
        },
    )
    mitoseg = {"config": config, "versions": record.get("versions") or {}}
    model_io = _model_io(stored, net)
    sample = None
    if args.sample is not None:
        dtype = model_io.intensity.stats.dtype if model_io.intensity else "uint8"
        sample = central_tile(args.sample, model_io.tile_shape, dtype)
    arch = Architecture.of(target, kwargs)
    return export_package(net, arch, model_io, info, mitoseg, args.output, sample)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mitoseg-export-model``: 0 when written (and tested), 1 when the test
    failed, 2 when refused."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = export(args)
    except (ValueError, ImportError, FileNotFoundError, FileExistsError) as error:
        print(f"mitoseg-export-model: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    if not args.test:
        return 0
    from mitoseg.bioimage.export import run_bioimageio_test

    summary = run_bioimageio_test(path)
    print(f"bioimageio.core test of {path}: {summary.status}")
    if summary.status not in ("passed", "valid-format"):
        summary.display()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
