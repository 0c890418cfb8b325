"""Tests for mitoseg.datasets.fetch and .registry and mitoseg-download, on a local HTTP server."""

from __future__ import annotations

import hashlib
import io
import re
import stat
import tarfile
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import tifffile
from PIL import Image

from mitoseg.cli.download import main
from mitoseg.datasets import registry
from mitoseg.datasets.fetch import (
    ArchiveKind,
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    extract,
    fetch,
)
from mitoseg.files import MARKER_FILE
from mitoseg.io import open_volume
from tests.conftest import LUCCHI
from tests.fake_mitoem import write_fake_release


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.root``; Range requests when ``server.ranges``; can drop a connection."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        path = server.root / unquote(urlparse(self.path).path).lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data, start = path.read_bytes(), 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and server.ranges:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_after is not None:  # promise the whole body, send part, hang up
            body, server.cut_after = body[: server.cut_after], None
            self.close_connection = True
        # Recorded before writing: the client may finish reading before this thread resumes.
        server.served.append(len(body))
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.ranges, self.cut_after = root, True, None
        self.requests: list[tuple[str, str | None]] = []
        self.served: list[int] = []
        self.url = f"http://127.0.0.1:{self.server_port}"


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = _Server(root)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload(size: int = 300_000) -> bytes:
    return np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()


def _patch(monkeypatch, name: str, server: _Server, **changes) -> None:
    """Registry entry ``name`` with the sha256 of the archives the server holds."""
    dataset = registry.DATASETS[name]
    files = tuple(
        replace(f, sha256=_sha((server.root / f.name).read_bytes())) for f in dataset.files
    )
    monkeypatch.setitem(registry.DATASETS, name, replace(dataset, files=files, **changes))


# ----------------------------------------------------------------------------- Lucchi++


@pytest.fixture
def lucchi_zip(server, tmp_path):
    """lucchi_pp.zip on the server: lucchi++/{train,test}_{im,label}.tif, (5, 16, 20) each."""
    rng = np.random.default_rng(0)
    volumes = {}
    for split in ("train", "test"):
        volumes[f"{split}_im.tif"] = rng.integers(0, 256, (5, 16, 20), dtype=np.uint8)
        volumes[f"{split}_label.tif"] = np.where(rng.random((5, 16, 20)) > 0.7, 255, 0)
    members = {}
    with zipfile.ZipFile(server.root / "lucchi_pp.zip", "w") as zf:
        for name, volume in volumes.items():
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, volume.astype(np.uint8))
            zf.writestr(f"lucchi++/{name}", buffer.getvalue())
            members[name] = _sha(buffer.getvalue())
    return volumes, members


def test_lucchipp_download_extract_convert_then_nothing_to_do(
    server, lucchi_zip, monkeypatch, tmp_path, capsys
):
    volumes, members = lucchi_zip
    _patch(monkeypatch, "lucchipp", server, members_sha256=members)
    argv = ["lucchipp", "--dest", str(tmp_path / "d"), "--base-url", server.url + "/"]
    assert main([*argv, "--no-progress"]) == 0
    root = tmp_path / "d" / "lucchipp"
    for split in ("train", "test"):
        raw, labels = open_volume(root / f"zarr/{split}/raw.zarr"), None
        labels = open_volume(root / f"zarr/{split}/labels.zarr")
        np.testing.assert_array_equal(raw[:], volumes[f"{split}_im.tif"])
        np.testing.assert_array_equal(labels[:], volumes[f"{split}_label.tif"] > 0)
        assert raw.attrs["voxel_size_nm"] == [5.0, 5.0, 5.0]
    assert not (root / "archives").exists()
    assert server.requests == [("/lucchi_pp.zip", None)]
    assert _sha((server.root / "lucchi_pp.zip").read_bytes()) in capsys.readouterr().out

    assert main(argv) == 0
    assert "lucchipp: already done" in capsys.readouterr().out
    assert len(server.requests) == 1


