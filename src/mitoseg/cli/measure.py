"""``mitoseg-measure``: an instance volume -> one table row per mitochondrion, and a summary.

::

    mitoseg-measure INSTANCES.zarr --out DIR [--voxel-size-nm Z Y X] [--slab N]
                    [--min-voxels N] [--overwrite]
    mitoseg-measure MASK.zarr --components --out DIR [--dask-workers N | --dask-address A]
    mitoseg-measure CLASSES.zarr --label-values 191 --out DIR    # or --label-threshold 127

Writes, each atomically (temporary name, then rename), into DIR:

- ``objects.csv``: the columns of :data:`mitoseg.analyze.measure.COLUMNS`, units in the names;
- ``objects.parquet``: the same table, when ``pyarrow`` is installed (``mitoseg[parquet]``);
- ``volume_histogram.png``: the distribution of object volumes in um^3;
- ``summary.json``: count, density per um^3, volume statistics and the histogram (written last);
- ``components.zarr`` (``--components``): the mask's 26-connected components, uint32.

The voxel size comes from ``--voxel-size-nm`` or else the array's ``voxel_size_nm`` attribute.
DIR may hold other files (e.g. the instances themselves); only these outputs are refused unless
``--overwrite``, and ``--overwrite`` replaces them only where ``mitoseg-measure`` wrote them
(a ``.mitoseg-measure`` file in DIR, written before the outputs; DIR of an earlier version
counts by its ``summary.json``). DIR may not be, or lie inside, the input.
"""

from __future__ import annotations

