"""``mitoseg-convert``: EM volumes (slices, TIFF, HDF5, zarr) -> chunked zarr arrays.

Single volume::

    mitoseg-convert SRC DST [--labels] [--voxel-size-nm Z Y X] [--dataset NAME] [--chunks Z Y X]

Labels stored as class codes (each grey value one class) take ``--label-values 191`` (values
and ranges, ``191,200-210``), anti-aliased masks ``--label-threshold 127``: the stored labels are
then that mask, and the selection is recorded in the array's ``label_values`` /
``label_threshold`` attributes. Without them such labels are refused, showing their values.

Raw and labels together, shapes checked first, written to ``DIR/raw.zarr`` and
``DIR/labels.zarr`` as one unit (if either fails, neither is left)::

    mitoseg-convert --raw SRC --labels-src SRC2 --out DIR [--voxel-size-nm Z Y X]

A whole MitoEM release (``im/``, ``mito_train/``, ``mito_val/`` and / or JSON listings) into
``DIR/train/{raw,labels}.zarr``, ``DIR/val/{raw,labels}.zarr`` and ``DIR/test/raw.zarr``::

    mitoseg-convert --mitoem ROOT --out DIR [--voxel-size-nm 30 8 8]

The voxel size is the one the file states (TIFF resolution tags, ImageJ / OME-TIFF metadata,
HDF5 / zarr attributes, OME-Zarr scales; :mod:`mitoseg.io.voxels`); ``--voxel-size-nm``
overrides it (warning when they differ by more than 20 %). Without either, a warning says that
none was stored. Labels of a pair without one take the raw's.

SRC may be a JSON slice listing (``im_train.json``); ``--z-range Z0 Z1`` picks slices, e.g.
``--z-range 400 500`` of a MitoEM ``im`` folder for the validation part.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import zarr

from mitoseg.datasets.mitoem import MITOEM_VOXEL_SIZE_NM, convert_release
from mitoseg.files import OutputExistsError, UnsafeOutputError, check_output_apart, output_unit
from mitoseg.io import DEFAULT_CHUNKS, VolumeError, check_same_shape, convert
from mitoseg.io.label_values import parse_label_values

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mitoseg-convert``."""
    p = argparse.ArgumentParser(
        prog="mitoseg-convert",
        usage="%(prog)s SRC DST [--labels] [options]\n"
        "       %(prog)s --raw SRC --labels-src SRC2 --out DIR [options]\n"
        "       %(prog)s --mitoem ROOT --out DIR [options]",
        description="Convert an EM volume (folder of 2D slices, JSON slice listing, "
        "multi-page/3D TIFF, HDF5, zarr) into a chunked, compressed zarr array.",
    )
    _add_single_args(p)
    _add_pair_args(p)
    _add_label_args(p)
    p.add_argument(
        "--mitoem",
        type=Path,
        metavar="ROOT",
        help="convert a MitoEM release into --out DIR/{train,val,test}/ (slices or JSON listings)",
    )
    _add_common_args(p)
    return p


def _add_single_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", nargs="?", type=Path, help="source volume")
    p.add_argument("dst", nargs="?", type=Path, help="output zarr array (directory)")
    p.add_argument("--labels", action="store_true", help="SRC is a label volume / mask")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument(
        "--binary",
        dest="binary",
        action="store_const",
        const=True,
        help="labels are a binary mask (default: decided from the values)",
    )
    kind.add_argument(
        "--instances",
        dest="binary",
        action="store_const",
        const=False,
        help="labels are instance ids, even if they look like a 0/1 mask",
    )
    p.add_argument("--dataset", help="dataset in an HDF5 file / array in a zarr group")


def _add_pair_args(p: argparse.ArgumentParser) -> None:
    pair = p.add_argument_group("pair mode (raw and labels together)")
    pair.add_argument("--raw", type=Path, help="raw source")
    pair.add_argument("--labels-src", type=Path, help="labels source")
    pair.add_argument(
        "--out", type=Path, help="output folder for raw.zarr and labels.zarr (or --mitoem splits)"
    )
    pair.add_argument("--raw-dataset", help="dataset of the raw source")
    pair.add_argument("--labels-dataset", help="dataset of the labels source")


def _label_values(text: str) -> str:
    try:
        parse_label_values(text)
    except VolumeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _add_label_args(p: argparse.ArgumentParser) -> None:
    labels = p.add_argument_group(
        "label values (--labels or pair mode; default: refuse class codes and anti-aliased masks)"
    )
    which = labels.add_mutually_exclusive_group()
    which.add_argument(
        "--label-values",
        type=_label_values,
        metavar="V",
        help="class-coded labels: the values that are foreground, e.g. 191 or 191,200-210; "
        "the stored labels are that mask",
    )
    which.add_argument(
        "--label-threshold",
        type=float,
        metavar="T",
        help="anti-aliased mask: values > T are foreground, e.g. 127",
    )


def _label_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"label_values": args.label_values, "label_threshold": args.label_threshold}