def test_lucchipp_extracted_member_with_other_checksum_is_refused(
    server, lucchi_zip, monkeypatch, tmp_path, capsys
):
    _, members = lucchi_zip
    wrong = {**members, "train_label.tif": "ab" * 32}
    _patch(monkeypatch, "lucchipp", server, members_sha256=wrong)
    assert main(["lucchipp", "--dest", str(tmp_path / "d"), "--base-url", server.url]) == 1
    err = capsys.readouterr().err
    assert "train_label.tif" in err and "ab" * 32 in err and members["train_label.tif"] in err
    assert not (tmp_path / "d" / "lucchipp" / "source").exists()


def test_lucchipp_casser_release_layout(server, monkeypatch, tmp_path):
    """Lucchi++/Train_In/mask0000.png ... and Train_Out/0.png ... (RGBA), in natural order."""
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, (12, 16, 20), dtype=np.uint8)
    mask = rng.random((12, 16, 20)) > 0.6
    with zipfile.ZipFile(server.root / "lucchi_pp.zip", "w") as zf:
        for split in ("Train", "Test"):
            for z in range(12):
                for name, image in (
                    (f"{split}_In/mask{z:04d}.png", Image.fromarray(raw[z])),
                    (f"{split}_Out/{z}.png", Image.fromarray(mask[z]).convert("RGBA")),
                ):
                    buffer = io.BytesIO()
                    image.save(buffer, format="PNG")
                    zf.writestr(f"Lucchi++/{name}", buffer.getvalue())
    _patch(monkeypatch, "lucchipp", server)
    first = registry.download_dataset("lucchipp", tmp_path, base_url=server.url, convert=False)
    assert first.arrays == () and (first.source / "Lucchi++" / "Test_Out" / "11.png").is_file()
    assert not (first.root / "zarr").exists()
    result = registry.download_dataset("lucchipp", tmp_path, base_url=server.url)
    assert not result.already_done and len(server.requests) == 1  # converts what it has
    assert [p.relative_to(result.root / "zarr").as_posix() for p in result.arrays] == [
        "test/labels.zarr",
        "test/raw.zarr",
        "train/labels.zarr",
        "train/raw.zarr",
    ]
    np.testing.assert_array_equal(open_volume(result.root / "zarr/train/raw.zarr")[:], raw)
    np.testing.assert_array_equal(open_volume(result.root / "zarr/test/labels.zarr")[:], mask)


