"""The public EM datasets (Lucchi++, MitoEM-R, MitoEM-H): where they are, how to check and
convert them, and :func:`download_dataset`, which fetches one and converts it to zarr.

``download_dataset(name, dest)`` works in ``dest/<name>/``, one stage at a time, each stage
finished before the next starts, so an interrupted run resumes where it stopped::

    archives/<file>.part   the download in progress (HTTP Range requests continue it)
    archives/<file>        the archive, renamed only once its sha256 matched
    source/                the extracted archives (built in a temporary folder, then renamed)
    zarr/{train,val,test}/{raw,labels}.zarr    the converted volumes (same way)
    .mitoseg-download.json the "already done" marker, with the sha256 of every archive

Archives are refused when their sha256 differs from the registry (the file is kept aside as
``<file>.bad``) or when a member would land outside the target folder. A registry entry without
a checksum is downloaded, hashed, and kept as ``<file>.unverified`` until the caller accepts it.
Transfer, checksums and extraction are in :mod:`mitoseg.datasets.fetch`.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mitoseg.datasets.fetch import (
    ArchiveKind,
    DownloadError,
    extract_into,
    fetch,
    verify_members,
)
from mitoseg.datasets.mitoem import MITOEM_VOXEL_SIZE_NM, convert_release
from mitoseg.io import atomic_dir, convert

logger = logging.getLogger(__name__)

MARKER = ".mitoseg-download.json"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: ``sha256`` (lower-case hex) and ``size`` (bytes) may be unknown."""

    url: str
    name: str
    sha256: str | None
    kind: ArchiveKind
    size: int | None = None


@dataclass(frozen=True)
class Dataset:
    """A registry entry.

    Attributes:
        prepare: checks and tidies the extracted tree (called on the temporary folder).
        convert: writes the zarr volumes of the extracted tree ``source`` into ``out``.
        members_sha256: expected sha256 of extracted files, relative to the folder holding
            them, checked by ``prepare`` when the archive has that layout.
    """

    name: str
    description: str
    files: tuple[RemoteFile, ...]
    voxel_size_nm: tuple[float, float, float]
    prepare: Callable[[Path, Dataset], None]
    convert: Callable[[Path, Path, Dataset, bool], None]
    members_sha256: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """What :func:`download_dataset` left in ``root``; ``sha256``: archive name -> hash."""

    root: Path
    source: Path
    arrays: tuple[Path, ...]
    sha256: Mapping[str, str]
    already_done: bool


# ----------------------------------------------------------------------------- layouts

LUCCHI_TIFFS = {
    "train": ("train_im.tif", "train_label.tif"),
    "test": ("test_im.tif", "test_label.tif"),
}
# The Casser et al. release: Lucchi++/{Train,Test}_In/mask0000.png ..., {Train,Test}_Out/0.png ...
LUCCHI_FOLDERS = {"train": ("Train_In", "Train_Out"), "test": ("Test_In", "Test_Out")}
# sha256 of the four multi-page TIFFs (deflate, 165 x 768 x 1024) of ../shared/data/lucchi_pp.
LUCCHI_TIFF_SHA256 = {
    "train_im.tif": "7194d750490374cfc0c4a23f2086f0096092918c3a016a919328bb1bdeaa008d",
    "train_label.tif": "06a351fa0956572733b0c6a566870c0341127f192815b48831b68e64ab3a90dd",
    "test_im.tif": "34902393064d3657013e4a680c253376a420a7796bdbea996c77626421886221",
    "test_label.tif": "7ec99a2b985e3ed903fed1025af61eb4c829e5f256817a66d40cba26f6680744",
}
# Label folders of the MitoEM label archives -> the names mitoseg.datasets.mitoem reads.
MITOEM_RENAMES = {"mito-train-v2": "mito_train", "mito-val-v2": "mito_val"}


def _lucchi_volumes(root: Path) -> tuple[Path, dict[str, tuple[Path, Path]], bool]:
    """(folder, split -> (raw, labels), is the four-TIFF layout) in ``root`` or one level down."""
    for base in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        for layout, is_tiff in ((LUCCHI_TIFFS, True), (LUCCHI_FOLDERS, False)):
            paths = {split: (base / raw, base / labels) for split, (raw, labels) in layout.items()}
            if all(p.exists() for pair in paths.values() for p in pair):
                return base, paths, is_tiff
    raise DownloadError(
        f"{root} holds neither {', '.join(n for v in LUCCHI_TIFFS.values() for n in v)} nor "
        f"the Lucchi++ folders {', '.join(n for v in LUCCHI_FOLDERS.values() for n in v)}"
    )


