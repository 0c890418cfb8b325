"""Instance volumes -> the MitoEM challenge submission format (HDF5), streamed (no torch).

The challenge takes one HDF5 file per dataset holding the instance ids of the test slices as one
integer (Z, Y, X) dataset. The volume is copied z-slab by z-slab, so memory stays at one slab
whatever the volume size, and the file appears under its name only when complete.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mitoseg import io
from mitoseg.files import MARKER_ATTR, UnsafeOutputError, write_atomic

log = logging.getLogger(__name__)

DTYPES = ("uint16", "uint32", "uint64")


def check_exported_here(dst: Path) -> None:
    """Refuse to replace ``dst`` unless it is an HDF5 file carrying mitoseg's marker attribute.

    Exports of versions before the marker are refused too: an HDF5 file of instance ids looks
    the same whoever wrote it (the MitoEM ground truth does), so it is kept; remove it yourself.
    """
    try:
        with h5py.File(dst, "r") as existing:
            ours = MARKER_ATTR in existing.attrs
    except OSError:
        ours = False
    if not ours:
        raise UnsafeOutputError(
            f"{dst} was not written by mitoseg-export (not an HDF5 file with the '{MARKER_ATTR}' "
            "attribute): --overwrite replaces only mitoseg's own exports; remove it yourself "
            "or choose another output file"
        )


def export_hdf5(
    instances: Any,
    dst: str | Path,
    *,
    dataset: str = "main",
    dtype: str = "uint32",
    slab: int = 32,
    overwrite: bool = False,
) -> Path:
    """Copy an instance volume into an HDF5 dataset, slab by slab, atomically.

    Args:
        instances: array-like (Z, Y, X) of non-negative integer ids (zarr or numpy).
        dst: the HDF5 file to write.
        dataset: name of the dataset in the file.
        dtype: stored integer type; ids that do not fit raise ValueError before anything is
            renamed into place.
        slab: z-slices copied at a time (memory: slab x Y x X ids).
        overwrite: replace an existing ``dst`` that mitoseg-export wrote (see
            :func:`check_exported_here`); otherwise an existing file is refused.

    Returns:
        The path written; its root carries the attribute :data:`mitoseg.files.MARKER_ATTR`.

    Raises:
        VolumeError: not (Z, Y, X) integer ids, or ``dst`` exists and ``overwrite`` is False.
        UnsafeOutputError: ``overwrite`` would replace a file that mitoseg did not write.
    """
    dst = Path(dst)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if len(instances.shape) != 3 or not np.issubdtype(instances.dtype, np.integer):
        raise io.VolumeError(
            f"expected integer instance ids (Z, Y, X), got {instances.dtype} {instances.shape}"
        )
    if dst.exists() and not overwrite:
        raise io.VolumeError(f"{dst} already exists; pass overwrite=True / --overwrite")
    if dst.exists():
        check_exported_here(dst)
    limit = np.iinfo(dtype).max

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as out:
            out.attrs[MARKER_ATTR] = "written by mitoseg-export"
            chunks = (min(slab, instances.shape[0]), *(min(256, s) for s in instances.shape[1:]))
            data = out.create_dataset(
                dataset, shape=instances.shape, dtype=dtype, chunks=chunks, compression="gzip"
            )
            for z0 in range(0, instances.shape[0], slab):
                block = np.asarray(instances[z0 : z0 + slab])
                if block.size and (block.min() < 0 or block.max() > limit):
                    raise ValueError(
                        f"ids in z {z0}-{z0 + len(block)} range {block.min()}..{block.max()}, "
                        f"outside {dtype}: pass a wider --dtype"
                    )
                data[z0 : z0 + len(block)] = block

    write_atomic(dst, write)
    log.info("wrote %s:%s %s %s", dst, dataset, instances.shape, dtype)
    return dst
