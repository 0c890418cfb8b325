"""The MitoEM release layout: find the splits of a release and convert them to zarr.

A release (MitoEM-R or MitoEM-H) holds ``im/im0000.png ... im0999.png`` (uint8 slices), instance
labels ``mito_train/seg0000.tif ... seg0399.tif`` and ``mito_val/seg0400.tif ... seg0499.tif``
(uint32 TIFF, or 16-bit PNG), and may hold JSON listings (``im_train.json``, ``mito_train.json``,
``im_val.json``, ``mito_val.json``, ``im_test.json``) naming the slice files of each split (the
listing format is read by :mod:`mitoseg.io.listing`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zarr

from mitoseg.io.conversion import convert
from mitoseg.io.errors import VolumeError
from mitoseg.io.slices import SliceFilesSource
from mitoseg.io.sources import open_source
from mitoseg.io.store import DEFAULT_CHUNKS

logger = logging.getLogger(__name__)

MITOEM_VOXEL_SIZE_NM = (30.0, 8.0, 8.0)
RAW_FOLDER = "im"
# split -> (raw listing, labels listing, labels folder); test labels are not released.
SPLIT_FILES: dict[str, tuple[str, str | None, str | None]] = {
    "train": ("im_train.json", "mito_train.json", "mito_train"),
    "val": ("im_val.json", "mito_val.json", "mito_val"),
    "test": ("im_test.json", None, None),
}


@dataclass(frozen=True)
class ReleaseSplit:
    """Where one split of a MitoEM release is read from.

    Attributes:
        raw: the raw source, the ``im`` folder or a JSON listing.
        z_range: slices ``[z0, z1)`` of ``raw`` in this split; None for all of them.
        labels: the label folder or JSON listing; None for the test split.
    """

    raw: Path
    z_range: tuple[int, int] | None
    labels: Path | None = None


def _first_number(src: Path, files: Sequence[Path]) -> int | None:
    """The number in the first file name (seg0400.tif: 400); None when a name has no number.

    Raises:
        VolumeError: the numbers are not consecutive (a slice is missing).
    """
    numbers = []
    for file in files:
        match = re.search(r"(\d+)\D*$", file.name)
        if match is None:
            return None
        numbers.append(int(match.group(1)))
    gaps = sorted(set(range(numbers[0], numbers[0] + len(numbers))) - set(numbers))
    if gaps:  # a repeated number leaves a gap too
        raise VolumeError(
            f"MitoEM: the slices of {src} are not numbered consecutively from {files[0].name} "
            f"(missing numbers {gaps[:5]}{' ...' if len(gaps) > 5 else ''})"
        )
    return numbers[0]


def _slice_files(src: Path) -> tuple[list[Path], tuple[int, int, int]]:
    """Slice files and ``(Z, Y, X)`` of a slice folder or JSON listing."""
    with open_source(src) as source:
        if not isinstance(source, SliceFilesSource):
            raise VolumeError(f"{src} is not a folder of slices or a JSON listing")
        return source.files, source.shape


def _pick(root: Path, listing: str | None, folder: str | None, what: str) -> Path:
    """``root / listing`` when it exists, else ``root / folder``; an error names both."""
    candidates = [root / name for name in (listing, folder) if name is not None]
    for path in candidates:
        if path.is_file() if path.suffix == ".json" else path.is_dir():
            return path
    expected = " or ".join(str(p) for p in candidates)
    raise VolumeError(f"MitoEM release {root}: no {what}; expected {expected}")


def _labelled_split(root: Path, split: str, default_start: int) -> ReleaseSplit:
    """A split with labels; in the ``im`` folder it takes the slices its label files number."""
    raw_listing, labels_listing, labels_folder = SPLIT_FILES[split]
    labels = _pick(root, labels_listing, labels_folder, f"{split} labels")
    label_files, labels_shape = _slice_files(labels)
    raw = _pick(root, raw_listing, RAW_FOLDER, f"{split} raw")
    z_range = None
    raw_files, raw_shape = _slice_files(raw)
    if raw.suffix != ".json":
        label_start, raw_start = _first_number(labels, label_files), _first_number(raw, raw_files)
        z0 = default_start
        if label_start is not None and raw_start is not None:
            z0 = label_start - raw_start
        z_range = (z0, z0 + len(label_files))
        if z0 < 0 or z_range[1] > raw_shape[0]:
            raise VolumeError(
                f"MitoEM {split}: labels {labels} cover slices {z0}..{z_range[1] - 1} of {raw}, "
                f"which has {raw_shape[0]} slices"
            )
        raw_shape = (len(label_files), *raw_shape[1:])
    if raw_shape != labels_shape:
        where = "" if z_range is None else f" slices {z_range[0]}..{z_range[1] - 1}"
        raise VolumeError(
            f"MitoEM {split}: raw {raw}{where} has shape {raw_shape}, but labels "
            f"{labels} have shape {labels_shape}"
        )
    return ReleaseSplit(raw, z_range, labels)


def find_release(root: str | Path) -> dict[str, ReleaseSplit]:
    """Locate the train, val and (when present) test parts of a MitoEM release.

    Each part is read from its JSON listing when ``root`` holds one, else from the folders.
    In the ``im`` folder, train and val take the slices their label files number (seg0400.tif
    is the im file numbered 400); label names without numbers take slices in order, train
    first. Test is ``im_test.json``, or the ``im`` slices after train and val.

    Raises:
        VolumeError: a train or val part (raw or labels) is missing, raw and labels disagree
            in shape, or slice numbers have gaps; the message names what is at fault.
    """
    root = Path(root)
    if not root.is_dir():
        raise VolumeError(f"MitoEM release {root} is not a folder")
    train = _labelled_split(root, "train", 0)
    splits = {"train": train}
    splits["val"] = _labelled_split(root, "val", train.z_range[1] if train.z_range else 0)
    test_listing = root / SPLIT_FILES["test"][0]
    if test_listing.is_file():
        splits["test"] = ReleaseSplit(test_listing, None)
    elif (root / RAW_FOLDER).is_dir():
        depth = _slice_files(root / RAW_FOLDER)[1][0]
        end = max((s.z_range[1] for s in splits.values() if s.z_range), default=depth)
        if end < depth:
            splits["test"] = ReleaseSplit(root / RAW_FOLDER, (end, depth))
    if "test" not in splits:
        logger.info("MitoEM release %s: no test slices", root)
    return splits


def convert_release(
    root: str | Path,
    out: str | Path,
    *,
    voxel_size_nm: tuple[float, float, float] = MITOEM_VOXEL_SIZE_NM,
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[Path, zarr.Array]:
    """Convert a MitoEM release into ``out/{train,val}/{raw,labels}.zarr``, ``out/test/raw.zarr``.

    Streams slab by slab like :func:`mitoseg.io.convert`, logging each array at INFO. Splits
    are found by :func:`find_release`, so a small release with fewer slices works too.

    Args:
        root: the release folder (``im/``, ``mito_train/``, ``mito_val/`` and / or JSON listings).
        out: output folder.
        voxel_size_nm: (z, y, x) voxel size stored with every array; MitoEM is 30 x 8 x 8 nm.
        chunks: zarr chunk shape (z, y, x).
        overwrite: replace existing arrays; without it, an existing one is refused before
            anything is written.
        progress: show a tqdm bar per array.

    Returns:
        Output path -> array, read-only: raw uint8 (Z, Y, X); labels uint32 instance ids.

    Raises:
        VolumeError: a missing part of the release, a bad slice or listing, or an existing output.
    """
    out = Path(out)
    jobs: list[tuple[str, Path, Path, tuple[int, int] | None]] = []
    for split, part in find_release(root).items():
        jobs.append(("raw", part.raw, out / split / "raw.zarr", part.z_range))
        if part.labels is not None:
            jobs.append(("labels", part.labels, out / split / "labels.zarr", None))
    existing = [str(dst) for _, _, dst, _ in jobs if dst.exists()]
    if existing and not overwrite:
        raise VolumeError(
            f"{', '.join(existing)} already exist(s); pass overwrite=True / --overwrite"
        )
    written = {}
    for i, (kind, src, dst, z_range) in enumerate(jobs, 1):
        slices = "" if z_range is None else f" slices {z_range[0]}..{z_range[1] - 1}"
        logger.info("MitoEM %d/%d: %s %s%s -> %s", i, len(jobs), kind, src, slices, dst)
        written[dst] = convert(
            src,
            dst,
            labels=kind == "labels",
            binary=False if kind == "labels" else None,
            voxel_size_nm=voxel_size_nm,
            chunks=chunks,
            overwrite=overwrite,
            progress=progress,
            z_range=z_range,
        )
    return written