def _prepare_lucchipp(root: Path, dataset: Dataset) -> None:
    base, _, is_tiff = _lucchi_volumes(root)
    if is_tiff:
        verify_members(base, dataset.members_sha256)


def _convert_lucchipp(source: Path, out: Path, dataset: Dataset, progress: bool) -> None:
    for split, (raw, labels) in _lucchi_volumes(source)[1].items():
        for src, kind in ((raw, "raw"), (labels, "labels")):
            dst = out / split / f"{kind}.zarr"
            logger.info("%s: converting %s -> %s", dataset.name, src, dst)
            size_nm = dataset.voxel_size_nm
            convert(src, dst, labels=kind == "labels", voxel_size_nm=size_nm, progress=progress)


def _prepare_mitoem(root: Path, dataset: Dataset) -> None:
    for name in ("im", *MITOEM_RENAMES, *MITOEM_RENAMES.values()):
        nested = [p for p in root.glob(f"*/{name}") if p.is_dir()]
        if not (root / name).exists() and len(nested) == 1:  # an archive with a wrapper folder
            os.replace(nested[0], root / name)
    for old, new in MITOEM_RENAMES.items():
        if (root / old).is_dir() and not (root / new).exists():
            os.replace(root / old, root / new)
    missing = [n for n in ("im", "mito_train", "mito_val") if not (root / n).is_dir()]
    if missing:
        found = sorted(p.name for p in root.iterdir())
        raise DownloadError(
            f"{dataset.name}: the archives hold no {missing} folders (found {found})"
        )


def _convert_mitoem(source: Path, out: Path, dataset: Dataset, progress: bool) -> None:
    convert_release(source, out, voxel_size_nm=dataset.voxel_size_nm, progress=progress)


# ----------------------------------------------------------------------------- registry


def _zip(url: str, sha256: str) -> RemoteFile:
    """A zip archive named as the last component of its URL's path."""
    return RemoteFile(
        url, posixpath.basename(urllib.parse.urlparse(url).path), sha256, ArchiveKind.ZIP
    )


_HF = "https://huggingface.co/datasets/pytc"
_DROPBOX = "https://www.dropbox.com/s"
# Archive sha256 as published with the same URLs in torch-em (constantinpape/torch-em,
# torch_em/data/datasets/electron_microscopy/{lucchi,mitoem}.py); sizes unknown.
DATASETS: dict[str, Dataset] = {
    "lucchipp": Dataset(
        name="lucchipp",
        description="Lucchi++ (Casser et al. 2018): EPFL hippocampus FIB-SEM, train and test "
        "volumes 165 x 768 x 1024 at 5 nm, mitochondria masks",
        files=(
            _zip(
                "http://www.casser.io/files/lucchi_pp.zip",
                "770ce9e98fc6f29c1b1a250c637e6c5125f2b5f1260e5a7687b55a79e2e8844d",
            ),
        ),
        voxel_size_nm=(5.0, 5.0, 5.0),
        prepare=_prepare_lucchipp,
        convert=_convert_lucchipp,
        members_sha256=LUCCHI_TIFF_SHA256,
    ),
    "mitoem-r": Dataset(
        name="mitoem-r",
        description="MitoEM-R (Wei et al. 2020): rat cortex, 1000 x 4096 x 4096 "
        "at 30 x 8 x 8 nm, instance labels for slices 0-499",
        files=(
            _zip(
                f"{_HF}/EM30/resolve/main/EM30-R-im.zip",
                "6a2cac68adde5d01984542d3ee1d7753d1fa3e6eb2a042ce15ce297c95885bbe",
            ),
            _zip(
                f"{_HF}/MitoEM/resolve/main/EM30-R-mito-train-val-v2.zip",
                "c56380ac575428a818bd293ca3509d1249999846c3702ccbf11d308acdd2ae86",
            ),
        ),
        voxel_size_nm=MITOEM_VOXEL_SIZE_NM,
        prepare=_prepare_mitoem,
        convert=_convert_mitoem,
    ),
    "mitoem-h": Dataset(
        name="mitoem-h",
        description="MitoEM-H (Wei et al. 2020): human cortex, 1000 x 4096 x 4096 "
        "at 30 x 8 x 8 nm, instance labels for slices 0-499",
        files=(
            # Hugging Face holds only a padded variant of these images (EM30-H-im-pad.zip).
            _zip(
                f"{_DROPBOX}/z41qtu4y735j95e/EM30-H-im.zip?dl=1",
                "98fe259f36a7d8d43f99981b7a0ef8cdeba2ce2615ff91595f428ae57207a041",
            ),
            _zip(
                f"{_DROPBOX}/dhf89bc14kemw4e/EM30-H-mito-train-val-v2.zip?dl=1",
                "0e8ed292cfcd0c58701d9f4299244a1b66d6aeb506c85754c34f98a4eda0ef1b",
            ),
        ),
        voxel_size_nm=MITOEM_VOXEL_SIZE_NM,
        prepare=_prepare_mitoem,
        convert=_convert_mitoem,
    ),
}