import argparse
import csv
import io as stdio
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mitoseg import signals
from mitoseg.analyze import measure
from mitoseg.cli.entry import command, exit_interrupted
from mitoseg.decode.blockwise import connected_components, dask_client
from mitoseg.files import (
    UnsafeOutputError,
    check_output_apart,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from mitoseg.io import VolumeError, convert, open_volume
from mitoseg.io.checks import check_label_values
from mitoseg.io.label_values import LabelSelection

logger = logging.getLogger(__name__)

CSV_NAME = "objects.csv"
PARQUET_NAME = "objects.parquet"
PNG_NAME = "volume_histogram.png"
SUMMARY_NAME = "summary.json"
COMPONENTS_NAME = "components.zarr"
OUTPUTS = (CSV_NAME, PARQUET_NAME, PNG_NAME, SUMMARY_NAME, COMPONENTS_NAME)
MARKER_NAME = ".mitoseg-measure"  # DIR's outputs were written by mitoseg-measure


def table_csv(table: dict[str, np.ndarray]) -> str:
    """CSV text of a table of :func:`mitoseg.analyze.measure.measure_objects`: a header of
    ``COLUMNS``, integers as integers, floats round-trip exact, booleans ``true`` / ``false``."""
    out = stdio.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(measure.COLUMNS)
    columns = [table[name].tolist() for name in measure.COLUMNS]
    for row in zip(*columns, strict=True):
        writer.writerow(["true" if v is True else "false" if v is False else repr(v) for v in row])
    return out.getvalue()


def write_parquet(table: dict[str, np.ndarray], path: Path) -> bool:
    """Write the table as Parquet when ``pyarrow`` imports; returns whether it was written."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        logger.info("pyarrow is not installed: %s skipped (pip install mitoseg[parquet])", path)
        return False
    arrow = pa.table({name: table[name] for name in measure.COLUMNS})
    write_atomic(path, lambda tmp: pq.write_table(arrow, str(tmp)))
    return True


def write_histogram_png(summary: dict[str, Any], path: Path, title: str) -> Path:
    """Bar plot of ``summary["histogram"]`` (object volumes in um^3), log x when log-spaced."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    hist = summary["histogram"]
    edges, counts = np.asarray(hist["volume_um3_edges"]), np.asarray(hist["counts"])
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if counts.size:
        ax.stairs(counts, edges, fill=True)
        if hist["log_scale"]:
            ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no objects", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("object volume (um^3)")
    ax.set_ylabel("objects")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{title}: {summary['count']} objects, {summary['density_per_um3']:.3g} / um^3")
    fig.tight_layout()
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def resolve_voxel_size(given: Sequence[float] | None, attrs: Any, source: Path) -> np.ndarray:
    """The voxel size given on the command line, else the ``voxel_size_nm`` attribute."""
    stored = attrs.get("voxel_size_nm")
    if given is not None:
        size = measure.check_voxel_size(given, "--voxel-size-nm")
        if stored is not None and not np.allclose(np.asarray(stored, dtype=float), size):
            logger.warning("%s: --voxel-size-nm %s overrides stored %s", source, size, stored)
        return size
    if stored is None:
        raise measure.MeasureError(
            f"{source} has no 'voxel_size_nm' attribute: pass --voxel-size-nm Z Y X"
        )
    return measure.check_voxel_size(stored, f"{source} attribute 'voxel_size_nm'")


def _measured_here(out: Path) -> bool:
    """Whether the outputs in ``out`` are mitoseg-measure's: its marker, or the summary.json of
    a version from before the marker."""
    if (out / MARKER_NAME).is_file():
        return True
    try:
        summary = json.loads((out / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and {"labels", "min_voxels", "count"} <= summary.keys()


def check_out(out: Path, overwrite: bool, labels_path: Path | None = None) -> None:
    """Refuse outputs of an earlier run in ``out`` unless ``overwrite``, files of that name that
    mitoseg-measure did not write even then, and outputs inside the input ``labels_path``."""
    for name in OUTPUTS:  # DIR may hold the input, but no output may be, or be in, the input
        check_output_apart(out / name, [labels_path])
    if out.exists() and not out.is_dir():
        raise measure.MeasureError(f"--out {out} exists and is not a directory")
    found = [name for name in OUTPUTS if (out / name).exists()]
    if found and not overwrite:
        raise measure.MeasureError(f"{out} already holds {found}; pass --overwrite to replace")
    if found and not _measured_here(out):
        raise UnsafeOutputError(
            f"{out} holds {found} that mitoseg-measure did not write (no {MARKER_NAME} file "
            f"there): --overwrite replaces only its own outputs; choose another --out"
        )


def run(
    labels_path: Path,
    out: Path,
    *,
    voxel_size_nm: Sequence[float] | None = None,
    slab: int | None = None,
    min_voxels: int = 1,
    overwrite: bool = False,
    components: bool = False,
    dask_workers: int = 0,
    dask_address: str | None = None,
    label_values: str | None = None,
    label_threshold: float | None = None,
) -> dict[str, Any]:
    """Measure ``labels_path`` and write the outputs into ``out``; returns the summary.

    With ``components`` the input is a mask (e.g. a semantic prediction): its 26-connected
    components, labelled block by block (exactly as in memory; on Dask with ``dask_workers``
    or ``dask_address``) into ``out/components.zarr``, are the objects. ``label_values`` /
    ``label_threshold`` select a mask from class codes or an anti-aliased mask (as
    ``mitoseg-convert``); its components are the objects. Without them, labels whose values
    look like either are refused (:func:`mitoseg.io.checks.check_label_values`).
    """
    selection = LabelSelection.from_options(label_values, label_threshold)
    check_out(out, overwrite, labels_path)
    labels = open_volume(labels_path)
    if labels.ndim != 3:
        raise measure.MeasureError(f"{labels_path}: need a (Z, Y, X) array, got {labels.shape}")
    size = resolve_voxel_size(voxel_size_nm, labels.attrs, labels_path)
    if selection is None:
        check_label_values(labels_path)
    out.mkdir(parents=True, exist_ok=True)  # the selected mask is made in a folder in it
    write_text_atomic(out / MARKER_NAME, "outputs of mitoseg-measure\n")
    if components or selection is not None:
        target = out / COMPONENTS_NAME
        with (
            tempfile.TemporaryDirectory(dir=out, prefix=".selected-") as tmp,
            dask_client(dask_address, dask_workers) as client,
        ):
            mask = labels_path
            if selection is not None:  # the selected values as a mask, then its components
                mask = Path(tmp) / "mask.zarr"
                options = {"label_values": label_values, "label_threshold": label_threshold}
                convert(labels_path, mask, labels=True, voxel_size_nm=tuple(size), **options)
            connected_components(mask, target, connectivity=26, client=client, overwrite=True)
        labels = open_volume(target)
    if slab is not None and slab < 1:
        raise measure.MeasureError(f"--slab must be >= 1, got {slab}")
    block = None if slab is None else (slab, *labels.shape[1:])
    table = measure.measure_objects(labels, size, block=block, min_voxels=min_voxels)
    summary = measure.summarize(table, labels.shape, size)
    summary |= {"labels": str(labels_path), "min_voxels": int(min_voxels)}
    if selection is not None:
        summary |= selection.attrs()
    write_text_atomic(out / CSV_NAME, table_csv(table))
    summary["parquet"] = write_parquet(table, out / PARQUET_NAME)
    if not summary["parquet"]:
        (out / PARQUET_NAME).unlink(missing_ok=True)  # never leave a stale table beside the csv
    write_histogram_png(summary, out / PNG_NAME, labels_path.name)
    write_json_atomic(out / SUMMARY_NAME, summary)
    return summary


def report_lines(summary: dict[str, Any], out: Path) -> list[str]:
    """The short report printed at the end."""
    zyx = " x ".join(str(s) for s in summary["shape"])
    nm = " x ".join(f"{v:g}" for v in summary["voxel_size_nm"])
    lines = [
        f"{summary['count']} objects in {summary['labels']} ({zyx} voxels of {nm} nm, "
        f"{summary['dataset_volume_um3']:.4g} um^3)",
        f"density {summary['density_per_um3']:.4g} / um^3, {summary['voxel_fraction']:.2%} of "
        f"voxels, {summary['touching_border']} touching the border",
    ]
    if summary["count"]:
        lines.append(
            f"volume (um^3): mean {summary['mean_volume_um3']:.4g}, median "
            f"{summary['median_volume_um3']:.4g}, total {summary['total_volume_um3']:.4g}"
        )
    written = [n for n in OUTPUTS if n != PARQUET_NAME or summary["parquet"]]
    skipped = "" if summary["parquet"] else f" ({PARQUET_NAME} skipped: pyarrow not installed)"
    return [*lines, f"wrote {', '.join(str(out / n) for n in written)}{skipped}"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mitoseg-measure``."""
    p = argparse.ArgumentParser(
        prog="mitoseg-measure",
        description="Measure every mitochondrion of an instance volume (uint32 zarr, 0 = "
        "background): a CSV (and Parquet) table, a summary JSON and a volume histogram PNG.",
    )
    p.add_argument("labels", type=Path, help="instance volume, a (Z, Y, X) zarr array")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--voxel-size-nm",
        type=float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="voxel size in nm (default: the array's voxel_size_nm attribute)",
    )
    p.add_argument(
        "--slab",
        type=int,
        metavar="N",
        help="z-slices per block of the first pass (default: blocks of the storage chunks)",
    )
    p.add_argument("--min-voxels", type=int, default=1, metavar="N", help="skip smaller objects")
    p.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier run")
    p.add_argument(
        "--components",
        action="store_true",
        help="the input is a mask (e.g. mask.zarr of a semantic model): measure its "
        "26-connected components",
    )
    p.add_argument(
        "--dask-workers",
        type=int,
        default=0,
        metavar="N",
        help="with --components: label on a local Dask cluster of N worker processes "
        "(default 0: block by block in this process)",
    )
    p.add_argument(
        "--dask-address",
        metavar="ADDRESS",
        help="with --components: the scheduler of an existing Dask cluster (tcp://host:8786)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--label-values",
        metavar="V",
        help="the input holds class codes: measure the 26-connected components of these "
        "values, e.g. 191 or 191,200-210 (default: refuse labels that look like class codes)",
    )
    which.add_argument(
        "--label-threshold",
        type=float,
        metavar="T",
        help="the input is an anti-aliased mask: measure the components of values > T",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def resume_hint(args: argparse.Namespace, argv: list[str]) -> str:
    """After a signal: the command to run again (with ``--overwrite`` once outputs exist)."""
    again = [*argv]
    if any((args.out / name).exists() for name in OUTPUTS) and "--overwrite" not in argv:
        again.append("--overwrite")  # the outputs written before the signal are in the way
    rerun = command("mitoseg-measure", again)
    return f"outputs are renamed into place only when whole; rerun: {rerun}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mitoseg-measure``; returns 0 on success, 2 on bad input; after SIGTERM /
    SIGINT it says how to rerun and exits 143 / 130."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        with signals.handled():
            summary = run(
                args.labels,
                args.out,
                voxel_size_nm=args.voxel_size_nm,
                slab=args.slab,
                min_voxels=args.min_voxels,
                overwrite=args.overwrite,
                components=args.components,
                dask_workers=args.dask_workers,
                dask_address=args.dask_address,
                label_values=args.label_values,
                label_threshold=args.label_threshold,
            )
    except signals.Interrupted as stop:
        stop.hint = resume_hint(args, sys.argv[1:] if argv is None else argv)
        exit_interrupted("mitoseg-measure", stop)
    except (VolumeError, measure.MeasureError, UnsafeOutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(report_lines(summary, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
