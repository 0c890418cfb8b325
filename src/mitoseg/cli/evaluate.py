"""``mitoseg-evaluate``: score any segmentation against ground truth, whatever tool made it.

::

    mitoseg-evaluate PRED TRUTH [--out DIR] [--overwrite]
    mitoseg-evaluate pred.h5 truth.tif --pred-dataset seg --out eval/        # any format
    mitoseg-evaluate mask.zarr labels.tif --components --out eval/   # masks as 3D components
    mitoseg-evaluate instances.zarr labels.zarr --probs probs.zarr   # AP ranked by confidence
    mitoseg-evaluate CLASSES.tif truth.tif --pred-label-values 191 --label-threshold 127

PRED and TRUTH are instance ids or masks in any format ``mitoseg-convert`` reads (zarr /
OME-Zarr, TIFF, HDF5, slice folders); non-zarr inputs are converted once into the cache folder
(``--cache-dir``, default :func:`mitoseg.files.cache_dir`: ``$MITOSEG_CACHE``, else
``$XDG_CACHE_HOME/mitoseg`` or ``~/.cache/mitoseg``); inputs are never written to. Both are read
in one streamed pass that keeps only counts (:mod:`mitoseg.evaluate.counts`): z-slabs in this
process, or blocks (``--blockwise``, chosen automatically when a slab would exceed
``--memory-gb``) on Dask (``--dask-workers`` / ``--dask-address``) or here; the scores are
identical.

Instances: AP .5:.95, AP-50, AP-75 (MitoEM's evaluation, with its small / medium / large
breakdown, ``--size-ranges``), accuracy at IoU 0.75, ARE, VOI split / merge, counts, and the
per-object outcome (:mod:`mitoseg.evaluate.objects`). Masks (a volume with one non-zero value,
or ``--masks``): foreground IoU, mean IoU, precision, recall, F1. Every run also has the
foreground (voxel) scores. With ``--out DIR`` it writes, each atomically, ``objects.csv`` (one
row per ground-truth object and per unmatched prediction), ``scores.csv`` (a header and one
row) and ``scores.json`` (scores, inputs and settings; written last).
"""

from __future__ import annotations

import argparse
import csv
import io as stdio
import logging
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from mitoseg import signals
from mitoseg.cli.entry import DEBUG_HINT, command, debugging, exit_interrupted
from mitoseg.datasets.volumes import FileVolumes
from mitoseg.decode.run import BlockwiseOptions, DaskOptions, dask_session
from mitoseg.evaluate import counts as counting
from mitoseg.evaluate.inputs import as_zarr, is_mask, memory_estimate
from mitoseg.evaluate.objects import OBJECT_COLUMNS, object_rows
from mitoseg.evaluate.semantic import format_table
from mitoseg.evaluate.summary import (
    INSTANCE_COLUMNS,
    MASK_COLUMNS,
    SIZE_COLUMNS,
    Evaluation,
    score_counts,
    size_ranges,
)
from mitoseg.files import (
    OutputExistsError,
    cache_dir,
    check_output_apart,
    check_replaceable,
    write_json_atomic,
    write_text_atomic,
)
from mitoseg.io import VolumeError, open_volume
from mitoseg.io.label_values import LabelSelection
from mitoseg.io.sources import is_zarr

log = logging.getLogger(__name__)