def file_url(file: RemoteFile, base_url: str | None = None) -> str:
    """The registry URL, or ``base_url/<file name>`` on a mirror (every file flat in one folder)."""
    if not base_url:
        return file.url
    return f"{base_url.rstrip('/')}/{urllib.parse.quote(file.name)}"


# ----------------------------------------------------------------------------- pipeline


def _read_marker(root: Path) -> dict:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _write_marker(root: Path, name: str, hashes: Mapping[str, str], converted: bool) -> None:
    info = {"dataset": name, "sha256": dict(hashes), "converted": converted}
    (root / MARKER).write_text(json.dumps(info, indent=1))


def download_dataset(
    name: str,
    dest: str | Path,
    *,
    base_url: str | None = None,
    convert: bool = True,
    accept_unverified: bool = False,
    keep_archives: bool = False,
    progress: bool = False,
    retries: int = 4,
    backoff_s: float = 2.0,
) -> Result:
    """Download, verify, extract and (with ``convert``) convert dataset ``name`` into
    ``dest/<name>/`` (layout in the module docstring). Each finished stage is skipped when run
    again; a completed dataset is left alone (``Result.already_done``).

    Args:
        name: a key of :data:`DATASETS`.
        base_url: fetch every file from ``base_url/<file name>`` instead (a mirror).
        accept_unverified: use files that have no known checksum (their hash is logged).
        keep_archives: keep ``archives/`` after extraction (deleted by default).
        retries, backoff_s: transient network errors are retried ``retries`` times in a row,
            after ``backoff_s``, then twice as long each time.

    Raises:
        DownloadError (ChecksumError, UnverifiedError, UnsafeArchiveError): see :func:`fetch`
            and :func:`extract_into`.
        mitoseg.io.VolumeError: the extracted data cannot be converted.
    """
    if name not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    dataset = DATASETS[name]
    root = Path(dest).expanduser() / name
    source, out, marker = root / "source", root / "zarr", _read_marker(root)
    converted = bool(marker.get("converted")) and out.is_dir()
    hashes = dict(marker.get("sha256", {}))
    if marker and source.is_dir() and (converted or not convert):
        arrays = tuple(sorted(out.glob("*/*.zarr"))) if converted else ()
        return Result(root, source, arrays, hashes, already_done=True)
    if not source.is_dir():
        archives = root / "archives"
        for file in dataset.files:
            if (archives / file.name).exists():  # renamed there only once verified
                continue
            hashes[file.name] = fetch(
                file_url(file, base_url),
                archives / file.name,
                file.sha256,
                size=file.size,
                accept_unverified=accept_unverified,
                progress=progress,
                retries=retries,
                backoff_s=backoff_s,
            )
            _write_marker(root, name, hashes, converted=False)
        with atomic_dir(source, overwrite=False) as tmp:
            for file in dataset.files:
                extract_into(archives / file.name, tmp, file.kind, progress)
            dataset.prepare(tmp, dataset)
        if not keep_archives:
            shutil.rmtree(archives)
    if convert and not out.is_dir():
        with atomic_dir(out, overwrite=False) as tmp:
            dataset.convert(source, tmp, dataset, progress)
    arrays = tuple(sorted(out.glob("*/*.zarr"))) if convert else ()
    _write_marker(root, name, hashes, converted=convert)
    return Result(root, source, arrays, hashes, already_done=False)