def test_unknown_checksum_is_refused_with_the_hash_then_accepted(
    server, lucchi_zip, monkeypatch, tmp_path, capsys
):
    _, members = lucchi_zip
    dataset = registry.DATASETS["lucchipp"]
    files = tuple(replace(f, sha256=None) for f in dataset.files)
    monkeypatch.setitem(
        registry.DATASETS, "lucchipp", replace(dataset, files=files, members_sha256=members)
    )
    monkeypatch.setenv("MITOSEG_DOWNLOAD_BASE_URL", server.url)
    argv = ["lucchipp", "--dest", str(tmp_path)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    actual = _sha((server.root / "lucchi_pp.zip").read_bytes())
    assert f"{actual}  lucchi_pp.zip" in captured.out
    assert "checksum unknown" in captured.err and "--accept-unverified" in captured.err
    assert not (tmp_path / "lucchipp" / "source").exists()

    assert main([*argv, "--accept-unverified"]) == 0
    assert len(server.requests) == 1  # the refused file was kept, not fetched again
    assert (tmp_path / "lucchipp" / "zarr" / "test" / "labels.zarr").is_dir()


def test_wrong_archive_checksum_is_refused_and_kept_aside(server, tmp_path, capsys, monkeypatch):
    payload = _payload()
    (server.root / "lucchi_pp.zip").write_bytes(payload)
    _patch(monkeypatch, "lucchipp", server)
    dataset = registry.DATASETS["lucchipp"]
    files = (replace(dataset.files[0], sha256="0" * 64),)
    monkeypatch.setitem(registry.DATASETS, "lucchipp", replace(dataset, files=files))
    assert main(["lucchipp", "--dest", str(tmp_path), "--base-url", server.url]) == 1
    err = capsys.readouterr().err
    assert "lucchi_pp.zip" in err and "0" * 64 in err and _sha(payload) in err
    archives = tmp_path / "lucchipp" / "archives"
    assert (archives / "lucchi_pp.zip.bad").read_bytes() == payload
    assert not (archives / "lucchi_pp.zip").exists()


# ----------------------------------------------------------------------------- MitoEM


def test_mitoem_release_archives_convert(server, monkeypatch, tmp_path):
    """The real archive layout: im/ in one zip, mito-train-v2/ and mito-val-v2/ in the other."""
    release = write_fake_release(tmp_path / "release", depth=(8, 4, 8), size=64, with_json=False)
    root = release["root"]
    with zipfile.ZipFile(server.root / "EM30-R-im.zip", "w") as zf:
        for path in sorted((root / "im").iterdir()):
            zf.write(path, f"im/{path.name}")
        zf.writestr("__MACOSX/im/._im0000.png", b"resource fork")
    with zipfile.ZipFile(server.root / "EM30-R-mito-train-val-v2.zip", "w") as zf:
        for split in ("train", "val"):
            for path in sorted((root / f"mito_{split}").iterdir()):
                zf.write(path, f"mito-{split}-v2/{path.name}")
    _patch(monkeypatch, "mitoem-r", server)
    result = registry.download_dataset("mitoem-r", tmp_path / "d", base_url=server.url)
    extracted = sorted(p.name for p in result.source.iterdir() if p.name != MARKER_FILE)
    assert extracted == ["im", "mito_train", "mito_val"]
    for split, (z0, z1) in release["splits"].items():
        raw = open_volume(result.root / "zarr" / split / "raw.zarr")
        np.testing.assert_array_equal(raw[:], release["raw"][z0:z1])
        assert raw.attrs["voxel_size_nm"] == [30.0, 8.0, 8.0]
        if split != "test":
            labels = open_volume(result.root / "zarr" / split / "labels.zarr")
            np.testing.assert_array_equal(labels[:], release["labels"][z0:z1])
    assert not (result.root / "zarr" / "test" / "labels.zarr").exists()


# ----------------------------------------------------------------------------- fetch


def test_resume_fetches_only_the_missing_bytes(server, tmp_path):
    payload = _payload()
    (server.root / "a.bin").write_bytes(payload)
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(payload[:100_000])
    assert fetch(f"{server.url}/a.bin", dest, _sha(payload)) == _sha(payload)
    assert dest.read_bytes() == payload and not (tmp_path / "a.bin.part").exists()
    assert server.requests == [("/a.bin", "bytes=100000-")]
    assert server.served == [len(payload) - 100_000]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    payload = _payload()
    (server.root / "a.bin").write_bytes(payload)
    server.ranges = False
    (tmp_path / "a.bin.part").write_bytes(b"stale bytes from another version")
    fetch(f"{server.url}/a.bin", tmp_path / "a.bin", _sha(payload))
    assert (tmp_path / "a.bin").read_bytes() == payload
    assert server.served == [len(payload)]


def test_complete_part_file_is_verified_without_downloading_again(server, tmp_path):
    payload = _payload()
    (server.root / "a.bin").write_bytes(payload)
    (tmp_path / "a.bin.part").write_bytes(payload)
    fetch(f"{server.url}/a.bin", tmp_path / "a.bin", _sha(payload))  # the server answers 416
    assert (tmp_path / "a.bin").read_bytes() == payload and server.served == []


def test_known_size_skips_a_complete_part_and_refuses_a_different_one(server, tmp_path):
    payload = _payload()
    (server.root / "a.bin").write_bytes(payload)
    (tmp_path / "a.bin.part").write_bytes(payload)
    fetch(f"{server.url}/a.bin", tmp_path / "a.bin", _sha(payload), size=len(payload))
    assert server.requests == []
    with pytest.raises(DownloadError, match=f"has {len(payload)} bytes, the registry expects 7"):
        fetch(f"{server.url}/a.bin", tmp_path / "b.bin", _sha(payload), size=7)


def test_dropped_connection_is_retried_from_where_it_stopped(server, tmp_path):
    payload = _payload()
    (server.root / "a.bin").write_bytes(payload)
    server.cut_after = 50_000
    fetch(f"{server.url}/a.bin", tmp_path / "a.bin", _sha(payload), retries=2, backoff_s=0)
    assert (tmp_path / "a.bin").read_bytes() == payload
    assert server.served == [50_000, len(payload) - 50_000]
    assert server.requests[1] == ("/a.bin", "bytes=50000-")


def test_wrong_checksum_names_file_and_both_hashes(server, tmp_path):
    payload = _payload(1000)
    (server.root / "a.bin").write_bytes(payload)
    with pytest.raises(ChecksumError) as info:
        fetch(f"{server.url}/a.bin", tmp_path / "a.bin", "f" * 64)
    assert "a.bin" in str(info.value) and "f" * 64 in str(info.value)
    assert _sha(payload) in str(info.value) and "a.bin.bad" in str(info.value)
    assert not (tmp_path / "a.bin").exists()


def test_missing_file_fails_at_once(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        fetch(f"{server.url}/nope.zip", tmp_path / "nope.zip", None, backoff_s=0)
    assert len(server.requests) == 1


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/abs/evil", "a\\..\\..\\evil"])
def test_zip_member_outside_target_is_refused(tmp_path, name):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", b"ok")
        zf.writestr(zipfile.ZipInfo(name), b"evil")
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(name))):
        extract(archive, tmp_path / "out" / "x", ArchiveKind.ZIP)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out" / "x").exists()
    assert list((tmp_path / "out").iterdir()) == []  # nothing extracted, no temporary left


