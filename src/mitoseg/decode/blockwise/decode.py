"""Decode saved probabilities and score them block by block: the blockwise path of
:func:`mitoseg.decode.run.run_decoder` (numpy, zarr; never runs a network).

Mask decoders (``kind`` mask, e.g. :class:`~mitoseg.decode.masks.BinarizeMedian`) are exact:
each block reads the decoder's own ``halo``, and at volume borders reflects like the
whole-volume filter. Instance decoders run as :mod:`.watershed` describes. Outputs have the
in-memory path's format and attributes and are built under a temporary name, then renamed. Peak
memory of a task depends on the block shape and halo, not on the volume.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from mitoseg import io
from mitoseg.decode.base import OutputKind, check_channels
from mitoseg.decode.blockwise import store
from mitoseg.decode.blockwise.cluster import RunLog, pyramid_fill, run_blocks
from mitoseg.decode.blockwise.watershed import decode_instances
from mitoseg.decode.run import DecodeResult, output_attrs
from mitoseg.evaluate.blockwise import blockwise_overlaps
from mitoseg.evaluate.instance import scores_from_overlaps
from mitoseg.evaluate.semantic import Confusion, semantic_scores
from mitoseg.geometry import Block, BlockGrid, block_grid, local_slices

log = logging.getLogger(__name__)


def semantic_task(
    block: Block, probs: str, output: str | None, labels: str | None, decoder: Any
) -> Confusion | None:
    """Decode one block of a semantic decoder; its confusion against ``labels`` if given."""
    mask = decoder(store.read(probs, block.read_roi, slice(0, 1)))
    mask = mask[local_slices(block.write_roi, block.read_roi)]
    if output is not None:
        store.write(output, block.write_roi, mask.astype(np.uint8))
    if labels is None:
        return None
    return Confusion.from_masks(mask, store.read(labels, block.write_roi) != 0)


def _semantic(
    decoder: Any,
    probs: str,
    output: Path,
    labels: str | None,
    grid: BlockGrid,
    client: Any,
    run_log: RunLog,
    progress: bool,
) -> Confusion | None:
    """Decode every block of a semantic decoder into ``output``; the summed confusion."""
    parts = run_blocks(
        client, "decode", semantic_task, list(grid), probs, str(output), labels, decoder,
        run_log=run_log, progress=progress,
    )  # fmt: skip
    return None if labels is None else sum(parts, Confusion())


def _grid(decoder: Any, shape: Any, block_shape: Any, halo: Any, chunks: Any) -> BlockGrid:
    if decoder.halo is not None:
        halo = decoder.halo  # the decoder's exact reach
    return block_grid(shape, block_shape, halo, chunks)


def decode_blockwise(
    decoder: Any,
    probs: str | Path,
    output: str | Path | None = None,
    labels: str | Path | None = None,
    *,
    block_shape: Any = (64, 512, 512),
    halo: Any = (16, 64, 64),
    client: Any = None,
    work_dir: str | Path | None = None,
    progress: bool = True,
) -> DecodeResult:
    """Decode ``probs`` block by block; write ``output`` if given; score against ``labels``.

    Args:
        decoder: BinarizeMedian, BCWatershed, AffinityWatershed or ACWatershed.
        probs: path of a (C, Z, Y, X) zarr of probabilities (uint8 or float in [0, 1]).
        output: where to write ``mask.zarr`` (uint8) / ``instances.zarr`` (uint32), chunked
            like ``probs``; None: not kept.
        labels: path of a (Z, Y, X) ground-truth zarr, or None.
        block_shape: write_roi shape, rounded up to a multiple of the chunks of ``probs``.
        halo: flood context of instance decoders (semantic decoders use their exact halo).
        client: a ``distributed.Client`` or None (in this process).
        work_dir: where scratch arrays go (removed at the end; workers must see it); None:
            beside ``output``, or beside ``probs`` without an output.

    Returns:
        Scores (semantic, or instance as ``mitoseg.evaluate.instance.scores_from_overlaps``), the
        output path and a summary.
    """
    probs = str(Path(probs).absolute())
    labels = None if labels is None else str(Path(labels).absolute())
    volume = store.open_array(probs)
    check_channels(decoder, volume, probs)
    if labels is not None and tuple(store.open_array(labels).shape) != tuple(volume.shape[1:]):
        shape = tuple(store.open_array(labels).shape)
        raise io.VolumeError(f"labels {labels} have shape {shape}, probs {tuple(volume.shape)}")
    chunks = tuple(int(c) for c in volume.chunks[1:])
    grid = _grid(decoder, volume.shape[1:], block_shape, halo, chunks)
    run_log = RunLog()
    target = Path(output).absolute() if output is not None else None
    near = Path(work_dir or (target or Path(probs)).parent).absolute() / decoder.kind.value
    with store.scratch_dir(near) as scratch:
        where = target or scratch / f"{decoder.kind.value}.zarr"
        with io.atomic_dir(where, True, pyramid_fill(client, grid.block_shape)) as tmp:
            attrs = output_attrs(decoder, volume)
            dtype = np.uint8 if decoder.kind is OutputKind.MASK else np.uint32
            io.create_volume(tmp, grid.total_roi.shape, dtype, chunks=chunks, attrs=attrs)
            job = (decoder, probs, tmp, labels, grid, client, run_log, progress)
            if decoder.kind is OutputKind.MASK:
                confusion, n = _semantic(*job), None
            else:
                n = decode_instances(
                    decoder, probs, tmp, grid, scratch / "work", chunks, client, run_log, progress
                )
        if decoder.kind is OutputKind.MASK:
            scores = None if confusion is None else semantic_scores(confusion)
        elif labels is not None:
            ov = blockwise_overlaps(labels, where, grid.block_shape, client, run_log, progress)
            scores = scores_from_overlaps(ov)
        else:
            scores = None
    summary = run_log.summary() | ({} if n is None else {"instances": n})
    log.info(
        "blockwise %s: %d blocks, %.1f Mvox in %.1f s (%.1f Mvox/s)%s",
        type(decoder).__name__, summary["blocks"], summary["voxels"] / 1e6, summary["seconds"],
        summary["mvox_per_s"], "" if n is None else f", {n} instances",
    )  # fmt: skip
    return DecodeResult(scores, target, summary)
