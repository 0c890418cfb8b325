"""Transfer and unpack files safely: HTTP download with resume, sha256, safe extraction.

:func:`fetch` downloads to ``<file>.part`` (continued by HTTP Range requests on the next call),
verifies its sha256 and only then renames it to ``<file>``; a mismatch is kept aside as
``<file>.bad``, a file without a known checksum as ``<file>.unverified`` until the caller accepts
it. :func:`extract_into` refuses every archive member that would land outside the target folder
before writing anything. The datasets themselves are in :mod:`mitoseg.datasets.registry`.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from enum import Enum
from pathlib import Path

from tqdm import tqdm

from mitoseg.io import atomic_dir

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
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
