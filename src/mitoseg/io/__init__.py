"""Volume I/O: open and create zarr volumes, convert slices / TIFF / HDF5 / zarr into zarr.

JSON slice listings are read by :mod:`mitoseg.io.listing`; whole MitoEM releases are found and
converted by :mod:`mitoseg.datasets.mitoem`.

Every volume written is an OME-Zarr group (NGFF 0.5 on zarr v3, see :mod:`mitoseg.io.ome`): the
``(Z, Y, X)`` or ``(C, Z, Y, X)`` array at ``0`` (Blosc zstd) with attributes ``axes``,
``voxel_size_nm``, ``kind`` and ``source``, and a downsampled pyramid at ``1``, ``2``, ... that
napari and neuroglancer open. :func:`open_volume` returns level 0 (or a plain zarr array).
Bad input raises :class:`VolumeError`.
"""

from mitoseg.io.conversion import convert
from mitoseg.io.errors import VolumeError
from mitoseg.io.listing import read_listing
from mitoseg.io.normalize import normalize_labels
from mitoseg.io.sources import check_same_shape, natural_key, open_source, volume_shape
from mitoseg.io.store import (
    AXES,
    DEFAULT_CHUNKS,
    atomic_dir,
    clip_chunks,
    create_volume,
    finalize_volume,
    open_levels,
    open_volume,
    open_volume_writable,
    write_volume,
)

__all__ = [
    "AXES",
    "DEFAULT_CHUNKS",
    "VolumeError",
    "atomic_dir",
    "check_same_shape",
    "clip_chunks",
    "convert",
    "create_volume",
    "finalize_volume",
    "natural_key",
    "normalize_labels",
    "open_levels",
    "open_source",
    "open_volume",
    "open_volume_writable",
    "read_listing",
    "volume_shape",
    "write_volume",
]