def _zip_link(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, target)


def test_zip_links_inside_are_kept_and_outside_refused(tmp_path):
    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("d/a.txt", b"data")
        _zip_link(zf, "d/link", "a.txt")
    with zipfile.ZipFile(bad, "w") as zf:
        _zip_link(zf, "d/link", "../../outside")
    out = extract(good, tmp_path / "good", ArchiveKind.ZIP)
    assert (out / "d" / "link").is_symlink() and (out / "d" / "link").read_bytes() == b"data"
    with pytest.raises(UnsafeArchiveError, match="'d/link'"):
        extract(bad, tmp_path / "bad", ArchiveKind.ZIP)


def _tar(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for member in members:
            data = b"x" * member.size
            tf.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, target, 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("/tmp/mitoseg-abs-evil"),
        _member("sub/../../evil"),
        _member("link", tarfile.SYMTYPE, "../outside"),
        _member("a/link", tarfile.SYMTYPE, "/etc"),
        _member("hard", tarfile.LNKTYPE, "../outside"),
    ],
    ids=["absolute", "dotdot", "symlink-up", "symlink-absolute", "hardlink-up"],
)
def test_tar_member_outside_target_is_refused(tmp_path, member):
    archive = _tar(tmp_path / "bad.tar.gz", _member("fine.txt"), member)
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(member.name))):
        extract(archive, tmp_path / "out", ArchiveKind.TAR_GZ)
    assert not (tmp_path / "out").exists()
    assert not Path("/tmp/mitoseg-abs-evil").exists()


def test_tar_with_inside_links_extracts(tmp_path):
    archive = _tar(
        tmp_path / "ok.tar.gz",
        _member("d/a.txt"),
        _member("d/sym", tarfile.SYMTYPE, "a.txt"),
        _member("d/hard", tarfile.LNKTYPE, "d/a.txt"),
    )
    out = extract(archive, tmp_path / "out", ArchiveKind.TAR_GZ)
    assert (out / "d" / "sym").read_bytes() == b"x" and (out / "d" / "hard").read_bytes() == b"x"


# ----------------------------------------------------------------------------- registry


def test_registry_entries_are_well_formed():
    names = [f.name for d in registry.DATASETS.values() for f in d.files]
    assert len(names) == len(set(names)), "a mirror serves every file by name in one folder"
    assert set(registry.DATASETS) == {"lucchipp", "mitoem-r", "mitoem-h"}
    for key, dataset in registry.DATASETS.items():
        assert dataset.name == key and dataset.files
        for file in dataset.files:
            assert file.url.startswith(("https://", "http://"))
            assert file.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", file.sha256)
            assert "?" not in file.name and file.url.split("?")[0].endswith(file.name)
            assert registry.file_url(file, "http://m/x/") == f"http://m/x/{file.name}"


@pytest.mark.realdata
def test_lucchi_member_checksums_match_the_shared_copy():
    listed = dict(
        reversed(line.split()) for line in (LUCCHI / "SHA256SUMS.txt").read_text().splitlines()
    )
    assert {n: listed[n] for n in registry.LUCCHI_TIFF_SHA256} == registry.LUCCHI_TIFF_SHA256
