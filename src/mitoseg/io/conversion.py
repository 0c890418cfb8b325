"""Stream an EM volume (slices, TIFF, HDF5, zarr) into a chunked, compressed zarr array."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
from tqdm import tqdm

from mitoseg.files import check_output_apart
from mitoseg.io.containers import TiffPagesSource
from mitoseg.io.errors import VolumeError
from mitoseg.io.label_values import HINT, UNSELECTED_ATTRS, LabelSelection, ValueCounts
from mitoseg.io.normalize import (
    binary_encoding,
    instance_dtype,
    labels_to_grey_slices,
    normalize_labels,
    normalize_raw,
)
from mitoseg.io.slices import SliceFilesSource
from mitoseg.io.source import Source
from mitoseg.io.sources import is_zarr, open_source
from mitoseg.io.store import (
    AXES,
    DEFAULT_CHUNKS,
    atomic_dir,
    clip_chunks,
    create_volume,
    open_volume,
)
from mitoseg.io.voxels import VoxelSize, warn_if_not_stated

logger = logging.getLogger(__name__)

Slabs = list[tuple[int, int]]
Normalizer = Callable[[np.ndarray], np.ndarray]


def _resolve_z_range(z_range: tuple[int, int] | None, source: Source) -> tuple[int, int]:
    depth = source.shape[0]
    if z_range is None:
        return 0, depth
    z0, z1 = (int(z) for z in z_range)
    if not 0 <= z0 < z1 <= depth:
        raise VolumeError(
            f"z_range {tuple(z_range)} is not within [0, {depth}] for {source.path} "
            f"of shape {source.shape}"
        )
    return z0, z1


def _check_voxel_size(voxel_size_nm: Sequence[float]) -> list[float]:
    sizes = [float(v) for v in voxel_size_nm]
    if len(sizes) != 3 or not all(v > 0 for v in sizes):
        raise VolumeError(f"voxel_size_nm must be 3 positive numbers (z, y, x), got {sizes}")
    return sizes


def resolve_voxel_size(
    given: Sequence[float] | None, stated: VoxelSize | None, src: Path
) -> list[float] | None:
    """The voxel size to store: ``given`` (warning when the file states another), else the
    file's; None, with a warning, when neither is known."""
    if given is not None:
        sizes = _check_voxel_size(given)
        warn_if_not_stated(sizes, stated, src, logger)
        return sizes
    if stated is not None and stated.complete is not None:
        logger.info("%s: voxel size %s", src, stated.describe())
        return list(stated.complete)
    partly = f" (it states only {stated.describe()})" if stated is not None else ""
    logger.warning(
        "%s carries no voxel size%s: stored none. Pass --voxel-size-nm Z Y X (voxel_size_nm=) "
        "to store one; training refuses a volume without one unless its data config gives it",
        src, partly,
    )  # fmt: skip
    return None


def _raise_located(
    source: Source, slab: np.ndarray, first_z: int, check: Callable[[np.ndarray], Any], hint: str
) -> None:
    """Re-run ``check`` slice by slice to name the first slice at fault, then raise."""
    for i in range(slab.shape[0]):
        try:
            check(slab[i : i + 1])
        except VolumeError as err:
            where = source.describe(first_z + i)
            raise VolumeError(f"{source.path}, {where}: {err}{hint}") from None
    try:
        check(slab)
    except VolumeError as err:  # only the slab as a whole is at fault (e.g. {0, 1, 255})
        where = f"slices {first_z}..{first_z + slab.shape[0] - 1}"
        raise VolumeError(f"{source.path}, {where}: {err}{hint}") from None


def _fits_uint32(dtype: np.dtype) -> bool:
    return dtype.kind in "bui" and dtype.itemsize <= 4


