"""Slice files: a volume stored as one 2D image file (PNG, TIFF, JPEG) per z slice.

:class:`SliceFilesSource` decodes the files one at a time and checks that they agree;
:class:`FolderSource` reads a folder of them in natural order of the file names.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from mitoseg.io.errors import VolumeError
from mitoseg.io.source import Source
from mitoseg.io.voxels import VoxelSize, tiff_voxel_size

logger = logging.getLogger(__name__)

SLICE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
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


def _pil_mode(img: Image.Image) -> str:
    """The mode a PIL image is read in (after :data:`_PIL_CONVERT`)."""
    return _PIL_CONVERT.get(img.mode, img.mode)


# (bits per sample, samples per pixel) of a TIFF page -> the PIL mode of the same pixels
_TIFF_MODES = {(1, 1): "1", (8, 1): "L", (8, 2): "LA", (8, 3): "RGB", (8, 4): "RGBA"}


def _slice_mode(path: Path) -> str | None:
    """The PIL mode ``path`` is read in (TIFF pages named alike; None: not an 8- or 1-bit mode
    we convert), from the header only."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return _TIFF_MODES.get((int(page.bitspersample), int(page.samplesperpixel)))
    with Image.open(path) as img:
        return _pil_mode(img)


def _common_mode(files: list[Path]) -> str | None:
    """One PIL mode that holds every slice of ``files`` without loss, when they differ.

    One mask saved by different tools may mix 1-bit and 8-bit grey, or RGB and RGBA: 1-bit
    becomes 8-bit grey (0 / 255), grey becomes RGB when some slices are colour, and an opaque
    alpha is added when some slices have alpha; PNG, JPEG and TIFF slices alike. None keeps each
    slice as decoded (every slice in one mode, or modes that do not convert losslessly such as
    16-bit grey).
    """
    modes = set()
    for path in files:
        try:
            mode = _slice_mode(path)
        except Exception:  # unreadable slices are reported when they are decoded
            return None
        if mode is None:
            return None
        modes.add(mode)
    if modes == {"1"}:
        return "L"
    if len(modes) < 2 or not modes <= {"1", "L", "LA", "RGB", "RGBA"}:
        return None
    colour = any(m.startswith("RGB") for m in modes)
    alpha = any(m.endswith("A") for m in modes)
    mode = ("RGB" if colour else "L") + ("A" if alpha else "")
    logger.info("slices of %s mix the modes %s: all read as %s", files[0].parent, modes, mode)
    return mode


def _in_mode(image: np.ndarray, mode: str) -> np.ndarray:
    """A decoded 8-bit (or 1-bit) slice in ``mode`` (L, LA, RGB or RGBA, holding the slice's):
    1-bit becomes 0 / 255, grey is repeated into RGB, and an opaque alpha is added."""
    if image.dtype == bool:
        image = np.where(image, np.uint8(255), np.uint8(0))  # PIL may store True as 255
    if image.ndim == 2:
        image = image[..., None]
    has_alpha = image.shape[-1] in (2, 4)
    colour = image[..., :-1] if has_alpha else image
    if mode.startswith("RGB") and colour.shape[-1] == 1:
        colour = np.repeat(colour, 3, axis=-1)
    parts = [colour]
    if mode.endswith("A"):
        parts.append(image[..., -1:] if has_alpha else np.full_like(image[..., :1], 255))
    out = np.concatenate(parts, axis=-1)
    return out[..., 0] if out.shape[-1] == 1 else out


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
        self._mode: str | None = None  # the PIL mode every slice is read in, if they differ

    @property
    def dtype(self) -> np.dtype:
        if self._ref is None:
            self._decode(0)
        assert self._ref is not None
        return self._ref[2]

    def describe(self, z: int) -> str:
        return f"slice {z} ({self.files[z].name})"

    def _decode(self, z: int) -> np.ndarray:
        if self._ref is None:  # before the first slice: all slices must be read alike
            self._mode = _common_mode(self.files)
        path, image = self.files[z], _decode_slice(self.files[z])
        if self._mode is not None:
            image = _in_mode(image, self._mode)
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
        self.voxel_size = _first_slice_voxel_size(files[0])


def _first_slice_voxel_size(path: Path) -> VoxelSize | None:
    """What the first slice's TIFF metadata states (y and x; z only from ImageJ / OME)."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            return tiff_voxel_size(tif)
    except Exception:  # unreadable slices are reported when they are read
        return None
