"""Fetch the public EM datasets (Lucchi++, MitoEM-R, MitoEM-H) and convert them to zarr.

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
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from tqdm import tqdm

from mitoseg.io import MITOEM_VOXEL_SIZE_NM, atomic_dir, convert, convert_release

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MARKER = ".mitoseg-download.json"
TIMEOUT_S = 60.0  # per socket operation
_TRANSIENT = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


class DownloadError(RuntimeError):
    """A download, checksum, archive or layout problem; the message names the file at fault."""


class ChecksumError(DownloadError):
    """A file whose sha256 differs from the one expected."""


class UnverifiedError(DownloadError):
    """A file downloaded without a known checksum and not accepted; ``sha256`` is its hash."""

    def __init__(self, message: str, name: str, sha256: str) -> None:
        super().__init__(message)
        self.name, self.sha256 = name, sha256


class UnsafeArchiveError(DownloadError):
    """An archive member that would be written outside the target folder."""


class ArchiveKind(str, Enum):
    ZIP = "zip"
    TAR_GZ = "tar.gz"
    PLAIN = "plain"  # not an archive: copied into the source folder as it is


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


# ----------------------------------------------------------------------------- checksums


def sha256_file(path: Path, progress: bool = False) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with (
        open(path, "rb") as f,
        _bar(path.stat().st_size, 0, f"sha256 {path.name}", progress) as bar,
    ):
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _bar(total: int | None, initial: int, desc: str, progress: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
    )


def verify_members(folder: Path, expected: Mapping[str, str]) -> None:
    """Check extracted files against their expected sha256.

    Raises:
        ChecksumError: a file is missing or differs; the message names it and both hashes.
    """
    for name, sha in expected.items():
        path = folder / name
        if not path.is_file():
            raise ChecksumError(f"extracted file {name} is missing from {folder}")
        actual = sha256_file(path)
        if actual != sha:
            raise ChecksumError(
                f"extracted file {name}: sha256 {actual}, expected {sha}; the archive holds a "
                "different version of this file (refused; the extraction was discarded)"
            )


# ----------------------------------------------------------------------------- download


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of ``bytes a-b/n`` or ``bytes */n``; None where absent."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _open(url: str, have: int, timeout_s: float) -> http.client.HTTPResponse | None:
    """The response for bytes ``have``..; None when the server says the file is complete."""
    headers = {"User-Agent": "mitoseg-download"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout_s
        )
    except urllib.error.HTTPError as err:
        if err.code == 416 and have and _content_range(err.headers.get("Content-Range"))[1] == have:
            return None
        if err.code == 416:
            raise _Restart(f"server refused to resume at byte {have}") from err
        if err.code == 429 or err.code >= 500:
            raise  # transient: retried
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err


class _Restart(Exception):
    """The partial file cannot be continued: start again from byte 0."""


def _download_once(
    url: str, part: Path, size: int | None, progress: bool, timeout_s: float
) -> None:
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        raise _Restart(f"{part.name} holds {have} bytes, more than the {size} expected")
    if size is not None and have == size:
        return
    response = _open(url, have, timeout_s)
    if response is None:
        return
    with response:
        length = response.headers.get("Content-Length")
        start, total = _content_range(response.headers.get("Content-Range"))
        if response.status == 206 and start != have:
            raise _Restart(f"server answered from byte {start}, not {have}")
        if response.status == 200 and have:
            logger.warning("%s ignores Range requests: restarting %s from 0", url, part.name)
            have = 0
        elif response.status not in (200, 206):
            raise DownloadError(f"{url}: unexpected HTTP status {response.status}")
        if total is None and length is not None:
            total = have + int(length)
        if size is not None and total is not None and total != size:
            raise DownloadError(f"{url}: the server has {total} bytes, the registry expects {size}")
        with open(part, "ab" if have else "wb") as f, _bar(total, have, part.name, progress) as bar:
            while block := response.read(CHUNK_BYTES):
                f.write(block)
                bar.update(len(block))
    got = part.stat().st_size
    if total is not None and got < total:
        raise ConnectionError(f"connection closed after {got} of {total} bytes")


def _download(
    url: str, part: Path, size: int | None, progress: bool, retries: int, backoff_s: float
) -> None:
    attempt = restarted = last = 0
    while True:
        try:
            return _download_once(url, part, size, progress, TIMEOUT_S)
        except _Restart as why:
            if restarted:
                raise DownloadError(f"{url}: cannot resume {part.name}: {why}") from None
            logger.warning("%s: %s; restarting the download from 0", part.name, why)
            part.unlink(missing_ok=True)
            restarted = 1
        except _TRANSIENT as err:
            done = part.stat().st_size if part.exists() else 0
            attempt = 1 if done > last else attempt + 1  # a transfer that moved on resets it
            last = done
            if attempt > retries:
                raise DownloadError(
                    f"{url}: {err}; gave up after {retries} retries with {done} bytes in "
                    f"{part} (run again to resume)"
                ) from err
            delay = backoff_s * 2 ** (attempt - 1)
            logger.warning("%s: %s; retry %d/%d in %.0f s", url, err, attempt, retries, delay)
            time.sleep(delay)


def fetch(
    url: str,
    dest: Path,
    sha256: str | None,
    *,
    size: int | None = None,
    accept_unverified: bool = False,
    progress: bool = False,
    retries: int = 4,
    backoff_s: float = 2.0,
) -> str:
    """Download ``url`` to ``dest`` with resume, retries and sha256 verification.

    Bytes go to ``dest.part``, continued with a Range request on the next call (restarted
    from 0 when the server ignores Range). ``dest`` appears, by rename, only once verified.

    Returns:
        The sha256 of ``dest``.

    Raises:
        ChecksumError: the hash differs from ``sha256``; the file is kept as ``dest.bad``.
        UnverifiedError: ``sha256`` is None and not ``accept_unverified``; the file is kept
            as ``dest.unverified`` and a later call (accepting it) uses it without downloading.
        DownloadError: an HTTP error, or transient errors beyond ``retries``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, held = _sibling(dest, ".part"), _sibling(dest, ".unverified")
    if held.exists():  # complete, refused by an earlier run only for its unknown checksum
        os.replace(held, part)
    else:
        logger.info("downloading %s -> %s", url, dest)
        _download(url, part, size, progress, retries, backoff_s)
    actual = sha256_file(part, progress)
    if sha256 is None and not accept_unverified:
        os.replace(part, held)
        raise UnverifiedError(
            f"{dest.name}: no checksum is known for {url}; its sha256 is {actual}. Check it "
            f"against a trusted source, then run again with --accept-unverified (the file is "
            f"kept as {held})",
            dest.name,
            actual,
        )
    if sha256 is None:
        logger.warning("%s: accepted without a known checksum; sha256 %s", dest.name, actual)
    elif actual != sha256.lower():
        bad = _sibling(dest, ".bad")
        os.replace(part, bad)
        raise ChecksumError(
            f"{dest.name} from {url}: sha256 {actual}, expected {sha256}; the file is kept "
            f"aside as {bad} for inspection; the next run downloads it again"
        )
    os.replace(part, dest)
    return actual


