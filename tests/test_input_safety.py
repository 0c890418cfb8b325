"""No command writes into its own input; ``overwrite`` replaces only what mitoseg wrote
(issue 20, point 1). Each CLI is called in-process on tiny volumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from omegaconf import open_dict

from mitoseg import io
from mitoseg.cli import convert as convert_cli
from mitoseg.cli import download as download_cli
from mitoseg.cli import export as export_cli
from mitoseg.cli import measure as measure_cli
from mitoseg.cli import view as view_cli
from mitoseg.cli.common import compose_config
from mitoseg.cli.predict import predict
from mitoseg.cli.segment import segment
from mitoseg.cli.train import check_data_apart
from mitoseg.files import (
    MARKER_ATTR,
    MARKER_FILE,
    UnsafeOutputError,
    atomic_dir,
    check_output_apart,
    write_atomic,
    written_by_mitoseg,
)
from tests.helpers import predict_config
from tests.test_config import compose_train

CKPT = Path(__file__).parent / "fixtures" / "layout_v0.ckpt"
VOXEL = [50.0, 4.6, 4.6]


def _raw(path: Path) -> Path:
    data = np.random.default_rng(0).integers(0, 255, (4, 16, 16), dtype=np.uint8)
    io.write_volume(
        path, data, attrs={"axes": list(io.AXES), "voxel_size_nm": VOXEL, "kind": "raw"}
    )
    return path


def _instances(path: Path) -> Path:
    ids = np.zeros((4, 16, 16), np.uint32)
    ids[1:3, 2:6, 2:6], ids[1:3, 9:13, 9:13] = 1, 2
    attrs = {"axes": list(io.AXES), "voxel_size_nm": VOXEL, "kind": "instances"}
    io.write_volume(path, ids, attrs=attrs)
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- the guard ---------------------------------------------------------------------------


def test_guard_names_both_paths_for_equal_inside_and_containing(tmp_path, monkeypatch) -> None:
    data = tmp_path / "data" / "X.zarr"
    data.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cases = {
        "data/X.zarr": "is the input",
        "data/../data/X.zarr/": "is the input",
        "data/X.zarr/probs.zarr": "lies inside the input",
        "data": "contains the input",
    }
    for output, how in cases.items():
        with pytest.raises(UnsafeOutputError, match=how) as err:
            check_output_apart(output, [None, "data/X.zarr"])
        assert output in str(err.value) and "data/X.zarr" in str(err.value)
    os.symlink(data, tmp_path / "link.zarr")
    with pytest.raises(UnsafeOutputError, match=r"link\.zarr \(= .*data/X\.zarr\) is the input"):
        check_output_apart("link.zarr", [data])
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UnsafeOutputError, match="is the input"):
        check_output_apart("~/data/X.zarr", [data])
    check_output_apart("data/X2.zarr", [data])  # a sibling with a common prefix is apart


def test_overwrite_replaces_only_folders_mitoseg_wrote(tmp_path) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    with pytest.raises(UnsafeOutputError, match=r"mine was not written by mitoseg"):
        with atomic_dir(user, overwrite=True):
            pass
    assert (user / "thesis.tex").read_text() == "years of work"
    with pytest.raises(UnsafeOutputError, match="is a folder"):
        write_atomic(user, lambda tmp: tmp.write_text("x"))
    assert (user / "thesis.tex").exists()
    with pytest.raises(UnsafeOutputError, match="is a file"):  # a folder output over a file
        with atomic_dir(user / "thesis.tex", overwrite=True):
            pass
    ours = tmp_path / "ours"
    with atomic_dir(ours, overwrite=False) as tmp:
        (tmp / "a").write_text("1")
    assert (ours / MARKER_FILE).is_file() and written_by_mitoseg(ours)
    with atomic_dir(ours, overwrite=True) as tmp:
        (tmp / "a").write_text("2")
    assert (ours / "a").read_text() == "2"


def test_volumes_carry_the_marker_and_older_volumes_count_as_ours(tmp_path) -> None:
    volume = _raw(tmp_path / "v.zarr")
    meta = json.loads((volume / "zarr.json").read_text())
    assert MARKER_ATTR in meta["attributes"] and not (volume / MARKER_FILE).exists()
    # Before the marker: a volume of ours by its attributes (kind, axes + voxel_size_nm).
    del meta["attributes"][MARKER_ATTR]
    (volume / "zarr.json").write_text(json.dumps(meta))
    assert written_by_mitoseg(volume)
    io.write_volume(volume, np.ones((2, 4, 4), np.uint8), overwrite=True)
    # Somebody else's zarr: not ours.
    import zarr

    zarr.create_array(str(tmp_path / "theirs.zarr"), shape=(2, 4, 4), dtype="u1")
    assert not written_by_mitoseg(tmp_path / "theirs.zarr")
    with pytest.raises(UnsafeOutputError, match=r"theirs\.zarr was not written by mitoseg"):
        io.write_volume(tmp_path / "theirs.zarr", np.ones((2, 4, 4), np.uint8), overwrite=True)
    assert io.open_volume(tmp_path / "theirs.zarr").shape == (2, 4, 4)


# --- every CLI ---------------------------------------------------------------------------


def test_convert_into_its_own_input_is_refused_and_keeps_the_voxel_size(tmp_path, capsys) -> None:
    """Before: ``mitoseg-convert X X --overwrite`` reset X's voxel size to 1 x 1 x 1."""
    x = _raw(tmp_path / "X.zarr")
    os.symlink(x, tmp_path / "alias.zarr")
    for dst in (x, tmp_path / "alias.zarr", x / "inner.zarr"):
        assert convert_cli.main([str(x), str(dst), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"output {dst}" in err and str(x) in err
    assert io.open_volume(x).attrs["voxel_size_nm"] == VOXEL
    assert not (x / "inner.zarr").exists()
    # Pair mode: an output (DIR/raw.zarr) equal to a source.
    raw = _raw(tmp_path / "raw.zarr")
    args = ["--raw", str(raw), "--labels-src", str(x), "--out", str(tmp_path), "--overwrite"]
    assert convert_cli.main(args) == 2
    assert "raw.zarr is the input" in capsys.readouterr().err
    assert io.open_volume(raw).attrs["voxel_size_nm"] == VOXEL
    assert "labels.zarr" not in os.listdir(tmp_path)


def test_convert_overwrite_keeps_a_folder_mitoseg_did_not_write(tmp_path, capsys) -> None:
    tifffile.imwrite(tmp_path / "a.tif", np.ones((2, 8, 8), np.uint8))
    user = tmp_path / "results"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    assert convert_cli.main([str(tmp_path / "a.tif"), str(user), "--overwrite"]) == 2
    assert "results was not written by mitoseg" in capsys.readouterr().err
    assert (user / "notes.txt").read_text() == "mine"


def test_predict_into_its_input_is_refused_before_loading(tmp_path, monkeypatch) -> None:
    """Before: ``output=X.zarr overwrite=true`` replaced the raw volume with probabilities."""
    x = _raw(tmp_path / "X.zarr")
    monkeypatch.chdir(tmp_path)
    for output in ("X.zarr", str(x), "X.zarr/probs.zarr", "."):
        for overwrite in ("false", "true"):
            cfg = predict_config(
                tmp_path, "ckpt=missing.ckpt", "input=X.zarr", f"output={output}",
                f"overwrite={overwrite}",
            )  # fmt: skip
            with pytest.raises(UnsafeOutputError, match=r"X\.zarr") as err:
                predict(cfg)  # not CheckpointError: refused before the checkpoint is read
            assert "pass overwrite" not in str(err.value)
    cfg = predict_config(tmp_path, "ckpt=m.ckpt", "input=X.zarr", "output=m.ckpt", "overwrite=true")
    with pytest.raises(UnsafeOutputError, match=r"output m\.ckpt .*is the input m\.ckpt"):
        predict(cfg)
    np.testing.assert_array_equal(io.open_volume(x).attrs["voxel_size_nm"], VOXEL)
    assert io.open_volume(x).ndim == 3


def test_predict_overwrite_replaces_its_own_output_but_no_user_folder(tmp_path) -> None:
    x = _raw(tmp_path / "X.zarr")
    user = tmp_path / "user"
    user.mkdir()
    (user / "keep").write_text("mine")
    cfg = predict_config(tmp_path, f"ckpt={CKPT}", f"input={x}", f"output={user}", "overwrite=true")
    with pytest.raises(UnsafeOutputError, match="user was not written by mitoseg"):
        predict(cfg)
    assert (user / "keep").read_text() == "mine"
    out = tmp_path / "probs.zarr"
    for overwrite in ("false", "true"):  # the second replaces the first: ours
        cfg = predict_config(
            tmp_path, f"ckpt={CKPT}", f"input={x}", f"output={out}", f"overwrite={overwrite}"
        )
        predict(cfg)
        assert io.open_volume(out).attrs["kind"] == "probabilities"


def test_measure_into_its_input_is_refused(tmp_path, capsys) -> None:
    """Before: ``mitoseg-measure X --out X`` wrote its tables into the input store."""
    x = _instances(tmp_path / "X.zarr")
    before = _listing(x)
    for out in (x, x / "tables"):
        assert measure_cli.main([str(x), "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "lies inside the input" in err and str(x) in err
    assert _listing(x) == before
    # DIR may hold the input (documented): outputs beside it are fine.
    assert measure_cli.main([str(x), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "objects.csv").is_file() and (tmp_path / ".mitoseg-measure").is_file()
    assert measure_cli.main([str(x), "--out", str(tmp_path), "--overwrite"]) == 0


def test_measure_overwrite_keeps_tables_it_did_not_write(tmp_path, capsys) -> None:
    x = _instances(tmp_path / "X.zarr")
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "objects.csv").write_text("my own table")
    assert measure_cli.main([str(x), "--out", str(out), "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (out / "objects.csv").read_text() == "my own table"
    # An output folder of a version before the marker counts by its summary.json.
    (out / "summary.json").write_text(json.dumps({"labels": "x", "min_voxels": 1, "count": 0}))
    assert measure_cli.main([str(x), "--out", str(out), "--overwrite"]) == 0
    assert (out / "objects.csv").read_text().startswith("id,")


def test_export_into_its_input_is_refused(tmp_path, capsys) -> None:
    """Before: ``mitoseg-export X X --overwrite`` replaced the zarr store by an HDF5 file."""
    x = _instances(tmp_path / "X.zarr")
    for dst in (x, x / "out.h5", tmp_path):
        assert export_cli.main([str(x), str(dst), "--overwrite"]) == 2
        assert str(x) in capsys.readouterr().err
    assert x.is_dir() and io.open_volume(x).shape == (4, 16, 16)


def test_export_overwrite_replaces_only_its_own_exports(tmp_path, capsys) -> None:
    x = _instances(tmp_path / "X.zarr")
    theirs = tmp_path / "gt.h5"
    with h5py.File(theirs, "w") as f:
        f["main"] = np.ones((4, 16, 16), np.uint32)
    assert export_cli.main([str(x), str(theirs), "--overwrite"]) == 2
    assert "gt.h5 was not written by mitoseg-export" in capsys.readouterr().err
    with h5py.File(theirs) as f:
        assert f["main"][0, 0, 0] == 1
    ours = tmp_path / "sub.h5"
    assert export_cli.main([str(x), str(ours)]) == 0
    assert export_cli.main([str(x), str(ours), "--overwrite"]) == 0
    with h5py.File(ours) as f:
        assert MARKER_ATTR in f.attrs and f["main"][1, 2, 2] == 1


def test_view_png_into_an_input_is_refused(tmp_path, capsys) -> None:
    """Before: ``--png raw.zarr`` replaced the raw store with a PNG."""
    x = _raw(tmp_path / "X.zarr")
    inst = _instances(tmp_path / "inst.zarr")
    for png in (x, inst / "overlay.png"):
        assert view_cli.main([str(x), "--instances", str(inst), "--png", str(png)]) == 2
        assert "mitoseg never writes into its own input" in capsys.readouterr().err
    assert x.is_dir() and not (inst / "overlay.png").exists()


def test_segment_output_inside_the_probabilities_is_refused(tmp_path) -> None:
    probs = tmp_path / "probs.zarr"
    io.write_volume(probs, np.zeros((1, 4, 16, 16), np.uint8), attrs={"kind": "probabilities"})
    cfg = compose_config("segment", [f"probs={probs}", f"output_dir={probs}"])
    with pytest.raises(UnsafeOutputError, match=r"mask\.zarr lies inside the input"):
        segment(cfg)
    assert sorted(p.name for p in probs.iterdir()) == ["0", "zarr.json"]


def test_train_run_folder_and_data_apart(tmp_path) -> None:
    raw = _raw(tmp_path / "data" / "raw.zarr")
    labels = _instances(tmp_path / "data" / "labels.zarr")
    data = ["data=files", f"data.train.raw={raw}", f"data.train.labels={labels}", "data.test=null"]
    for output_dir in (raw, raw / "run", tmp_path / "data"):
        cfg = compose_train(data, tmp_path)
        with open_dict(cfg):
            cfg.output_dir = str(output_dir)
        with pytest.raises(UnsafeOutputError, match=r"raw\.zarr"):
            check_data_apart(cfg)
    cfg = compose_train(data, tmp_path / "runs" / "a")
    check_data_apart(cfg)  # apart: fine


def test_download_mirror_and_dataset_folder_apart(tmp_path, capsys) -> None:
    mirror = tmp_path / "data" / "lucchipp" / "archives"
    url = mirror.as_uri()
    args = ["lucchipp", "--dest", str(tmp_path / "data"), "--base-url", url]
    assert download_cli.main(args) == 1
    assert "contains the input" in capsys.readouterr().err
    download_cli.check_mirror_apart(tmp_path / "elsewhere" / "lucchipp", url)
