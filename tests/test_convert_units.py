"""Conversions are units of work (issue 20, point 6): a pair conversion leaves nothing when a
part fails, and zarr to zarr keeps every attribute."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mitoseg import io
from mitoseg.cli import convert as convert_cli
from mitoseg.files import OutputExistsError, output_unit

VOXEL = [50.0, 4.6, 4.6]
ATTRS = {
    "axes": ["z", "y", "x"],
    "kind": "raw",
    "instrument": "Zeiss GeminiSEM",
    "resolution_note": {"xy": "binned 2x"},
}


def _pair_sources(folder: Path) -> tuple[Path, Path]:
    """Raw and labels TIFFs whose labels fail only at their last slice (NaN)."""
    raw = np.random.default_rng(0).integers(0, 255, (8, 32, 32), dtype=np.uint8)
    labels = np.zeros((8, 32, 32), np.float32)
    labels[:, 4:8, 4:8] = 1
    labels[7, 0, 0] = np.nan
    tifffile.imwrite(folder / "raw.tif", raw)
    tifffile.imwrite(folder / "labels.tif", labels)
    return folder / "raw.tif", folder / "labels.tif"


def test_failed_pair_conversion_leaves_nothing_and_the_rerun_runs(tmp_path, capsys) -> None:
    """Before: the labels failed late, raw.zarr stayed, and the rerun was refused."""
    raw, labels = _pair_sources(tmp_path)
    out = tmp_path / "pair"
    args = ["--raw", str(raw), "--labels-src", str(labels), "--out", str(out)]
    args += ["--chunks", "2", "32", "32"]  # slabs of 2 slices: the labels fail at the last
    assert convert_cli.main(args) == 2
    assert "slice 7" in capsys.readouterr().err
    assert not out.exists()  # neither raw.zarr nor a temporary, nor the folder made for them
    assert convert_cli.main(args) == 2
    assert "already exists" not in capsys.readouterr().err
    labels_ok = np.zeros((8, 32, 32), np.uint8)
    labels_ok[:, 4:8, 4:8] = 1
    tifffile.imwrite(labels, labels_ok)
    assert convert_cli.main(args) == 0
    assert sorted(os.listdir(out)) == ["labels.zarr", "raw.zarr"]
    assert io.open_volume(out / "labels.zarr")[:].sum() == 8 * 16


def test_failed_pair_overwrite_keeps_the_old_pair(tmp_path) -> None:
    raw, labels = _pair_sources(tmp_path)
    out = tmp_path / "pair"
    io.write_volume(out / "raw.zarr", np.ones((2, 4, 4), np.uint8), attrs={"kind": "raw"})
    io.write_volume(out / "labels.zarr", np.ones((2, 4, 4), np.uint8), attrs={"kind": "labels"})
    args = ["--raw", str(raw), "--labels-src", str(labels), "--out", str(out), "--overwrite"]
    assert convert_cli.main(args) == 2
    assert sorted(os.listdir(out)) == ["labels.zarr", "raw.zarr"]
    assert io.open_volume(out / "raw.zarr").shape == (2, 4, 4)  # the old pair, untouched


def test_output_unit_refuses_existing_outputs_before_anything_is_written(tmp_path) -> None:
    (tmp_path / "b").mkdir()
    with pytest.raises(OutputExistsError, match="b already exists"):
        with output_unit([tmp_path / "a", tmp_path / "b"], overwrite=False):
            raise AssertionError("not reached")
    assert sorted(os.listdir(tmp_path)) == ["b"]


def test_zarr_to_zarr_keeps_every_attribute(tmp_path) -> None:
    """Before: re-chunking kept only axes, kind and source, and set the voxel size to 1."""
    src = tmp_path / "in.zarr"
    data = np.random.default_rng(1).integers(0, 255, (4, 16, 16), dtype=np.uint8)
    attrs = {**ATTRS, "voxel_size_nm": VOXEL, "source": "orig.tif", "z_range": [10, 14]}
    io.write_volume(src, data, attrs=attrs)
    dst = tmp_path / "out.zarr"
    assert convert_cli.main([str(src), str(dst), "--chunks", "2", "8", "8"]) == 0
    out = io.open_volume(dst)
    assert out.chunks == (2, 8, 8)
    np.testing.assert_array_equal(out[:], data)
    attrs = dict(out.attrs)
    assert {k: attrs[k] for k in ATTRS} == ATTRS and attrs["voxel_size_nm"] == VOXEL
    # this conversion's own provenance, not the source's
    assert attrs["source"] == str(src) and "z_range" not in attrs