# ----------------------------------------------------------------------------- extraction


def _check_name(name: str, archive: Path) -> None:
    path = name.replace("\\", "/")
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} has an absolute path; refused")
    if ".." in path.split("/"):
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} contains '..'; refused")


def _check_link(name: str, target: str, archive: Path, hard: bool = False) -> None:
    """A link target must be relative and stay inside the folder (hard links: from its top)."""
    base = "" if hard else posixpath.dirname(name.replace("\\", "/"))
    resolved = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
    if target.startswith(("/", "\\")) or resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(
            f"{archive.name}: member {name!r} links to {target!r}, outside the target folder; "
            "refused"
        )


def _skipped(name: str) -> bool:
    return name.split("/", 1)[0] == "__MACOSX"  # macOS resource forks, not data


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _extract_zip(archive: Path, folder: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        links = []
        for info in zf.infolist():
            _check_name(info.filename, archive)
            if stat.S_ISLNK(info.external_attr >> 16):
                target = zf.read(info).decode()
                _check_link(info.filename, target, archive)
                if not _skipped(info.filename):
                    links.append((info.filename, target))
        files = [i for i in zf.infolist() if not _skipped(i.filename)]
        for info in tqdm(files, desc=f"extract {archive.name}", disable=not progress):
            if not stat.S_ISLNK(info.external_attr >> 16):
                zf.extract(info, folder)
    # Links last, so no file is written through one; realpath catches a chain that escapes.
    for name, target in links:
        link = folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
        if not _inside(link, folder):
            link.unlink()
            raise UnsafeArchiveError(
                f"{archive.name}: link {name!r} -> {target!r} escapes; refused"
            )


def _extract_tar(archive: Path, folder: Path, progress: bool) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        for m in members:
            _check_name(m.name, archive)
            if m.issym() or m.islnk():
                _check_link(m.name, m.linkname, archive, hard=m.islnk())
            elif not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(f"{archive.name}: member {m.name!r} is a device or fifo")
        kept = [m for m in members if not _skipped(m.name)]
        try:  # the "data" filter checks the real paths again while extracting
            for m in tqdm(kept, desc=f"extract {archive.name}", disable=not progress):
                tf.extract(m, folder, filter="data")
        except tarfile.FilterError as err:
            member = getattr(err, "tarinfo", None)
            raise UnsafeArchiveError(
                f"{archive.name}: member {getattr(member, 'name', '?')!r}: {err}; refused"
            ) from err


def extract_into(archive: Path, folder: Path, kind: ArchiveKind, progress: bool = False) -> None:
    """Extract ``archive`` into the existing ``folder``, refusing unsafe members first.

    Every member is checked before anything is written: absolute paths, ``..`` components,
    links whose target leaves ``folder`` and (tar) devices are refused. ``__MACOSX/`` is
    skipped. A plain file is copied as it is.

    Raises:
        UnsafeArchiveError: names the archive and the member.
        DownloadError: the archive cannot be read.
    """
    archive, folder, kind = Path(archive), Path(folder), ArchiveKind(kind)
    try:
        if kind is ArchiveKind.ZIP:
            _extract_zip(archive, folder, progress)
        elif kind is ArchiveKind.TAR_GZ:
            _extract_tar(archive, folder, progress)
        else:
            shutil.copyfile(archive, folder / archive.name)
    except (zipfile.BadZipFile, tarfile.ReadError, EOFError) as err:
        raise DownloadError(f"cannot extract {archive}: {err}") from err


def extract(archive: Path, dest: Path, kind: ArchiveKind, progress: bool = False) -> Path:
    """Extract into a temporary folder next to ``dest`` and rename it to ``dest`` when done.

    Raises:
        UnsafeArchiveError, DownloadError: as :func:`extract_into`; ``dest`` is not created.
    """
    with atomic_dir(Path(dest), overwrite=False) as tmp:
        extract_into(archive, tmp, kind, progress)
    return Path(dest)


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
# Label folders of the MitoEM label archives -> the names mitoseg.io.convert_release reads.
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