class _SlabReader:
    """Reads slabs of ``source``, reusing one slab buffer where the source decodes page by page.

    A fresh slab-sized array per slab is freed right after its slab is written, but glibc keeps
    such blocks on the heap (after the first one, its mmap threshold rises above a slab), so RSS
    held more than the slab. Page / slice sources are therefore decoded one slice at a time into
    one buffer of ``depth`` slices. Array sources (HDF5, zarr, 3D TIFF) are read a slab at a
    time: they are often chunked in z, and slice by slice would decode each chunk many times.
    """

    def __init__(self, source: Source, depth: int) -> None:
        self.source, self.depth = source, depth
        self._by_slice = isinstance(source, (TiffPagesSource, SliceFilesSource))
        self._buffer: np.ndarray | None = None

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``[z0, z1)``; may be a view of the buffer, overwritten by the next read."""
        if not self._by_slice or z1 - z0 > self.depth:
            return self.source.read(z0, z1)
        for i, z in enumerate(range(z0, z1)):
            image = self.source.read(z, z + 1)[0]
            if self._buffer is None:  # every slice has the first one's shape and dtype
                self._buffer = np.empty((self.depth, *image.shape), dtype=image.dtype)
            self._buffer[i] = image
        assert self._buffer is not None
        return self._buffer[: z1 - z0]


class _ChunkWriter:
    """Writes slabs into a new, zero-filled ``out`` one chunk at a time, through one buffer.

    Writing a whole slab lets zarr copy and compress up to ``async.concurrency`` chunks at once
    (a contiguous copy of each strided chunk plus its compressed bytes). Here each chunk is
    normalised into one reused contiguous buffer, which zarr encodes without a copy.

    zarr leaves out chunks equal to the fill value, testing each chunk with ``np.array_equal``
    against the broadcast fill value through temporaries of several chunk sizes (10 MiB for a
    2 MiB uint8 chunk). The writer leaves out all-zero chunks itself (fill value 0; floats
    compared by bit pattern, as zarr does) and has zarr write the others unchecked, where zarr
    has ``Array.with_config``; the stored chunks are the same either way.
    """

    def __init__(self, out: zarr.Array) -> None:
        with_config = getattr(out, "with_config", None)  # zarr >= 3.1.6
        self.out = out if with_config is None else with_config({"write_empty_chunks": True})
        self._flat = np.empty(int(np.prod(out.chunks)), dtype=out.dtype)

    def write(self, z0: int, slab: np.ndarray, normalize: Normalizer) -> None:
        """Store ``normalize(part)`` for each chunk-sized ``part`` of ``slab`` at ``z0``."""
        _, step_y, step_x = self.out.chunks
        for y0 in range(0, slab.shape[1], step_y):
            for x0 in range(0, slab.shape[2], step_x):
                part = slab[:, y0 : y0 + step_y, x0 : x0 + step_x]
                block = self._flat[: int(np.prod(part.shape[:3]))].reshape(part.shape[:3])
                block[...] = normalize(part)
                if block.view(np.uint8).any():  # an all-zero chunk is left unwritten
                    self.out[z0 : z0 + block.shape[0], y0 : y0 + step_y, x0 : x0 + step_x] = block


@dataclass(frozen=True)
class _Job:
    """One conversion: read ``source`` slices ``z0 + s`` for ``s`` in ``slabs`` into ``tmp``."""

    source: Source
    tmp: Path
    z0: int
    shape: tuple[int, int, int]
    chunks: tuple[int, ...]
    attrs: dict[str, Any]
    progress: bool
    reader: _SlabReader

    @property
    def slabs(self) -> Slabs:
        step, depth = self.chunks[0], self.shape[0]
        return [(s, min(s + step, depth)) for s in range(0, depth, step)]

    def iterate(self, kind: str) -> Iterable[tuple[int, int]]:
        desc = f"{kind} {self.source.path.name}"
        return tqdm(self.slabs, desc=desc, unit="slab", disable=not self.progress)

    def read(self, s0: int, s1: int) -> np.ndarray:
        """Slices ``z0 + [s0, s1)``, valid until the next read."""
        return self.reader.read(self.z0 + s0, self.z0 + s1)

    def create(self, dtype: npt.DTypeLike, **extra_attrs: Any) -> _ChunkWriter:
        attrs = self.attrs | extra_attrs
        out = create_volume(self.tmp, self.shape, dtype, chunks=self.chunks, attrs=attrs)
        return _ChunkWriter(out)


def _max_label(job: _Job) -> int:
    """Largest label value over the volume (a full extra read; only for 64-bit/float labels)."""
    top = 0
    for s0, s1 in job.slabs:
        peak = job.read(s0, s1).max(initial=0)
        if np.isfinite(peak):  # NaN / inf are reported when the slab is normalised
            top = max(top, int(peak))
    return top


def _write_raw(job: _Job) -> None:
    out: _ChunkWriter | None = None
    low = high = None  # grey range so far, to warn about a constant volume
    for s0, s1 in job.iterate("raw"):
        slab = job.read(s0, s1)
        if out is None and slab.ndim == 4 and slab.shape[-1] > 2:
            logger.warning("%s: raw slices are colour; storing grey luminance", job.source.path)
        try:
            if out is None:  # the stored dtype is known only once a slab is decoded
                dtype = normalize_raw(slab[:1, :1, :1]).dtype
                out = job.create(dtype)
            out.write(s0, slab, normalize_raw)
        except VolumeError:
            _raise_located(job.source, slab, job.z0 + s0, normalize_raw, "")
            raise
        if low is None or low == high:  # values are numbers now: normalize_raw accepted them
            low = slab.min() if low is None else min(low, slab.min())
            high = slab.max() if high is None else max(high, slab.max())
    if low == high:
        logger.warning(
            "raw %s is constant (every voxel %s): training and prediction will refuse it",
            job.source.path,
            low,
        )


def _valid_ids(slab: np.ndarray) -> bool:
    try:
        normalize_labels(slab, binary=False)
    except VolumeError:
        return False
    return True


def _normalized_labels(
    source: Source, slab: np.ndarray, first_z: int, binary: bool, decided: bool
) -> np.ndarray:
    try:
        return normalize_labels(slab, binary=binary)
    except VolumeError:
        hint = ""
        # a mask with other values (anti-aliased, classes, ids) or a float mask with greys
        if (binary and _valid_ids(slab)) or (decided and slab.dtype.kind == "f"):
            hint = "; earlier slices looked like a binary mask" if decided and binary else ""
            hint += f"; {HINT}"
        _raise_located(source, slab, first_z, lambda s: normalize_labels(s, binary=binary), hint)
        raise


def _mask(part: np.ndarray) -> np.ndarray:
    return normalize_labels(part, binary=True)


def _ids(part: np.ndarray) -> np.ndarray:
    return normalize_labels(part, binary=False)


def _write_selection(job: _Job, selection: LabelSelection) -> None:
    """Store the mask of the values ``selection`` picks (class codes, or above a threshold)."""
    if job.source.dtype.kind not in "biuf":
        raise VolumeError(f"labels {job.source.path} have dtype {job.source.dtype}")
    out = job.create(np.uint8, binary=True, **selection.attrs())
    selected = 0

    def apply(part: np.ndarray) -> np.ndarray:
        nonlocal selected
        mask = selection.apply(part)
        selected += np.count_nonzero(mask)
        return mask

    for s0, s1 in job.iterate("labels"):
        slab = job.read(s0, s1)
        grey = labels_to_grey_slices(slab, str(job.source.path), s0) if slab.ndim == 4 else slab
        out.write(s0, grey, apply)
    if not selected:
        logger.warning(
            "labels %s: %s selects no voxel, the mask is empty", job.source.path,
            selection.describe(),
        )  # fmt: skip


def _checks_values(dtype: np.dtype) -> bool:
    """Whether labels of ``dtype`` may be class codes or an anti-aliased mask: 8-bit (grey or
    colour), 1-bit and float images. 16- and 32-bit integers hold instance ids."""
    return dtype.kind in "bf" or dtype.itemsize == 1


def _write_labels(job: _Job, binary: bool | None) -> None:
    decided = binary is None
    counts = ValueCounts() if decided and _checks_values(job.source.dtype) else None
    ids_dtype = np.dtype(np.uint32)
    if binary is not True and not _fits_uint32(job.source.dtype):
        ids_dtype = instance_dtype(_max_label(job))
    out: _ChunkWriter | None = None
    for s0, s1 in job.iterate("labels"):
        slab = job.read(s0, s1)
        if slab.ndim == 4:
            slab = labels_to_grey_slices(slab, str(job.source.path), s0)
        if counts is not None:
            counts.add(slab)
        if binary is None:
            if not slab.any():
                continue  # all background: the array's fill value 0 already holds it
            binary = binary_encoding(slab) is not None
        elif binary and binary_encoding(slab) is None:
            # A mask must be binary over the slab as a whole, not only chunk by chunk: this
            # raises, naming the slice at fault.
            _normalized_labels(job.source, slab, job.z0 + s0, binary, decided)
        if out is None:
            out = job.create(np.uint8 if binary else ids_dtype, binary=binary, **UNSELECTED_ATTRS)
        try:
            out.write(s0, slab, _mask if binary else _ids)
        except VolumeError:
            _normalized_labels(job.source, slab, job.z0 + s0, binary, decided)
            raise
    if counts is not None:  # the whole volume's values, before the array is renamed into place
        counts.check(str(job.source.path))
    if out is None:  # every slice was background
        job.create(np.uint8, binary=True, **UNSELECTED_ATTRS)


def _source_attributes(source: Source) -> dict[str, Any]:
    """The attributes of a zarr source array, to carry over when re-chunking or converting zarr
    to zarr; ``source`` and ``z_range`` (how that array was made) are this conversion's own."""
    array = getattr(source, "_array", None)
    if not isinstance(array, zarr.Array) or not is_zarr(source.path):
        return {}
    return {k: v for k, v in array.attrs.asdict().items() if k not in ("source", "z_range")}


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    labels: bool = False,
    voxel_size_nm: Sequence[float] | None = None,
    dataset: str | None = None,
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
    overwrite: bool = False,
    progress: bool = False,
    z_range: tuple[int, int] | None = None,
    binary: bool | None = None,
    label_values: int | str | Sequence[int | str] | None = None,
    label_threshold: float | None = None,
) -> zarr.Array:
    """Stream an EM volume into a chunked, compressed zarr array at ``dst``.

    Reads one slab of ``chunks[0]`` slices at a time (page / slice sources into one reused
    buffer) and writes it one chunk at a time, so memory is about one slab plus one chunk and
    does not grow with the depth of the volume. The array is built under a temporary name next
    to ``dst`` and renamed at the end: an interrupted conversion leaves no ``dst``.

    Args:
        src: a folder of 2D slices (.png .tif .tiff .jpg, natural file-name order), a JSON
            slice listing (.json, MitoEM style), a multi-page or 3D TIFF, an HDF5 file
            (.h5 .hdf5 .hdf) or a zarr array / group. 16- and 32-bit slices keep their ids.
        dst: directory of the new zarr array.
        labels: store a label volume (see below) instead of raw intensities.
        voxel_size_nm: physical voxel size (z, y, x) in nanometres, stored as an attribute;
            None: the one the file states (TIFF tags, ImageJ / OME metadata, HDF5 / zarr
            attributes, OME-Zarr scales: :mod:`mitoseg.io.voxels`). A size given overrides
            the file's, with a warning when they differ by more than 20 % on an axis. Without
            either, no ``voxel_size_nm`` is stored and a warning names the file.
        dataset: dataset in an HDF5 file / array in a zarr group; None picks the only 3D one.
        chunks: zarr chunk shape (z, y, x), clipped to the volume shape.
        overwrite: replace an existing ``dst`` (only once the new array is complete).
        progress: show a tqdm bar over slabs.
        z_range: convert only slices ``[z0, z1)`` (e.g. (0, 400) of a MitoEM ``im`` folder).
        binary: labels only. None decides from the first slab with foreground: values within
            {0, 255} or {0, 1} make a binary mask. True / False force mask / instance ids.
            With None, 8-bit, 1-bit and float labels whose values look like class codes or an
            anti-aliased mask are refused, showing the values and their voxel counts
            (:meth:`mitoseg.io.label_values.ValueCounts.suspicion`); False stores them as ids.
        label_values: labels only: the values that are foreground (``191``, ``"191,200-210"``
            or a list of values and ranges, :func:`~mitoseg.io.label_values.parse_label_values`);
            the others are background. For class-coded labels.
        label_threshold: labels only: values above it are foreground (an anti-aliased mask).

    Returns:
        The new array, read-only, shape ``(Z, Y, X)``. Raw: uint8 and uint16 are kept, colour
        becomes grey luminance, floats become float32. Labels: a binary mask as uint8 {0, 1};
        instance ids as uint32, or uint64 when larger than 2**32 - 1. Colour label slices
        become one value per pixel first (:func:`mitoseg.io.normalize.labels_to_grey_slices`:
        grey pixels keep their grey, other colours are foreground, opaque alpha is ignored).
        Attributes: ``axes``, ``voxel_size_nm`` (when known), ``kind`` ("raw" or "labels"),
        ``source``; labels add ``binary``, ``label_values`` and ``label_threshold`` (the
        selection applied, None without one); ``z_range`` when given. A zarr source's own
        attributes are kept too (re-chunking loses none), under these.

    Raises:
        VolumeError: bad source, dataset, slice, values, arguments, or ``dst`` exists and
            ``overwrite`` is False. The message names the file, slice and shape at fault.
        UnsafeOutputError: ``dst`` is, lies inside or contains ``src``, or ``overwrite`` would
            replace a ``dst`` that mitoseg did not write.
    """
    src, dst = Path(src), Path(dst)
    check_output_apart(dst, [src])
    if binary is not None and not labels:
        raise VolumeError("binary= applies to labels only (labels=True)")
    selection = LabelSelection.from_options(label_values, label_threshold)
    if selection is not None and not labels:
        raise VolumeError("label_values= / label_threshold= apply to labels only (labels=True)")
    if selection is not None and binary is False:
        raise VolumeError(
            f"{selection.describe()} makes a mask; it cannot be combined with binary=False "
            "(--instances)"
        )
    attrs: dict[str, Any] = {
        "axes": list(AXES),
        "kind": "labels" if labels else "raw",
        "source": str(src),
    }
    if voxel_size_nm is not None:
        _check_voxel_size(voxel_size_nm)  # before reading anything
    with open_source(src, dataset) as source:
        attrs = _source_attributes(source) | attrs  # zarr to zarr keeps every attribute
        voxel = resolve_voxel_size(voxel_size_nm, source.voxel_size, src)
        if voxel is not None:
            attrs["voxel_size_nm"] = voxel
        if 0 in source.shape:
            raise VolumeError(f"{src} is empty: shape {source.shape}")
        z0, z1 = _resolve_z_range(z_range, source)
        if z_range is not None:
            attrs["z_range"] = [z0, z1]
        shape = (z1 - z0, source.shape[1], source.shape[2])
        logger.info("converting %s %s -> %s", src, shape, dst)
        with atomic_dir(dst, overwrite) as tmp:
            clipped = clip_chunks(shape, chunks)
            reader = _SlabReader(source, clipped[0])
            job = _Job(source, tmp, z0, shape, clipped, attrs, progress, reader)
            if labels:
                if selection is not None:
                    _write_selection(job, selection)
                else:
                    _write_labels(job, binary)
            else:
                _write_raw(job)
    return open_volume(dst)