OBJECTS_NAME, SCORES_CSV, SCORES_JSON = "objects.csv", "scores.csv", "scores.json"
OUTPUTS = (OBJECTS_NAME, SCORES_CSV, SCORES_JSON)


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV with a header of ``columns``; floats round-trip exact, None as an empty cell."""
    out = stdio.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = [row.get(c) for c in columns]
        writer.writerow(
            ["" if v is None else repr(v) if isinstance(v, float) else v for v in values]
        )
    return out.getvalue()


def check_outputs(out: Path | None, inputs: Sequence[Path | None], overwrite: bool) -> None:
    """Before anything is read: no output is or lies in an input; earlier outputs only with
    ``overwrite``; never a folder where a file goes."""
    if out is None:
        return
    for name in OUTPUTS:
        check_output_apart(out / name, inputs)
        if (out / name).exists() and not overwrite:
            raise OutputExistsError(f"{out / name} already exists; pass --overwrite to replace")
        check_replaceable(out / name, "file")
    if out.exists() and not out.is_dir():
        raise VolumeError(f"--out {out} exists and is not a directory")


@contextmanager
def components_of(
    paths: dict[str, Path], masks: set[str], cache_dir: Path, client: Any, progress: bool
) -> Iterator[dict[str, Path]]:
    """``paths`` with each of ``masks`` replaced by its 26-connected components (a temporary
    zarr in ``cache_dir``, removed afterwards)."""
    from mitoseg.decode.blockwise import connected_components

    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".components-") as tmp:
        out = dict(paths)
        for name in sorted(masks):
            out[name] = Path(tmp) / f"{name}.zarr"
            n = connected_components(paths[name], out[name], client=client, progress=progress)
            log.info("%s %s: %d connected components (26-connected)", name, paths[name], n)
        yield out


def prepare_inputs(args: argparse.Namespace, cache: Path) -> tuple[Path, Path, Path | None]:
    """Truth, prediction and probabilities as zarr paths (converted into ``cache`` if needed),
    of one (Z, Y, X) shape."""
    truth = as_zarr(args.truth, args.truth_dataset, cache, args.label_values, args.label_threshold)
    pred = as_zarr(
        args.pred, args.pred_dataset, cache, args.pred_label_values, args.pred_label_threshold
    )
    shapes = {name: tuple(open_volume(p).shape) for name, p in (("PRED", pred), ("TRUTH", truth))}
    if shapes["PRED"] != shapes["TRUTH"] or len(shapes["PRED"]) != 3:
        raise VolumeError(
            f"PRED {args.pred} has shape {shapes['PRED']} and TRUTH {args.truth} "
            f"{shapes['TRUTH']}: need two (Z, Y, X) volumes of one shape"
        )
    probs = args.probs
    if probs is not None and is_zarr(probs) and args.probs_dataset is not None:
        probs = probs / args.probs_dataset
    elif probs is not None and not is_zarr(probs):
        probs = FileVolumes(str(probs), raw_dataset=args.probs_dataset).prepare(cache).raw
    if probs is not None:
        counting.check_probs(open_volume(probs), shapes["PRED"], str(args.probs))
    return truth, pred, probs


def count(
    args: argparse.Namespace, paths: dict[str, Path], probs: Path | None, cache: Path
) -> tuple[counting.EvaluationCounts, bool, bool]:
    """The counts of one pass, whether the inputs are scored as masks, and whether the pass
    was blockwise (asked, or the in-memory pass would need more than ``--memory-gb``)."""
    dask = DaskOptions(args.dask_address, args.dask_workers)
    options = BlockwiseOptions(block_shape=tuple(args.block_shape), dask=dask)
    estimate = memory_estimate(paths["truth"], paths["pred"], probs, args.slab)
    blockwise = args.blockwise or estimate > args.memory_gb * 2**30
    with ExitStack() as stack:
        client = stack.enter_context(
            dask_session(options if blockwise or args.components else None)
        )
        mask_inputs = {name for name, path in paths.items() if not args.masks and is_mask(path)}
        if args.components:
            paths = stack.enter_context(
                components_of(paths, mask_inputs, cache, client, args.verbose)
            )
        masks = args.masks or (bool(mask_inputs) and not args.components)
        if masks and probs is not None:
            log.warning("masks are scored without a ranking: --probs %s is not used", args.probs)
            probs = None
        if blockwise:
            log.info("blockwise: %.1f GB over --memory-gb or --blockwise", estimate / 2**30)
            counts = counting.count_blocks(
                paths["truth"], paths["pred"], probs, options.block_shape, client, args.verbose
            )
        else:
            truth_v, pred_v = open_volume(paths["truth"]), open_volume(paths["pred"])
            probs_v = None if probs is None else open_volume(probs)
            counts = counting.count_slabs(truth_v, pred_v, probs_v, args.slab)
    return counts, masks, blockwise


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Score ``args.pred`` against ``args.truth`` and write the outputs; returns the result."""
    for pair in (
        (args.label_values, args.label_threshold),
        (args.pred_label_values, args.pred_label_threshold),
    ):
        LabelSelection.from_options(*pair)  # a bad option fails before any reading
    ranges = size_ranges(args.size_ranges)
    if not 0.0 < args.match_iou <= 1.0:
        raise ValueError(f"--match-iou must be in (0, 1], got {args.match_iou}")
    check_outputs(args.out, [args.pred, args.truth, args.probs], args.overwrite)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    truth, pred, probs = prepare_inputs(args, cache)
    counts, masks, blockwise = count(args, {"truth": truth, "pred": pred}, probs, cache)
    confidence = None
    if probs is not None and not masks:
        confidence = counts.confidence(counting.probability_unit(open_volume(probs)))
    result = score_counts(
        counts.overlaps, masks=masks, ranges=ranges, match_iou=args.match_iou, confidence=confidence
    )
    summary = describe(args, result, ranges, blockwise, masks)
    if args.out is not None:
        write_outputs(args.out, summary, result, counts, confidence)
    return summary


