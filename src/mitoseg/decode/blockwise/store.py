"""Zarr arrays as blocks see them: inputs opened read-only by path, outputs and scratch arrays
opened for writing by path (zarr, numpy only)."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from mitoseg import files, io
from mitoseg.geometry import Box
from mitoseg.io import ome


def _version(path: Path) -> int:
    try:
        return (path / "zarr.json").stat().st_mtime_ns
    except OSError:
        return -1


@functools.lru_cache(maxsize=256)
def _open(path: Path, writable: bool, version: int) -> zarr.Array:
    if not writable:
        return io.open_volume(path)
    array = path / ome.LEVEL0 if ome.is_volume_group(path) else path
    # Blocks write whole chunks: skip zarr's test for empty ones (see create_scratch)
    return zarr.open_array(str(array), mode="r+", config={"write_empty_chunks": True})


def open_array(path: str | Path, writable: bool = False) -> zarr.Array:
    """Level 0 of the volume at ``path`` (or the plain array there), cached per process.

    A block task opens the same few arrays again and again; opening costs about as much as
    reading a small block. The cache key holds the metadata's modification time, so a volume
    written anew at the same path is opened anew.
    """
    path = Path(path)
    return _open(path, writable, _version(path))


def open_writable(path: str | Path) -> zarr.Array:
    """The level-0 array of a volume made by ``io.create_volume``, or a plain array, writable."""
    return open_array(path, writable=True)


def read(path: str | Path, box: Box, channels: slice | None = None) -> np.ndarray:
    """The voxels of ``box`` of the volume at ``path``: (Z, Y, X), or (C', Z, Y, X) with
    ``channels`` selecting from a (C, Z, Y, X) volume."""
    key = box.slices if channels is None else (channels, *box.slices)
    return np.asarray(open_array(path)[key])


def write(
    path: str | Path, box: Box, values: np.ndarray, channels: slice | int | None = None
) -> None:
    """Write ``values`` into ``box`` of the array at ``path`` ((C, Z, Y, X) arrays: into
    ``channels``)."""
    key = box.slices if channels is None else (channels, *box.slices)
    open_writable(path)[key] = values


def create_scratch(
    path: str | Path, shape: Sequence[int], dtype: npt.DTypeLike, chunks: Sequence[int]
) -> zarr.Array:
    """A plain zarr array for intermediate results: Blosc lz4 with byte shuffle, the fastest
    codec on label ids (zstd level 1 on unshuffled uint32 labels took 10x as long to write and
    40x to read). Every chunk is written, empty or not: zarr's test for empty chunks took twice
    as long as writing them (a block of labels: 96 against 36 ms)."""
    dtype = np.dtype(dtype)
    shuffle = "noshuffle" if dtype.itemsize == 1 else "shuffle"
    codec = zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle=shuffle, typesize=dtype.itemsize)
    return zarr.create_array(
        store=str(path),
        shape=tuple(int(s) for s in shape),
        chunks=io.clip_chunks(shape, chunks),
        dtype=dtype,
        fill_value=0,
        compressors=[codec],
        overwrite=True,
        config={"write_empty_chunks": True},
    )


def save_scratch(path: str | Path, values: np.ndarray, chunks: Sequence[int]) -> None:
    """Write ``values`` (non-negative integers) as a new scratch array at ``path``, in the
    smallest unsigned dtype that holds its maximum (a block's local label ids: mostly uint8)."""
    dtype = np.min_scalar_type(int(values.max()) if values.size else 0)
    create_scratch(path, values.shape, dtype, chunks)[...] = values.astype(dtype, copy=False)


@contextmanager
def scratch_dir(near: str | Path) -> Iterator[Path]:
    """A new directory ``.{name}.blockwise-<random>`` beside ``near``, removed on exit."""
    near = Path(near).absolute()
    near.parent.mkdir(parents=True, exist_ok=True)
    path = files.sibling(near, "blockwise")
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def chunks_of(path: str | Path) -> tuple[int, ...]:
    """The (Z, Y, X) chunk shape of a volume (the trailing three axes)."""
    array: Any = open_array(path)
    return tuple(int(c) for c in array.chunks[-3:])
