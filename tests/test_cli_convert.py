"""Tests for the mitoseg-convert command line."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
import tifffile

from mitoseg.cli.convert import main
from mitoseg.io import open_volume


@pytest.fixture
def volumes(tmp_path):
    """raw.tif uint8 (6, 16, 20), labels.tif 0/255 mask of the same shape, short.tif (5, ...)."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, (6, 16, 20), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    tifffile.imwrite(tmp_path / "labels.tif", np.where(raw > 128, 255, 0).astype(np.uint8))
    tifffile.imwrite(tmp_path / "short.tif", raw[:5])
    return tmp_path, raw


def test_single_volume_prints_one_summary_line(volumes, capsys):
    d, raw = volumes
    argv = [str(d / "raw.tif"), str(d / "o.zarr"), "--voxel-size-nm", "30", "5", "5"]
    assert main([*argv, "--chunks", "4", "8", "8"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"wrote {d / 'o.zarr'}: shape (6, 16, 20) uint8 chunks (4, 8, 8)"]
    stored = open_volume(d / "o.zarr")
    np.testing.assert_array_equal(stored[:], raw)
    assert stored.attrs["voxel_size_nm"] == [30.0, 5.0, 5.0]


def test_labels_binary_and_instances(volumes):
    d, raw = volumes
    assert main([str(d / "labels.tif"), str(d / "m.zarr"), "--labels"]) == 0
    assert open_volume(d / "m.zarr").attrs["binary"] is True
    np.testing.assert_array_equal(open_volume(d / "m.zarr")[:], raw > 128)
    assert main([str(d / "labels.tif"), str(d / "i.zarr"), "--labels", "--instances"]) == 0
    assert open_volume(d / "i.zarr").dtype == np.uint32


def test_volume_error_prints_message_and_returns_2(volumes, capsys):
    d, _ = volumes
    assert main([str(d / "missing.tif"), str(d / "o.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.tif does not exist" in err
    assert not (d / "o.zarr").exists()


def test_overwrite(volumes, capsys):
    d, _ = volumes
    args = [str(d / "raw.tif"), str(d / "o.zarr")]
    assert main(args) == 0
    assert main([*args, "--z-range", "0", "2"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--z-range", "0", "2", "--overwrite"]) == 0
    assert open_volume(d / "o.zarr").shape == (2, 16, 20)


def test_pair_mode_writes_raw_and_labels(volumes, capsys):
    d, raw = volumes
    argv = ["--raw", str(d / "raw.tif"), "--labels-src", str(d / "labels.tif"), "--out"]
    assert main([*argv, str(d / "pair")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        f"wrote {d / 'pair' / 'raw.zarr'}",
        f"wrote {d / 'pair' / 'labels.zarr'}",
    ]
    np.testing.assert_array_equal(open_volume(d / "pair" / "raw.zarr")[:], raw)
    assert open_volume(d / "pair" / "labels.zarr").attrs["kind"] == "labels"


def test_pair_mode_checks_shapes_before_writing(volumes, capsys):
    d, _ = volumes
    argv = ["--raw", str(d / "raw.tif"), "--labels-src", str(d / "short.tif")]
    assert main([*argv, "--out", str(d / "pair")]) == 2
    err = capsys.readouterr().err
    assert "raw.tif" in err and "(6, 16, 20)" in err and "short.tif" in err and "(5, 16, 20)" in err
    assert not (d / "pair").exists()


def test_pair_mode_refuses_existing_labels_before_writing_raw(volumes, capsys):
    d, _ = volumes
    (d / "pair" / "labels.zarr").mkdir(parents=True)
    argv = ["--raw", str(d / "raw.tif"), "--labels-src", str(d / "labels.tif")]
    assert main([*argv, "--out", str(d / "pair")]) == 2
    assert "labels.zarr already exists" in capsys.readouterr().err
    assert not (d / "pair" / "raw.zarr").exists()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["a.tif"],
        ["a.tif", "b.zarr", "--raw", "c.tif"],
        ["--raw", "a.tif", "--out", "d"],
        ["a.tif", "b.zarr", "--instances"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_console_script_is_installed():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["mitoseg-convert"] == "mitoseg.cli.convert:main"
    done = subprocess.run(
        [sys.executable, "-m", "mitoseg.cli.convert", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "--labels-src" in done.stdout
