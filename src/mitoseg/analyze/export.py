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
from mitoseg.files import write_atomic

log = logging.getLogger(__name__)

DTYPES = ("uint16", "uint32", "uint64")


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
        overwrite: replace an existing ``dst``; otherwise an existing file is refused.

    Returns:
        The path written.
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
    limit = np.iinfo(dtype).max

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as out:
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
