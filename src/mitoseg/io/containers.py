"""Container files that hold a whole volume: multi-page and 3D TIFF, HDF5 and zarr.

Each opener returns a :class:`~mitoseg.io.source.Source` that reads slabs straight from the file:
:class:`TiffPagesSource` one page per slice, :class:`ArraySource` any sliceable 3D array (an
HDF5 dataset, a zarr array, a TIFF series through zarr). HDF5 files and zarr groups holding
several datasets take ``dataset`` to pick one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tifffile
import zarr

from mitoseg.io.errors import VolumeError
from mitoseg.io.ome import level_paths, multiscale_of
from mitoseg.io.source import Source
from mitoseg.io.voxels import (
    VoxelSize,
    attrs_voxel_size,
    hdf5_voxel_size,
    ome_zarr_voxel_size,
    tiff_voxel_size,
)


class TiffPagesSource(Source):
    """A multi-page TIFF holding one 2D (possibly RGB) page per z slice."""

    def __init__(self, path: Path, tif: tifffile.TiffFile, pages: list[Any]) -> None:
        self.path, self._tif, self._pages = path, tif, pages
        self._page_shape, self._dtype = tuple(pages[0].shape), np.dtype(pages[0].dtype)
        self.shape = (len(pages), *self._page_shape[:2])

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def describe(self, z: int) -> str:
        return f"slice {z} (page {z} of {self.path.name})"

    def _page(self, z: int) -> np.ndarray:
        try:
            page = self._pages[z].asarray()
        except Exception as err:  # codec errors of many types
            raise VolumeError(f"cannot read page {z} of {self.path}: {err}") from err
        if (page.shape, page.dtype) != (self._page_shape, self._dtype):
            raise VolumeError(
                f"page {z} of {self.path} has shape {page.shape} and dtype {page.dtype}, "
                f"but page 0 has shape {self._page_shape} and dtype {self._dtype}"
            )
        return page

    def read(self, z0: int, z1: int) -> np.ndarray:
        out = np.empty((z1 - z0, *self._page_shape), dtype=self._dtype)
        for z in range(z0, z1):
            out[z - z0] = self._page(z)
        return out

    def close(self) -> None:
        self._tif.close()


class ArraySource(Source):
    """Any sliceable 3D array (HDF5 dataset, zarr array, TIFF series as zarr)."""

    def __init__(self, path: Path, array: Any, closer: Any = None) -> None:
        self.path, self._array, self._closer = path, array, closer
        self.shape = tuple(int(s) for s in array.shape[:3])  # type: ignore[assignment]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._array.dtype)

    def read(self, z0: int, z1: int) -> np.ndarray:
        try:
            return np.asarray(self._array[z0:z1])
        except Exception as err:  # storage and codec errors of many types
            raise VolumeError(f"cannot read slices {z0}..{z1 - 1} of {self.path}: {err}") from err

    def close(self) -> None:
        if self._closer is not None:
            self._closer.close()


def _is_2d(page: Any) -> bool:
    return page is not None and page.imagedepth == 1


def _tiff_pages(path: Path, tif: tifffile.TiffFile) -> list[Any] | None:
    """The pages to read one per z slice, or None to stream the first series through zarr."""
    all_series = tif.series
    if len(all_series) > 1:
        # One series per page (pages written one by one, or of differing shapes): a page stack.
        if all(len(s.pages) == 1 and _is_2d(s.pages[0]) for s in all_series):
            return [s.pages[0] for s in all_series]
        shapes = [tuple(s.shape) for s in all_series]
        raise VolumeError(f"TIFF {path} holds {len(shapes)} image series {shapes}; expected one")
    series = all_series[0]
    pages = list(series.pages)
    first = pages[0]
    if first is None or not _is_2d(first) or any(p is None for p in pages):
        return None  # e.g. a contiguous ImageJ stack described by its first page only
    if len(pages) > 1 and tuple(series.shape) == (len(pages), *first.shape):
        return pages
    return None


def _open_tiff(path: Path) -> Source:
    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:
        raise VolumeError(f"cannot read TIFF {path}: {err}") from err
    try:
        source = _tiff_source(path, tif)
        source.voxel_size = tiff_voxel_size(tif)
        return source
    except BaseException:
        tif.close()
        raise


def _tiff_source(path: Path, tif: tifffile.TiffFile) -> Source:
    pages = _tiff_pages(path, tif)
    if pages is not None:
        return TiffPagesSource(path, tif, pages)
    # One page holding a 3D image, an ImageJ hyperstack, ...: stream through zarr.
    series = tif.series[0]
    array = zarr.open_array(series.aszarr(), mode="r")
    if array.ndim != 3 + series.axes.endswith("S"):
        raise VolumeError(
            f"TIFF {path} is not a 3D volume: shape {tuple(series.shape)}, axes {series.axes}"
        )
    return ArraySource(path, array, closer=tif)


def _listing(found: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{name} {shape}" for name, shape in sorted(found.items())) or "none"


def _pick_dataset(path: Path, found: dict[str, tuple[int, ...]], dataset: str | None) -> str:
    """The dataset to read: ``dataset`` itself, or the only 3D one when None."""
    if dataset is not None:
        key = dataset.strip("/")
        if key not in found:
            raise VolumeError(f"{path} has no dataset {dataset!r}; available: {_listing(found)}")
        if len(found[key]) != 3:
            raise VolumeError(f"dataset {dataset!r} in {path} is not 3D: shape {found[key]}")
        return key
    three_d = [name for name, shape in found.items() if len(shape) == 3]
    if len(three_d) != 1:
        raise VolumeError(
            f"{path} holds {len(three_d)} 3D datasets; name one with dataset= / --dataset. "
            f"Available: {_listing(found)}"
        )
    return three_d[0]


def _h5_datasets(h5: h5py.File) -> dict[str, tuple[int, ...]]:
    """Every dataset in the file: key -> shape."""
    found: dict[str, tuple[int, ...]] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name] = tuple(obj.shape)

    h5.visititems(visit)
    return found


def _open_hdf5(path: Path, dataset: str | None) -> Source:
    try:
        h5 = h5py.File(path, "r")
    except Exception as err:
        raise VolumeError(f"cannot read HDF5 {path}: {err}") from err
    try:
        key = _pick_dataset(path, _h5_datasets(h5), dataset)
        source = ArraySource(path, h5[key], closer=h5)
        source.voxel_size = hdf5_voxel_size(h5[key], str(path))
        return source
    except BaseException:
        h5.close()
        raise


def _open_zarr(path: Path, dataset: str | None) -> Source:
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:
        raise VolumeError(f"cannot read zarr {path}: {err}") from err
    if isinstance(node, zarr.Array):
        if dataset is not None:
            raise VolumeError(f"{path} is a zarr array, not a group; it has no dataset {dataset!r}")
        if node.ndim != 3:
            raise VolumeError(f"zarr array {path} is not 3D: shape {node.shape}")
        source = ArraySource(path, node)
        source.voxel_size = attrs_voxel_size(node.attrs.asdict(), f"zarr {path}")
        return source
    group_attrs = node.attrs.asdict()
    levels = level_paths(group_attrs)
    if dataset is None and levels:  # an OME-Zarr multiscale: its full resolution
        dataset = levels[0]
    members = node.members(max_depth=None)
    found = {name: tuple(a.shape) for name, a in members if isinstance(a, zarr.Array)}
    key = _pick_dataset(path, found, dataset)
    source = ArraySource(path, node[key])
    source.voxel_size = _zarr_group_voxel_size(path, group_attrs, key, node[key].attrs.asdict())
    return source


def _zarr_group_voxel_size(
    path: Path, group_attrs: dict[str, Any], key: str, array_attrs: dict[str, Any]
) -> VoxelSize | None:
    """Array ``key``'s attributes (ours at level 0), else the OME-Zarr scale of that level,
    else the group's attributes."""
    found = attrs_voxel_size(array_attrs, f"zarr {path}/{key}")
    multiscale = multiscale_of(group_attrs)
    if found is None and multiscale is not None:
        found = ome_zarr_voxel_size(multiscale, key, f"{path}/{key}")
    return found or attrs_voxel_size(group_attrs, f"zarr {path}")