def _add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--voxel-size-nm",
        type=float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="voxel size in nm, overriding the file's (default: the one the file states, "
        "else none is stored; 30 8 8 with --mitoem)",
    )
    p.add_argument(
        "--chunks",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=DEFAULT_CHUNKS,
        help="chunk shape (default: %(default)s)",
    )
    p.add_argument(
        "--z-range", type=int, nargs=2, metavar=("Z0", "Z1"), help="convert only slices [Z0, Z1)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")


def _check_mitoem(p: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    others = (args.src, args.dst, args.raw, args.labels_src, args.raw_dataset, args.labels_dataset)
    if any(a is not None for a in others) or args.labels or args.dataset:
        p.error("--mitoem takes --out DIR only, not SRC DST, --raw, --labels-src or --dataset")
    if args.out is None:
        p.error("--mitoem needs --out DIR")
    if args.z_range is not None or args.binary is not None:
        p.error("--z-range, --binary and --instances do not apply to --mitoem")
    if args.label_values is not None or args.label_threshold is not None:
        p.error("--label-values and --label-threshold do not apply to --mitoem (instance ids)")
    return "mitoem"


def _check_mode(p: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """ "single", "pair" or "mitoem"; exits with a usage error on a mix of modes."""
    if args.mitoem is not None:
        return _check_mitoem(p, args)
    single = args.src is not None or args.dst is not None
    pair_args = (args.raw, args.labels_src, args.out)
    if any(a is not None for a in pair_args) or args.raw_dataset or args.labels_dataset:
        if single or args.labels or args.dataset:
            p.error("give either SRC DST [--labels --dataset] or --raw/--labels-src/--out")
        if any(a is None for a in pair_args):
            p.error("pair mode needs all of --raw, --labels-src and --out")
        return "pair"
    if args.src is None or args.dst is None:
        p.error("give SRC and DST, or --raw, --labels-src and --out")
    if args.binary is not None and not args.labels:
        p.error("--binary / --instances need --labels")
    if not args.labels and (args.label_values is not None or args.label_threshold is not None):
        p.error("--label-values / --label-threshold need --labels")
    return "single"


def _summary(array: zarr.Array, path: Path) -> str:
    return f"wrote {path}: shape {array.shape} {array.dtype} chunks {array.chunks}"


def check_apart(args: argparse.Namespace, mode: str) -> None:
    """Refuse, before reading anything, outputs that are, lie inside or contain an input."""
    if mode == "single":
        check_output_apart(args.dst, [args.src])
    elif mode == "pair":
        for name in ("raw.zarr", "labels.zarr"):
            check_output_apart(args.out / name, [args.raw, args.labels_src])
    else:
        for split in ("train", "val", "test"):
            check_output_apart(args.out / split, [args.mitoem])


def _run(args: argparse.Namespace, mode: str) -> list[str]:
    check_apart(args, mode)
    voxel_size_nm = args.voxel_size_nm or (MITOEM_VOXEL_SIZE_NM if mode == "mitoem" else None)
    common: dict[str, Any] = {
        "voxel_size_nm": voxel_size_nm,
        "chunks": tuple(args.chunks),
        "overwrite": args.overwrite,
        "progress": sys.stderr.isatty() if args.progress is None else args.progress,
    }
    if mode == "mitoem":
        written = convert_release(args.mitoem, args.out, **common)
        return [_summary(array, path) for path, array in written.items()]
    common["z_range"] = tuple(args.z_range) if args.z_range else None
    if mode == "single":
        out = convert(
            args.src,
            args.dst,
            labels=args.labels,
            dataset=args.dataset,
            binary=args.binary,
            **(_label_options(args) if args.labels else {}),
            **common,
        )
        return [_summary(out, args.dst)]
    check_same_shape(args.raw, args.labels_src, args.raw_dataset, args.labels_dataset)
    outputs = [args.out / "raw.zarr", args.out / "labels.zarr"]
    # One unit: if the labels fail, no raw.zarr is left behind to refuse the rerun.
    with output_unit(outputs, args.overwrite) as (raw_dst, labels_dst):
        arrays = _convert_pair(args, common, voxel_size_nm, raw_dst, labels_dst)
    return [_summary(array, path) for array, path in zip(arrays, outputs, strict=True)]


def _convert_pair(
    args: argparse.Namespace,
    common: dict[str, Any],
    voxel_size_nm: Any,
    raw_dst: Path,
    labels_dst: Path,
) -> tuple[zarr.Array, zarr.Array]:
    """Raw into ``raw_dst``, then labels into ``labels_dst`` (staging paths of the pair)."""
    raw = convert(args.raw, raw_dst, dataset=args.raw_dataset, **common)
    # Labels often carry no metadata: they take the raw's voxel size.
    common["voxel_size_nm"] = voxel_size_nm or raw.attrs.get("voxel_size_nm")
    labels = convert(
        args.labels_src,
        labels_dst,
        labels=True,
        dataset=args.labels_dataset,
        binary=args.binary,
        **_label_options(args),
        **common,
    )
    return raw, labels


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mitoseg-convert``; returns 0 on success, 2 on a bad input volume."""
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = _check_mode(parser, args)
    # A release takes long: its per-array progress is always logged.
    logging.basicConfig(
        level=logging.INFO if args.verbose or mode == "mitoem" else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        lines = _run(args, mode)
    except (VolumeError, UnsafeOutputError, OutputExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
