"""Readers that stream EM volumes slab by slab from slice folders, TIFF, HDF5 and zarr.

:func:`open_source` picks the reader for a path: :mod:`mitoseg.io.slices` (a folder of 2D
slices), :mod:`mitoseg.io.listing` (a JSON slice listing) or :mod:`mitoseg.io.containers`
(TIFF, HDF5, zarr). The reader classes stay importable from here.
"""

from __future__ import annotations

from pathlib import Path

from mitoseg.io.containers import ArraySource, TiffPagesSource, _open_hdf5, _open_tiff, _open_zarr
from mitoseg.io.errors import VolumeError
from mitoseg.io.listing import open_listing
from mitoseg.io.slices import (
    SLICE_SUFFIXES,
    TIFF_SUFFIXES,
    FolderSource,
    SliceFilesSource,
    natural_key,
)
from mitoseg.io.source import Source
from mitoseg.io.voxels import VoxelSize

__all__ = [
    "HDF5_SUFFIXES",
    "LISTING_SUFFIX",
    "SLICE_SUFFIXES",
    "TIFF_SUFFIXES",
    "ArraySource",
    "FolderSource",
    "SliceFilesSource",
    "Source",
    "TiffPagesSource",
    "check_same_shape",
    "is_zarr",
    "natural_key",
    "open_source",
    "read_voxel_size",
    "volume_shape",
]

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
LISTING_SUFFIX = ".json"
_NO_DATASETS = (*TIFF_SUFFIXES, LISTING_SUFFIX)
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


def is_zarr(path: Path) -> bool:
    """True for a directory holding zarr (v2 or v3) metadata."""
    return path.is_dir() and any((path / m).exists() for m in _ZARR_MARKERS)


def open_source(src: str | Path, dataset: str | None = None) -> Source:
    """Open any supported volume for slab-wise reading (use as a context manager).

    Args:
        src: a folder of 2D slices, a JSON slice listing (MitoEM ``im_train.json`` style, see
            :func:`mitoseg.io.listing.read_listing`), a multi-page or 3D TIFF, an HDF5 file or a
            zarr array / group.
        dataset: dataset / array key inside an HDF5 file or zarr group; None picks the only
            3D one.

    Raises:
        VolumeError: the source is missing, unsupported or not a 3D volume.
    """
    path = Path(src)
    if not path.exists():
        raise VolumeError(f"source {path} does not exist")
    if is_zarr(path):
        return _open_zarr(path, dataset)
    if dataset is not None and (path.is_dir() or path.suffix.lower() in _NO_DATASETS):
        raise VolumeError(f"dataset={dataset!r} applies to HDF5 and zarr only, not to {path}")
    if path.is_dir():
        return FolderSource(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(path)
    if suffix in HDF5_SUFFIXES:
        return _open_hdf5(path, dataset)
    if suffix == LISTING_SUFFIX:
        return open_listing(path)
    supported = " ".join((*TIFF_SUFFIXES, *HDF5_SUFFIXES, LISTING_SUFFIX))
    raise VolumeError(
        f"unsupported source {path}: expected a folder of slices, a zarr array or {supported}"
    )


def volume_shape(src: str | Path, dataset: str | None = None) -> tuple[int, int, int]:
    """``(Z, Y, X)`` of any supported source, from headers and metadata only."""
    with open_source(src, dataset) as source:
        return source.shape


def read_voxel_size(src: str | Path, dataset: str | None = None) -> VoxelSize | None:
    """The voxel size a source states (:mod:`mitoseg.io.voxels`), from metadata only; None
    when it states none."""
    with open_source(src, dataset) as source:
        return source.voxel_size


def check_same_shape(
    raw_src: str | Path,
    labels_src: str | Path,
    raw_dataset: str | None = None,
    labels_dataset: str | None = None,
) -> tuple[int, int, int]:
    """Shape shared by a raw volume and its labels.

    Raises:
        VolumeError: the shapes differ (the message names both paths and shapes).
    """
    raw_shape = volume_shape(raw_src, raw_dataset)
    labels_shape = volume_shape(labels_src, labels_dataset)
    if raw_shape != labels_shape:
        raise VolumeError(
            f"raw {raw_src} has shape {raw_shape} but labels {labels_src} have shape {labels_shape}"
        )
    return raw_shape
