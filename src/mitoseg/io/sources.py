"""Readers that stream EM volumes slab by slab from slice folders, TIFF, HDF5 and zarr."""

from __future__ import annotations

import re
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import tifffile
import zarr
from PIL import Image

from mitoseg.io.errors import VolumeError
from mitoseg.io.ome import level_paths

SLICE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
LISTING_SUFFIX = ".json"
_NO_DATASETS = (*TIFF_SUFFIXES, LISTING_SUFFIX)
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
# PIL modes that numpy cannot take as they are, and what to convert them to first.
_PIL_CONVERT = {
    "P": "RGBA",
    "PA": "RGBA",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}


def natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key that orders digit runs by value: ``im2.png`` < ``im10.png``.

    Ties such as ``im2.png`` / ``im02.png`` fall back to the plain name, so the order is total.
    """
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


class Source:
    """A ``(Z, Y, X)`` volume read slab by slab; a context manager that closes its file.

    Attributes:
        path: the file or folder read.
        shape: ``(Z, Y, X)``; slices may carry a trailing colour axis on top.
    """

    path: Path
    shape: tuple[int, int, int]

    @property
    def dtype(self) -> np.dtype:
        """dtype of the decoded slices."""
        raise NotImplementedError

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``[z0, z1)`` as ``(z1 - z0, Y, X)`` or ``(z1 - z0, Y, X, C)``."""
        raise NotImplementedError

    def describe(self, z: int) -> str:
        """Names slice ``z`` for error messages."""
        return f"slice {z}"

    def close(self) -> None:
        """Release file handles."""

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _decode_slice(path: Path) -> np.ndarray:
    """One 2D slice file as ``(Y, X)`` or ``(Y, X, C)``."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                return tif.pages.first.asarray()
        with Image.open(path) as img:
            mode = _PIL_CONVERT.get(img.mode)
            return np.asarray(img.convert(mode) if mode else img)
    except Exception as err:  # decoders raise many types (OSError, ValueError, zlib.error, ...)
        raise VolumeError(f"cannot read slice {path}: {err}") from err


def _slice_size(path: Path) -> tuple[int, int]:
    """``(Y, X)`` of a 2D slice file, read from its header only."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                if page.imagedepth > 1:
                    raise VolumeError(f"slice {path} is 3D (shape {page.shape}), expected 2D")
                return int(page.imagelength), int(page.imagewidth)
        with Image.open(path) as img:
            return img.height, img.width
    except VolumeError:
        raise
    except Exception as err:
        raise VolumeError(f"cannot read slice {path}: {err}") from err


class SliceFilesSource(Source):
    """2D slice files (PNG, TIFF, JPEG), one per z slice, decoded one at a time.

    Every slice must have the ``(Y, X)`` of ``shape`` and the shape and dtype of the first slice
    decoded; ``shape_origin`` says where ``shape`` came from, for error messages.
    """

    def __init__(
        self, path: Path, files: list[Path], slice_shape: tuple[int, int], shape_origin: str
    ) -> None:
        self.path, self.files, self.shape_origin = path, files, shape_origin
        self.shape = (len(files), *slice_shape)
        # (file, shape, dtype) of the first slice decoded: the others must match it.
        self._ref: tuple[Path, tuple[int, ...], np.dtype] | None = None

    @property
    def dtype(self) -> np.dtype:
        if self._ref is None:
            self._decode(0)
        assert self._ref is not None
        return self._ref[2]

    def describe(self, z: int) -> str:
        return f"slice {z} ({self.files[z].name})"

    def _decode(self, z: int) -> np.ndarray:
        path, image = self.files[z], _decode_slice(self.files[z])
        if image.shape[:2] != self.shape[1:]:
            raise VolumeError(
                f"slice {path} has shape {image.shape}, but {self.shape_origin} "
                f"has shape {self.shape[1:]}"
            )
        if self._ref is None:
            self._ref = (path, image.shape, image.dtype)
        ref_path, ref_shape, ref_dtype = self._ref
        if (image.shape, image.dtype) != (ref_shape, ref_dtype):
            raise VolumeError(
                f"slice {path} has shape {image.shape} and dtype {image.dtype}, but slice "
                f"{ref_path.name} has shape {ref_shape} and dtype {ref_dtype}"
            )
        return image

    def read(self, z0: int, z1: int) -> np.ndarray:
        first = self._decode(z0)
        out = np.empty((z1 - z0, *first.shape), dtype=first.dtype)
        out[0] = first
        for z in range(z0 + 1, z1):
            out[z - z0] = self._decode(z)
        return out


class FolderSource(SliceFilesSource):
    """A folder of 2D slices (PNG, TIFF, JPEG), in natural order of the file names."""

    def __init__(self, path: Path) -> None:
        files = sorted(
            (
                p
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLICE_SUFFIXES
            ),
            key=lambda p: natural_key(p.name),
        )
        if not files:
            raise VolumeError(f"no image slices ({' '.join(SLICE_SUFFIXES)}) in folder {path}")
        super().__init__(path, files, _slice_size(files[0]), f"the first slice {files[0].name}")


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
    except BaseException:
        tif.close()
        raise


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
        return ArraySource(path, h5[key], closer=h5)
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
        return ArraySource(path, node)
    levels = level_paths(node.attrs.asdict())
    if dataset is None and levels:  # an OME-Zarr multiscale: its full resolution
        dataset = levels[0]
    members = node.members(max_depth=None)
    found = {name: tuple(a.shape) for name, a in members if isinstance(a, zarr.Array)}
    return ArraySource(path, node[_pick_dataset(path, found, dataset)])


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
        # Imported here: listing builds on this module (its source is a SliceFilesSource).
        from mitoseg.io.listing import open_listing

        return open_listing(path)
    supported = " ".join((*TIFF_SUFFIXES, *HDF5_SUFFIXES, LISTING_SUFFIX))
    raise VolumeError(
        f"unsupported source {path}: expected a folder of slices, a zarr array or {supported}"
    )


def volume_shape(src: str | Path, dataset: str | None = None) -> tuple[int, int, int]:
    """``(Z, Y, X)`` of any supported source, from headers and metadata only."""
    with open_source(src, dataset) as source:
        return source.shape


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
