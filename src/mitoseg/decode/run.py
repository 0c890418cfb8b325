"""Run a decoder on saved probabilities and score the result, in memory or block by block: the
one path of ``mitoseg-segment`` and of the test-time evaluation of ``mitoseg-train`` (numpy,
zarr; never runs a network).

:func:`run_decoder` decodes one probability zarr (writing ``mask.zarr`` / ``instances.zarr`` if
asked) and scores it against labels; :func:`sweep` scores every combination of a parameter grid
and never writes. With ``blockwise=None`` the work happens in this process: mask decoders stream
over z-slabs (memory O(slab x Y x X)), instance decoders hold the volume. With
:class:`BlockwiseOptions` it happens block by block on Dask (:mod:`mitoseg.decode.blockwise`),
for volumes larger than memory; peak memory follows the block, not the volume.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mitoseg import io
from mitoseg.decode.base import Decoder, OutputKind, check_channels, params, with_voxel_size
from mitoseg.decode.masks import decode_slabwise
from mitoseg.evaluate.instance import instance_scores
from mitoseg.evaluate.semantic import Confusion, evaluate_thresholds, semantic_scores


@dataclass(frozen=True)
class DaskOptions:
    """Where blocks run.

    Args:
        address: scheduler of an existing cluster (e.g. ``tcp://host:8786``), whose workers see
            the same paths; None: start a local cluster.
        workers: processes of the local cluster (1 thread each); 0: no Dask, run the blocks one
            by one in this process.
    """

    address: str | None = None
    workers: int = 2


@dataclass(frozen=True)
class BlockwiseOptions:
    """How to decode block by block: the one schema of blockwise options (``blockwise`` of
    ``mitoseg-segment``, ``evaluate.blockwise`` of ``mitoseg-train``).

    Args:
        block_shape: write_roi (z, y, x), rounded up to a multiple of the probabilities' chunks.
        halo: flood context per side of instance decoders (z, y, x); exact when every
            multi-seed component fits in it. Mask decoders use their own exact halo.
        dask: where the blocks run.
    """

    block_shape: tuple[int, int, int] = (64, 512, 512)
    halo: tuple[int, int, int] = (16, 64, 64)
    dask: DaskOptions = field(default_factory=DaskOptions)

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> BlockwiseOptions | None:
        """From a config mapping; None or ``enabled: false`` means in memory."""
        if not options or not options.get("enabled", True):
            return None
        values = {k: v for k, v in options.items() if k != "enabled"}
        dask = DaskOptions(**dict(values.pop("dask", None) or {}))
        shapes = {
            k: tuple(int(x) for x in values.pop(k)) for k in ("block_shape", "halo") if k in values
        }
        if values:
            raise ValueError(f"unknown blockwise options {sorted(values)}")
        return cls(dask=dask, **shapes)  # type: ignore[arg-type]


@dataclass
class DecodeResult:
    """Scores (None without labels), the output written (None when not kept) and, blockwise,
    the run's summary (blocks, voxels, seconds, Mvox/s, stage times, instances)."""

    scores: dict[str, float] | None
    output: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


def output_name(decoder: Decoder) -> str:
    """Base name of the decoded output: ``mask`` or ``instances``."""
    return decoder.kind.value


def voxel_size_of(volume: Any) -> dict[str, Any]:
    """``{"voxel_size_nm": [...]}`` of a volume that has it, else ``{}`` (to pass it on)."""
    voxel_size = dict(getattr(volume, "attrs", {})).get("voxel_size_nm")
    return {} if voxel_size is None else {"voxel_size_nm": list(voxel_size)}


def output_attrs(decoder: Decoder, probs: Any) -> dict[str, Any]:
    """Attributes of a decoded output: axes, kind, the decoder's settings, the voxel size."""
    attrs: dict[str, Any] = {"axes": list(io.AXES), "kind": decoder.kind.value}
    if decoder.kind is OutputKind.MASK:
        attrs["threshold"] = decoder.threshold  # type: ignore[attr-defined]
    else:
        attrs["decoder"] = params(decoder)
    return attrs | voxel_size_of(probs)


@contextmanager
def dask_session(blockwise: BlockwiseOptions | None, client: Any = None) -> Iterator[Any]:
    """``client`` if given, else a Dask client for ``blockwise`` (None in memory, or with
    ``dask.workers=0``)."""
    if client is not None or blockwise is None:
        yield client
        return
    from mitoseg.decode.blockwise import dask_client

    with dask_client(blockwise.dask.address, blockwise.dask.workers) as client:
        yield client


def run_decoder(
    decoder: Decoder,
    probs: str | Path,
    output: str | Path | None = None,
    labels: str | Path | None = None,
    *,
    blockwise: BlockwiseOptions | None = None,
    client: Any = None,
    work_dir: str | Path | None = None,
    progress: bool = False,
    slab: int = 32,
) -> DecodeResult:
    """Decode the probabilities at ``probs``; write ``output`` if given; score against ``labels``.

    Args:
        decoder: any :class:`~mitoseg.decode.base.Decoder`.
        probs: a (C, Z, Y, X) zarr of probabilities (uint8 p x 255, or float in [0, 1]).
        output: where to write the mask (uint8 {0, 1}) or the instances (uint32), chunked like
            ``probs``, atomically; None: not kept.
        labels: a (Z, Y, X) ground-truth zarr (non-zero: foreground, or instance ids), or None.
        blockwise: None in memory, or how to run block by block.
        client: a ``distributed.Client`` for blockwise runs; None: one is started from
            ``blockwise.dask`` for this call.
        work_dir: blockwise scratch space (workers must see it); None: beside the output.
        progress: blockwise progress bars.
        slab: z-slices per read in memory.

    Returns:
        Semantic scores (masks) or instance scores, the output path and the run's summary.
    """
    volume = io.open_volume(probs)
    check_channels(decoder, volume, str(probs))
    decoder = with_voxel_size(decoder, volume.attrs.get("voxel_size_nm"), str(probs))
    label_volume = None if labels is None else io.open_volume(labels)
    if label_volume is not None and tuple(label_volume.shape) != tuple(volume.shape[1:]):
        raise io.VolumeError(
            f"labels {labels} have shape {tuple(label_volume.shape)} but probabilities {probs} "
            f"have (Z, Y, X) {tuple(volume.shape[1:])}"
        )
    if blockwise is None:
        target = None if output is None else Path(output)
        scores = decode_in_memory(decoder, volume, label_volume, target, slab)
        return DecodeResult(scores, target)
    from mitoseg.decode.blockwise.decode import decode_blockwise

    with dask_session(blockwise, client) as active:
        return decode_blockwise(
            decoder, probs, output, labels, block_shape=blockwise.block_shape,
            halo=blockwise.halo, client=active, work_dir=work_dir, progress=progress,
        )  # fmt: skip


def decode_in_memory(
    decoder: Decoder,
    probs: Any,
    labels: Any | None = None,
    output: Path | None = None,
    slab: int = 32,
) -> dict[str, float] | None:
    """Decode array-like ``probs`` (C, Z, Y, X) in this process; write ``output`` (zarr,
    atomically) if given; return the scores against array-like ``labels`` (Z, Y, X) or None.
    The voxel size of a zarr ``probs`` sets the decoder's (its sizes are in nm^3)."""
    voxel_size = dict(getattr(probs, "attrs", {})).get("voxel_size_nm")
    decoder = with_voxel_size(decoder, voxel_size, "the probabilities")
    if decoder.kind is OutputKind.MASK:
        confusion = Confusion()
        with _mask_output(output, decoder, probs) as out:
            for z, mask in decode_slabwise(decoder, probs, out, slab=slab):  # type: ignore[arg-type]
                if labels is not None:
                    confusion += Confusion.from_masks(mask, np.asarray(labels[z]) > 0)
        return semantic_scores(confusion) if labels is not None else None
    instances = decoder(np.asarray(probs))
    if output is not None:
        chunks = tuple(getattr(probs, "chunks", (1, *io.DEFAULT_CHUNKS)))[1:]
        attrs = output_attrs(decoder, probs)
        io.write_volume(output, instances, chunks=chunks, attrs=attrs, overwrite=True)
    if labels is None:
        return None
    return instance_scores(np.asarray(labels), instances, slab=slab)


@contextmanager
def _mask_output(path: Path | None, decoder: Decoder, probs: Any) -> Iterator[Any]:
    """A uint8 (Z, Y, X) zarr shaped like ``probs`` (C, Z, Y, X), renamed to ``path`` only when
    complete; None without a path."""
    if path is None:
        yield None
        return
    with io.atomic_dir(Path(path), overwrite=True) as tmp:
        chunks = tuple(getattr(probs, "chunks", (1, *io.DEFAULT_CHUNKS)))[1:]
        attrs = output_attrs(decoder, probs)
        yield io.create_volume(tmp, probs.shape[1:], "uint8", chunks=chunks, attrs=attrs)


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values in ``grid`` ({parameter: values}), in order."""
    names = list(grid)
    for name in names:
        if isinstance(grid[name], str) or not isinstance(grid[name], Sequence):
            raise ValueError(f"sweep values of '{name}' must be a list, got {grid[name]!r}")
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


def sweep(
    decoder: Decoder,
    grid: Mapping[str, Sequence[Any]],
    probs: str | Path,
    labels: str | Path,
    *,
    blockwise: BlockwiseOptions | None = None,
    client: Any = None,
    work_dir: str | Path | None = None,
    slab: int = 32,
) -> list[dict[str, Any]]:
    """Score ``decoder`` with every combination of ``grid`` on ``probs`` against ``labels``
    (zarr paths), without writing outputs.

    Returns one row per combination: the decoder's parameters, then its scores.
    """
    fields = {f.name for f in dataclasses.fields(decoder)}  # type: ignore[arg-type]
    unknown = set(grid) - fields
    if unknown:
        raise ValueError(
            f"sweep over unknown parameters {sorted(unknown)} of {type(decoder).__name__} "
            f"(it has {sorted(fields)})"
        )
    points = grid_points(grid)
    decoder = with_voxel_size(decoder, io.open_volume(probs).attrs.get("voxel_size_nm"), str(probs))
    if blockwise is None:
        volume, truth = io.open_volume(probs), io.open_volume(labels)
        check_channels(decoder, volume, str(probs))
        if decoder.kind is OutputKind.MASK and set(grid) <= {"threshold"}:
            # One pass over the slabs for every threshold.
            thresholds = [p.get("threshold", decoder.threshold) for p in points]  # type: ignore[attr-defined]
            median = decoder.median_size  # type: ignore[attr-defined]
            scores = evaluate_thresholds(volume, truth, thresholds, median, slab)
            return [{**params(decoder), "threshold": t, **scores[t]} for t in thresholds]
        if decoder.kind is OutputKind.INSTANCES:
            volume, truth = np.asarray(volume), np.asarray(truth)  # read once for every point
    rows = []
    with dask_session(blockwise, client) as active:
        for point in points:
            current = dataclasses.replace(decoder, **point)  # type: ignore[type-var]
            if blockwise is None:
                scores = decode_in_memory(current, volume, truth, slab=slab)
            else:
                scores = run_decoder(
                    current, probs, None, labels, blockwise=blockwise, client=active,
                    work_dir=work_dir,
                ).scores  # fmt: skip
            rows.append({**params(current), **(scores or {})})
    return rows


def best(rows: Sequence[Mapping[str, Any]], metric: str) -> Mapping[str, Any]:
    """The first row with the highest ``metric`` (NaN counts as lowest)."""
    if not rows:
        raise ValueError("no rows to choose from")

    def key(row: Mapping[str, Any]) -> float:
        value = float(row[metric])
        return -np.inf if np.isnan(value) else value

    return max(rows, key=key)
