"""Outputs appear whole or not at all (mitoseg.files): files, folders, resumable outputs."""

from __future__ import annotations

import pytest

from mitoseg.files import (
    OutputExistsError,
    atomic_dir,
    partial_path,
    publish,
    write_atomic,
    write_json_atomic,
)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    path = write_json_atomic(tmp_path / "m.json", {"a": 1})

    def broken(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, broken)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_folder_appears_complete_and_replaces_only_with_overwrite(tmp_path) -> None:
    dst = tmp_path / "out.zarr"
    finished = []
    with atomic_dir(dst, overwrite=False, finish=finished.append) as tmp:
        (tmp / "data").write_text("1")
        assert not dst.exists()
    assert (dst / "data").read_text() == "1" and len(finished) == 1
    with pytest.raises(OutputExistsError, match="out.zarr already exists"):
        with atomic_dir(dst, overwrite=False):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(dst, overwrite=True) as tmp:
            (tmp / "data").write_text("2")
            raise RuntimeError("interrupted")
    assert (dst / "data").read_text() == "1"  # the old output is untouched
    with atomic_dir(dst, overwrite=True) as tmp:
        (tmp / "data").write_text("2")
    assert (dst / "data").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_resumable_output_is_published_over_the_old_one(tmp_path) -> None:
    dst = tmp_path / "probs.zarr"
    dst.mkdir()
    (dst / "old").write_text("old")
    partial = partial_path(dst)
    assert partial.name == ".probs.zarr.partial"
    partial.mkdir()
    (partial / "new").write_text("new")
    publish(partial, dst)
    assert [p.name for p in dst.iterdir()] == ["new"] and not partial.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probs.zarr"]