def describe(
    args: argparse.Namespace, result: Evaluation, ranges: dict, blockwise: bool, masks: bool
) -> dict[str, Any]:
    """scores.json: the scores with the inputs and settings that made them."""
    return {
        "pred": str(args.pred),
        "truth": str(args.truth),
        "probs": None if args.probs is None else str(args.probs),
        "mode": "masks" if masks else "instances",
        "components": bool(args.components),
        "ranking": "size" if args.probs is None or masks else "mean foreground probability",
        "size_ranges_voxels": {
            k: [lo, hi if hi != float("inf") else None] for k, (lo, hi) in ranges.items()
        },
        "match_iou": args.match_iou,
        "blockwise": blockwise,
        "label_values": args.label_values,
        "label_threshold": args.label_threshold,
        "pred_label_values": args.pred_label_values,
        "pred_label_threshold": args.pred_label_threshold,
        "scores": result.scores,
    }


def write_outputs(
    out: Path,
    summary: dict[str, Any],
    result: Evaluation,
    counts: counting.EvaluationCounts,
    confidence: dict[int, float] | None,
) -> None:
    """objects.csv (instances only), scores.csv, then scores.json."""
    out.mkdir(parents=True, exist_ok=True)
    if result.errors is not None:
        rows = object_rows(result.errors, counts.truth, counts.pred, confidence)
        write_text_atomic(out / OBJECTS_NAME, csv_text(rows, OBJECT_COLUMNS))
    else:
        (out / OBJECTS_NAME).unlink(missing_ok=True)  # never a stale table beside new scores
    scores = result.scores
    write_text_atomic(out / SCORES_CSV, csv_text([scores], list(scores)))
    write_json_atomic(out / SCORES_JSON, summary)


def report_lines(summary: dict[str, Any], out: Path | None) -> list[str]:
    """The report printed at the end."""
    scores = summary["scores"]
    lines = [f"{summary['pred']} against {summary['truth']} ({summary['mode']})"]
    if summary["mode"] == "masks":
        lines.append(format_table([{k: scores[k] for k in MASK_COLUMNS}]))
    else:
        lines.append(
            f"{scores['n_truth']:.0f} ground-truth objects, {scores['n_pred']:.0f} predicted; "
            f"AP ranked by {summary['ranking']}"
        )
        lines.append(format_table([{k: scores[k] for k in INSTANCE_COLUMNS}]))
        sizes = [
            {"size": name, **{k: scores[f"{k}_{name}"] for k in SIZE_COLUMNS}}
            for name in summary["size_ranges_voxels"]
        ]
        lines.append(format_table(sizes))
        lines.append(f"foreground IoU {scores['fg_iou']:.4f}")
        outcome = ", ".join(
            f"{scores[f'truth_{k}']:.0f} {k}"
            for k in ("matched", "split", "merged", "partial", "missed")
        )
        extra = ", ".join(
            f"{scores[f'pred_{k}']:.0f} {k.replace('_', ' ')}"
            for k in ("fragment", "merged", "partial", "false_positive")
        )
        lines.append(f"ground truth at IoU {summary['match_iou']:g}: {outcome}")
        lines.append(f"unmatched predictions: {extra}")
    if out is None:
        lines.append("nothing written (pass --out DIR for scores.json, scores.csv, objects.csv)")
    else:
        written = [n for n in OUTPUTS if summary["mode"] == "instances" or n != OBJECTS_NAME]
        lines.append(f"wrote {', '.join(str(out / n) for n in written)}")
    return lines


