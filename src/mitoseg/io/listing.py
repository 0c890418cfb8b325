"""JSON slice listings: a volume given as a list of 2D slice files (the MitoEM /
pytorch_connectomics format, e.g. MitoEM's ``im_train.json``).

:func:`read_listing` reads and checks a listing without reading a slice; :func:`open_listing`
opens it as a :class:`ListingSource` for slab-wise reading (what :func:`mitoseg.io.open_source`
does for a ``.json`` source). Whole MitoEM releases are found and converted by
:mod:`mitoseg.datasets.mitoem`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mitoseg.io.errors import VolumeError
from mitoseg.io.slices import SliceFilesSource, _slice_size

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listing:
    """A checked JSON slice listing.

    Attributes:
        path: the JSON file.
        files: the slice files in z order; relative entries resolved against ``path.parent``.
        shape: ``(depth, height, width)`` as the listing states them.
        dtype: the listing's ``dtype``, None when absent.
    """

    path: Path
    files: tuple[Path, ...]
    shape: tuple[int, int, int]
    dtype: np.dtype | None


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VolumeError(f"cannot read JSON listing {path}: {err}") from err
    if not isinstance(data, dict):
        raise VolumeError(
            f"JSON listing {path}: expected an object with key 'image', got {data!r:.80}"
        )
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_key(path: Path, data: dict[str, Any], key: str, required: bool = True) -> int | None:
    """``data[key]`` as a positive integer; None when absent and not ``required``."""
    if key not in data:
        if required:
            raise VolumeError(f"JSON listing {path}: missing key {key!r}")
        return None
    value = data[key]
    if not _is_int(value) or value < 1:
        raise VolumeError(
            f"JSON listing {path}: key {key!r} must be a positive integer, got {value!r}"
        )
    return int(value)


def _image_entries(path: Path, data: dict[str, Any]) -> list[str]:
    if "image" not in data:
        raise VolumeError(
            f"JSON listing {path}: missing key 'image' (the list of slice paths in z order)"
        )
    entries = data["image"]
    if not isinstance(entries, list) or not entries:
        raise VolumeError(
            f"JSON listing {path}: key 'image' must be a non-empty list of slice paths, "
            f"got {entries!r:.80}"
        )
    for i, entry in enumerate(entries):
        if not isinstance(entry, str) or not entry:
            raise VolumeError(
                f"JSON listing {path}: key 'image', entry {i} is {entry!r}, not a path"
            )
    return entries


def _check_tiling(path: Path, data: dict[str, Any], height: int, width: int) -> tuple[int, int]:
    """Refuse tiled layouts; return ``tile_st`` (row, column), used to format path patterns."""
    where = f"JSON listing {path}"
    for key in ("n_rows", "n_columns"):
        count = _int_key(path, data, key, required=False)
        if count is not None and count > 1:
            raise VolumeError(
                f"{where}: key {key!r} is {count}: tiled slices are not supported; "
                "list whole slices (n_rows = n_columns = 1)"
            )
    ratio = data.get("tile_ratio", 1)
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or ratio != 1:
        raise VolumeError(
            f"{where}: key 'tile_ratio' is {ratio!r}: only 1 (no resampling) is supported"
        )
    tile = data.get("tile_size", [height, width])
    sizes = tile if isinstance(tile, list) else [tile, tile]
    if len(sizes) != 2 or not all(_is_int(s) and s >= 1 for s in sizes):
        raise VolumeError(
            f"{where}: key 'tile_size' must be a positive integer or [height, width], got {tile!r}"
        )
    if sizes[0] < height or sizes[1] < width:
        raise VolumeError(
            f"{where}: key 'tile_size' {tile!r} is smaller than the slice ({height}, {width}): "
            "tiled slices are not supported; list whole slices"
        )
    start = data.get("tile_st", [0, 0])
    if not isinstance(start, list) or len(start) != 2 or not all(_is_int(s) for s in start):
        raise VolumeError(f"{where}: key 'tile_st' must be [row, column], got {start!r}")
    return start[0], start[1]


def _dtype_key(path: Path, data: dict[str, Any]) -> np.dtype | None:
    if "dtype" not in data:
        return None
    try:
        if not isinstance(data["dtype"], str):
            raise TypeError("not a string")
        return np.dtype(data["dtype"])
    except TypeError as err:
        raise VolumeError(
            f"JSON listing {path}: key 'dtype' {data['dtype']!r} is not a dtype name"
        ) from err


def _resolve(path: Path, entries: list[str], tile_st: tuple[int, int]) -> list[Path]:
    """Slice files of ``entries``; an error names the first missing one and counts the others."""
    files, missing = [], []
    for i, entry in enumerate(entries):
        # A one-tile layout may still name its slices by tile pattern.
        name = entry.replace("{row}", str(tile_st[0])).replace("{column}", str(tile_st[1]))
        file = Path(name).expanduser()
        file = file if file.is_absolute() else path.parent / file
        files.append(file)
        if not file.is_file():
            missing.append(i)
    if missing:
        i = missing[0]
        more = f"; {len(missing)} of {len(files)} listed slices are missing" if missing[1:] else ""
        raise VolumeError(
            f"JSON listing {path}: key 'image', entry {i} {entries[i]!r} -> {files[i]} does not "
            f"exist{more} (relative paths are read from {path.parent}; edit the path prefix)"
        )
    return files


def read_listing(path: str | Path) -> Listing:
    """Read and check a JSON slice listing (the MitoEM / pytorch_connectomics volume format).

    Keys: ``image`` (slice paths in z order; relative ones are resolved against the JSON file's
    folder, ``~`` is expanded), ``depth``, ``height``, ``width`` (required positive integers),
    ``dtype`` (optional; a mismatch with the decoded slices is logged, the slices decide),
    ``ndim`` (optional, unused) and the tiling keys ``tile_size``, ``tile_st``, ``tile_ratio``,
    ``n_rows``, ``n_columns`` (optional). Only one tile per slice is supported: n_rows =
    n_columns = 1, tile_ratio = 1, tile_size >= (height, width); ``{row}`` / ``{column}`` in a
    path are replaced by ``tile_st``. Reads no slice.

    Raises:
        VolumeError: unreadable JSON, a missing or bad key, depth != len(image), a tiled layout
            or a listed file that does not exist. The message names the JSON file and the key
            (for a missing file: the index and the path).
    """
    path = Path(path)
    data = _load_json(path)
    entries = _image_entries(path, data)
    depth, height, width = (int(_int_key(path, data, k) or 0) for k in ("depth", "height", "width"))
    if depth != len(entries):
        raise VolumeError(
            f"JSON listing {path}: key 'depth' is {depth}, "
            f"but key 'image' lists {len(entries)} slices"
        )
    _int_key(path, data, "ndim", required=False)
    tile_st = _check_tiling(path, data, height, width)
    dtype = _dtype_key(path, data)
    return Listing(path, tuple(_resolve(path, entries, tile_st)), (depth, height, width), dtype)


class ListingSource(SliceFilesSource):
    """The slices a JSON listing names, read one at a time; ``path`` is the JSON file."""

    def __init__(self, listing: Listing) -> None:
        yx = listing.shape[1:]
        super().__init__(listing.path, list(listing.files), yx, f"keys 'height', 'width' say {yx}")
        self.listing = listing
        first = _slice_size(listing.files[0])
        if first != yx:
            raise VolumeError(
                f"JSON listing {listing.path}: key 'image', entry 0 ({listing.files[0]}) has "
                f"shape {first}, but keys 'height', 'width' say {yx}"
            )

    def describe(self, z: int) -> str:
        return f"slice {z} (image[{z}] {self.files[z]})"

    def _decode(self, z: int) -> np.ndarray:
        first = self._ref is None
        try:
            image = super()._decode(z)
        except VolumeError as err:
            raise VolumeError(f"JSON listing {self.path}, key 'image', entry {z}: {err}") from None
        declared = self.listing.dtype
        if first and declared is not None and not np.can_cast(image.dtype, declared, "safe"):
            logger.warning(
                "JSON listing %s: key 'dtype' says %s but %s holds %s; storing the slices as read",
                self.path,
                declared,
                self.files[z],
                image.dtype,
            )
        return image


def open_listing(path: str | Path) -> ListingSource:
    """Open a JSON slice listing for slab-wise reading (see :func:`read_listing`)."""
    return ListingSource(read_listing(path))