def _label_options(p: argparse.ArgumentParser, prefix: str, what: str) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        f"--{prefix}label-values",
        metavar="V",
        help=f"{what} holds class codes: these values are the foreground, e.g. 191 or "
        "191,200-210 (default: refuse labels that look like class codes)",
    )
    which.add_argument(
        f"--{prefix}label-threshold",
        type=float,
        metavar="T",
        help=f"{what} is an anti-aliased mask: values > T are the foreground",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mitoseg-evaluate``."""
    p = argparse.ArgumentParser(
        prog="mitoseg-evaluate",
        description="Score a segmentation (instance ids or a mask, from any tool) against ground "
        "truth: MitoEM's AP, accuracy at IoU 0.75, ARE, VOI and what happened to each object; "
        "foreground IoU, precision, recall, F1 for masks.",
    )
    p.add_argument("pred", type=Path, help="prediction: zarr, TIFF, HDF5 or a slice folder")
    p.add_argument("truth", type=Path, help="ground truth, in any of those formats")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="write scores.json, scores.csv, objects.csv here"
    )
    p.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier run")
    p.add_argument("--pred-dataset", metavar="KEY", help="dataset of PRED in an HDF5 / zarr group")
    p.add_argument("--truth-dataset", metavar="KEY", help="dataset of TRUTH in HDF5 / zarr")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--masks", action="store_true", help="score both as masks (non-zero = foreground)"
    )
    how.add_argument(
        "--components",
        action="store_true",
        help="score a mask input as instances: its 26-connected components",
    )
    p.add_argument(
        "--probs",
        type=Path,
        help="probabilities (C, Z, Y, X) of the prediction: each predicted object's mean "
        "foreground probability (channel 0) ranks it for AP instead of its size",
    )
    p.add_argument("--probs-dataset", metavar="KEY", help="dataset of --probs in an HDF5 file")
    p.add_argument(
        "--size-ranges",
        type=float,
        nargs=2,
        metavar=("SMALL", "MEDIUM"),
        help="upper sizes in voxels of small and medium ground truth for the AP breakdown "
        "(default MitoEM's: 5000 15000)",
    )
    p.add_argument(
        "--match-iou",
        type=float,
        default=0.75,
        metavar="IOU",
        help="IoU of a match in the per-object table (default 0.75, as accuracy75)",
    )
    _label_options(p, "", "TRUTH")
    _label_options(p, "pred-", "PRED")
    p.add_argument(
        "--blockwise",
        action="store_true",
        help="read blocks instead of whole z-slabs (automatic above --memory-gb)",
    )
    p.add_argument(
        "--memory-gb",
        type=float,
        default=4.0,
        metavar="GB",
        help="go blockwise when a z-slab pass would need more (default 4)",
    )
    p.add_argument(
        "--block-shape",
        type=int,
        nargs=3,
        default=(64, 512, 512),
        metavar=("Z", "Y", "X"),
        help="blocks of the blockwise pass (default 64 512 512)",
    )
    p.add_argument("--slab", type=int, default=32, metavar="N", help="z-slices per slab read")
    p.add_argument(
        "--dask-workers",
        type=int,
        default=0,
        metavar="N",
        help="blockwise on a local Dask cluster of N processes (default 0: in this process)",
    )
    p.add_argument("--dask-address", metavar="ADDRESS", help="an existing Dask scheduler")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where non-zarr inputs are converted once (default $MITOSEG_CACHE, else "
        "$XDG_CACHE_HOME/mitoseg or ~/.cache/mitoseg)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


class _NoVoxelSizeNote(logging.Filter):
    """Scores need no voxel size: drop the conversion's warning that a file states none."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "carries no voxel size" not in str(record.msg)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mitoseg-evaluate``: 0 on success, 2 on bad input (one line); after
    SIGTERM / SIGINT it says how to rerun and exits 143 / 130."""
    args = build_parser().parse_args(argv)
    if args.cache_dir is None:
        args.cache_dir = str(cache_dir())
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # for this command only: a caller's later conversions (in the same process) still warn
    conversion_log, note = logging.getLogger("mitoseg.io.conversion"), _NoVoxelSizeNote()
    conversion_log.addFilter(note)
    try:
        with signals.handled():
            summary = evaluate(args)
    except signals.Interrupted as stop:
        again = command("mitoseg-evaluate", sys.argv[1:] if argv is None else argv)
        stop.hint = f"outputs are renamed into place only when whole; rerun: {again}"
        exit_interrupted("mitoseg-evaluate", stop)
    except (ValueError, FileExistsError, FileNotFoundError) as err:  # VolumeError is a ValueError
        if debugging():
            raise
        print(f"mitoseg-evaluate: error: {err} ({DEBUG_HINT})", file=sys.stderr)
        return 2
    finally:
        conversion_log.removeFilter(note)
    print("\n".join(report_lines(summary, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
