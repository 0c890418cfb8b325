"""Tests for MitoEM releases: JSON slice listings, label slices, whole-release conversion."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from mitoseg.cli.convert import main
from mitoseg.datasets.mitoem import convert_release, find_release
from mitoseg.io import (
    VolumeError,
    convert,
    open_source,
    open_volume,
    read_listing,
    volume_shape,
)
from mitoseg.io import slices as io_slices
from tests.fake_mitoem import ID_OFFSET, write_fake_release


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A shared fake release (8, 4, 8) x 64 x 64 with TIFF labels and JSON listings; read-only."""
    return write_fake_release(tmp_path_factory.mktemp("mitoem") / "MitoEM-R")


def _listing(release: dict, name: str) -> dict:
    return json.loads((release["root"] / name).read_text())


def _write(path: Path, listing: dict | list) -> Path:
    path.write_text(json.dumps(listing))
    return path


def test_fake_release_has_the_mitoem_layout(release):
    root, (z_train, z_val) = release["root"], (release["splits"]["train"], release["splits"]["val"])
    assert sorted(p.name for p in (root / "im").iterdir())[::10] == ["im0000.png", "im0010.png"]
    assert [p.name for p in sorted((root / "mito_val").iterdir())] == [
        f"seg{z:04d}.tif" for z in range(*z_val)
    ]
    assert z_train == (0, 8) and z_val == (8, 12) and release["splits"]["test"] == (12, 20)
    assert sorted(release["listings"]) == sorted(
        ["im_train.json", "mito_train.json", "im_val.json", "mito_val.json", "im_test.json"]
    )
    im_train = _listing(release, "im_train.json")
    assert im_train["image"][:2] == ["im/im0000.png", "im/im0001.png"] and im_train["depth"] == 8
    labels = release["labels"]
    assert labels.dtype == np.uint32 and labels[labels > 0].min() > ID_OFFSET > 255


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_listing_reads_like_the_im_folder(release, tmp_path, split):
    root, (z0, z1) = release["root"], release["splits"][split]
    listing = root / f"im_{split}.json"
    assert volume_shape(listing) == (z1 - z0, 64, 64)
    from_json = convert(listing, tmp_path / "j.zarr", chunks=(3, 32, 32))
    from_folder = convert(root / "im", tmp_path / "f.zarr", z_range=(z0, z1), chunks=(3, 32, 32))
    assert from_folder.attrs["z_range"] == [z0, z1]
    np.testing.assert_array_equal(from_json[:], release["raw"][z0:z1])
    np.testing.assert_array_equal(from_folder[:], from_json[:])


def test_label_listing_reads_like_the_label_folder(release, tmp_path):
    root, (z0, z1) = release["root"], release["splits"]["val"]
    from_json = convert(root / "mito_val.json", tmp_path / "j.zarr", labels=True)
    from_folder = convert(root / "mito_val", tmp_path / "f.zarr", labels=True)
    assert from_json.dtype == np.uint32 and from_json.attrs["binary"] is False
    np.testing.assert_array_equal(from_json[:], release["labels"][z0:z1])
    np.testing.assert_array_equal(from_folder[:], from_json[:])


def test_absolute_and_relative_paths(release, tmp_path):
    root, listing = release["root"], _listing(release, "im_val.json")
    absolute = dict(listing, image=[str(root / p) for p in listing["image"]])
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)
    # Relative entries are read from the JSON file's folder, not from the working directory.
    rel = [
        str(Path("..") / ".." / ".." / root.parent.name / root.name / p) for p in listing["image"]
    ]
    for path, entries in [
        (tmp_path / "abs.json", absolute),
        (tmp_path / "elsewhere" / "deeper" / "rel.json", dict(listing, image=rel)),
    ]:
        _write(path, entries)
        with open_source(path) as source:
            np.testing.assert_array_equal(source.read(0, 4), release["raw"][8:12])


def test_tile_pattern_with_one_tile_per_slice(tmp_path):
    images = np.arange(3 * 5 * 6, dtype=np.uint8).reshape(3, 5, 6)
    for z, image in enumerate(images):
        (tmp_path / f"{z:04d}").mkdir()
        Image.fromarray(image).save(tmp_path / f"{z:04d}" / "2_3.png")
    listing = {"image": [f"{z:04d}/{{row}}_{{column}}.png" for z in range(3)], "depth": 3}
    listing |= {"height": 5, "width": 6, "tile_size": [5, 6], "tile_st": [2, 3]}
    with open_source(_write(tmp_path / "tiles.json", listing)) as source:
        np.testing.assert_array_equal(source.read(0, 3), images)


def _bad_listings(root: Path) -> dict[str, tuple[dict | list | str, str]]:
    """case -> (edit of a valid 8-slice listing, text the error must hold)."""
    paths = [str(root / "im" / f"im{z:04d}.png") for z in range(8)]
    ok = {"image": paths, "depth": 8, "height": 64, "width": 64, "dtype": "uint8", "ndim": 1}
    ok |= {"tile_size": 64, "tile_st": [0, 0], "tile_ratio": 1, "n_rows": 1, "n_columns": 1}
    missing = [*paths[:2], "nope/im0002.png", *paths[3:]]
    return {
        "no image": ({k: v for k, v in ok.items() if k != "image"}, "missing key 'image'"),
        "image not a list": (ok | {"image": paths[0]}, "key 'image' must be a non-empty list"),
        "empty image": (ok | {"image": []}, "key 'image' must be a non-empty list"),
        "bad entry": (ok | {"image": [*paths[:3], 7, *paths[4:]]}, "key 'image', entry 3 is 7"),
        "no depth": ({k: v for k, v in ok.items() if k != "depth"}, "missing key 'depth'"),
        "depth": (ok | {"depth": 9}, "key 'depth' is 9, but key 'image' lists 8 slices"),
        "no width": ({k: v for k, v in ok.items() if k != "width"}, "missing key 'width'"),
        "width not int": (ok | {"width": "64"}, "key 'width' must be a positive integer"),
        "height": (ok | {"height": 60}, "keys 'height', 'width' say (60, 64)"),
        "width": (ok | {"width": 32}, "keys 'height', 'width' say (64, 32)"),
        "n_rows": (ok | {"n_rows": 2}, "key 'n_rows' is 2: tiled slices are not supported"),
        "n_columns": (ok | {"n_columns": 4}, "key 'n_columns' is 4: tiled slices are not"),
        "tile_size": (ok | {"tile_size": 32}, "key 'tile_size' 32 is smaller than the slice"),
        "tile_size list": (ok | {"tile_size": [64]}, "key 'tile_size' must be"),
        "tile_ratio": (ok | {"tile_ratio": 0.5}, "key 'tile_ratio' is 0.5: only 1"),
        "tile_st": (ok | {"tile_st": "0,0"}, "key 'tile_st' must be [row, column]"),
        "dtype": (ok | {"dtype": "uint77"}, "key 'dtype' 'uint77' is not a dtype name"),
        "dtype null": (ok | {"dtype": None}, "key 'dtype' None is not a dtype name"),
        "ndim": (ok | {"ndim": 0}, "key 'ndim' must be a positive integer"),
        "missing file": (ok | {"image": missing}, "entry 2 'nope/im0002.png' -> "),
        "not an object": ([paths], "expected an object with key 'image'"),
        "not json": ("{'image': []", "cannot read JSON listing"),
    }


@pytest.mark.parametrize("case", list(_bad_listings(Path("/r"))))
def test_bad_listing_names_the_file_and_key(release, tmp_path, case):
    content, expected = _bad_listings(release["root"])[case]
    bad = tmp_path / "my_listing.json"
    bad.write_text(content if isinstance(content, str) else json.dumps(content))
    for attempt in (lambda: volume_shape(bad), lambda: convert(bad, tmp_path / "o.zarr")):
        with pytest.raises(VolumeError) as err:
            attempt()
        assert str(bad) in str(err.value) and expected in str(err.value)
    if case == "missing file":
        assert str(tmp_path / "nope" / "im0002.png") in str(err.value)
    assert not (tmp_path / "o.zarr").exists()


def test_wrong_prefix_counts_the_missing_slices(release, tmp_path):
    listing = _listing(release, "im_train.json")
    bad = _write(tmp_path / "im_train.json", listing)  # relative paths, now read from tmp_path
    with pytest.raises(VolumeError, match=r"entry 0 'im/im0000.png'.*8 of 8 listed slices"):
        read_listing(bad)


def test_a_later_slice_of_another_shape_names_listing_and_entry(release, tmp_path):
    listing = _listing(release, "im_val.json")
    Image.fromarray(np.zeros((64, 60), np.uint8)).save(tmp_path / "odd.png")
    paths = [str(release["root"] / p) for p in listing["image"]]
    bad = _write(tmp_path / "l.json", listing | {"image": [*paths[:2], str(tmp_path / "odd.png")]})
    _write(bad, json.loads(bad.read_text()) | {"depth": 3})
    with pytest.raises(VolumeError) as err:
        convert(bad, tmp_path / "o.zarr")
    message = str(err.value)
    assert f"JSON listing {bad}, key 'image', entry 2" in message and "odd.png" in message
    assert "(64, 60)" in message and "keys 'height', 'width' say (64, 64)" in message


def test_dtype_disagreeing_with_the_slices_is_logged(release, tmp_path, caplog):
    listing = _listing(release, "mito_val.json") | {"dtype": "uint8"}
    listing["image"] = [str(release["root"] / p) for p in listing["image"]]
    with caplog.at_level(logging.WARNING, logger="mitoseg.io.listing"):
        out = convert(_write(tmp_path / "l.json", listing), tmp_path / "o.zarr", labels=True)
    assert "key 'dtype' says uint8" in caplog.text and "uint32" in caplog.text
    np.testing.assert_array_equal(out[:], release["labels"][8:12])


def test_listing_is_streamed_one_slice_at_a_time(release, tmp_path, monkeypatch):
    decoded: list[str] = []
    decode = io_slices._decode_slice

    def spy(path: Path) -> np.ndarray:
        decoded.append(path.name)
        return decode(path)

    monkeypatch.setattr(io_slices, "_decode_slice", spy)
    listing = release["root"] / "im_train.json"
    assert volume_shape(listing) == (8, 64, 64) and decoded == []  # headers only
    convert(listing, tmp_path / "o.zarr", chunks=(3, 64, 64))
    assert decoded == [f"im{z:04d}.png" for z in range(8)]


@pytest.mark.parametrize("label_format", ["tif", "png16"])
def test_label_slices_keep_ids_above_255(tmp_path, label_format):
    fake = write_fake_release(tmp_path / "r", depth=(3, 2, 0), size=32, label_format=label_format)
    first = next(iter(sorted((tmp_path / "r" / "mito_train").iterdir())))
    if label_format == "tif":
        assert first.suffix == ".tif" and tifffile.imread(first).dtype == np.uint32
    else:
        assert first.suffix == ".png" and Image.open(first).mode == "I;16"
    expected = fake["labels"][:3]
    assert expected.max() > 255
    for src in ("mito_train", "mito_train.json"):
        out = convert(tmp_path / "r" / src, tmp_path / f"{src}.zarr", labels=True)
        assert out.dtype == np.uint32 and out.attrs["binary"] is False
        np.testing.assert_array_equal(out[:], expected)


@pytest.mark.parametrize(("label_format", "with_json"), [("tif", True), ("png16", False)])
def test_mitoem_cli_writes_three_splits(tmp_path, capsys, label_format, with_json):
    fake = write_fake_release(tmp_path / "r", label_format=label_format, with_json=with_json)
    assert main(["--mitoem", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = ["train/raw", "train/labels", "val/raw", "val/labels", "test/raw"]
    assert [line.split(":")[0] for line in lines] == [
        f"wrote {tmp_path / 'o' / f'{n}.zarr'}" for n in names
    ]
    assert not (tmp_path / "o" / "test" / "labels.zarr").exists()
    for name in names:
        split, kind = name.split("/")
        z0, z1 = fake["splits"][split]
        stored = open_volume(tmp_path / "o" / f"{name}.zarr")
        assert stored.attrs["voxel_size_nm"] == [30.0, 8.0, 8.0] and stored.shape == (
            z1 - z0,
            64,
            64,
        )
        assert stored.dtype == (np.uint8 if kind == "raw" else np.uint32)
        np.testing.assert_array_equal(stored[:], fake[kind][z0:z1])
        prefix = "im" if kind == "raw" else "mito"
        if with_json:
            assert Path(stored.attrs["source"]).name == f"{prefix}_{split}.json"
        elif kind == "raw":
            assert Path(stored.attrs["source"]).name == "im"
            assert stored.attrs["z_range"] == [z0, z1]
        else:
            assert Path(stored.attrs["source"]).name == f"mito_{split}"


def test_release_without_test_slices_and_own_voxel_size(tmp_path):
    write_fake_release(tmp_path / "r", depth=(3, 2, 0), size=32, with_json=False)
    assert set(find_release(tmp_path / "r")) == {"train", "val"}
    written = convert_release(tmp_path / "r", tmp_path / "o", voxel_size_nm=(40, 4, 4))
    assert sorted(p.relative_to(tmp_path / "o").as_posix() for p in written) == [
        "train/labels.zarr",
        "train/raw.zarr",
        "val/labels.zarr",
        "val/raw.zarr",
    ]
    assert all(a.attrs["voxel_size_nm"] == [40.0, 4.0, 4.0] for a in written.values())
    assert not (tmp_path / "o" / "test").exists()


def _shift_numbers(folder: Path, by: int) -> None:
    """Rename im0000.png -> im0001.png ... (by = 1), last file first."""
    for old in sorted(folder.iterdir(), reverse=True):
        stem = old.stem.rstrip("0123456789")
        old.rename(old.with_name(f"{stem}{int(old.stem[len(stem) :]) + by:04d}{old.suffix}"))


def test_split_boundaries_follow_the_label_numbering(tmp_path):
    root = write_fake_release(tmp_path / "r", depth=(3, 2, 4), size=16, with_json=False)["root"]
    for folder in ("im", "mito_train", "mito_val"):  # all numbered from 1: the same slices
        _shift_numbers(root / folder, 1)
    assert (root / "mito_val" / "seg0004.tif").exists() and (root / "im" / "im0009.png").exists()
    splits = find_release(root)
    assert [splits[s].z_range for s in ("train", "val", "test")] == [(0, 3), (3, 5), (5, 9)]
    _shift_numbers(root / "mito_val", 2)  # seg0006, seg0007: im0006, im0007 = slices 5, 6
    assert find_release(root)["val"].z_range == (5, 7)
    # Unnumbered label names: slices in order, train first.
    for path, name in zip(sorted((root / "mito_val").iterdir()), ["a.tif", "b.tif"], strict=True):
        path.rename(path.with_name(name))
    assert find_release(root)["val"].z_range == (3, 5)


def test_a_gap_in_the_label_numbering_is_an_error(tmp_path):
    write_fake_release(tmp_path / "r", depth=(3, 3, 0), size=16, with_json=False)
    (tmp_path / "r" / "mito_val" / "seg0004.tif").unlink()
    with pytest.raises(VolumeError, match=r"mito_val are not numbered consecutively.*\[4\]"):
        find_release(tmp_path / "r")


@pytest.mark.parametrize(
    ("with_json", "remove", "expected"),
    [
        (
            True,
            ["mito_val", "mito_val.json"],
            "no val labels; expected {r}/mito_val.json or {r}/mito_val",
        ),
        (False, ["mito_train"], "no train labels; expected {r}/mito_train.json or {r}/mito_train"),
        (False, ["im"], "no train raw; expected {r}/im_train.json or {r}/im"),
    ],
)
def test_missing_parts_are_named(tmp_path, capsys, with_json, remove, expected):
    root = write_fake_release(tmp_path / "r", (2, 2, 1), size=16, with_json=with_json)["root"]
    for name in remove:
        shutil.rmtree(root / name) if (root / name).is_dir() else (root / name).unlink()
    assert main(["--mitoem", str(root), "--out", str(tmp_path / "o")]) == 2
    assert expected.format(r=root) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_raw_and_label_listings_of_different_depth(tmp_path):
    root = write_fake_release(tmp_path / "r", depth=(2, 3, 0), size=16)["root"]
    listing = json.loads((root / "im_val.json").read_text())
    _write(root / "im_val.json", listing | {"image": listing["image"][:2], "depth": 2})
    with pytest.raises(VolumeError) as err:
        find_release(root)
    assert str(err.value) == (
        f"MitoEM val: raw {root / 'im_val.json'} has shape (2, 16, 16), "
        f"but labels {root / 'mito_val.json'} have shape (3, 16, 16)"
    )


def test_existing_output_is_refused_before_writing(tmp_path, capsys):
    root = write_fake_release(tmp_path / "r", depth=(2, 2, 0), size=16)["root"]
    (tmp_path / "o" / "val" / "labels.zarr").mkdir(parents=True)
    assert main(["--mitoem", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "val/labels.zarr already exist" in capsys.readouterr().err
    assert not (tmp_path / "o" / "train").exists()
    assert main(["--mitoem", str(root), "--out", str(tmp_path / "o"), "--overwrite"]) == 0
    assert open_volume(tmp_path / "o" / "val" / "labels.zarr").shape == (2, 16, 16)


def test_z_range_selects_the_val_slices_of_the_im_folder(release, tmp_path):
    argv = [str(release["root"] / "im"), str(tmp_path / "val.zarr"), "--z-range", "8", "12"]
    assert main([*argv, "--voxel-size-nm", "30", "8", "8"]) == 0
    stored = open_volume(tmp_path / "val.zarr")
    assert stored.attrs["z_range"] == [8, 12] and stored.attrs["voxel_size_nm"] == [30.0, 8.0, 8.0]
    np.testing.assert_array_equal(stored[:], release["raw"][8:12])
    assert (
        main([str(release["root"] / "im"), str(tmp_path / "x.zarr"), "--z-range", "12", "21"]) == 2
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--mitoem", "r"],
        ["--mitoem", "r", "--out", "o", "--z-range", "0", "4"],
        ["--mitoem", "r", "--out", "o", "--raw", "a.tif"],
        ["a.tif", "--mitoem", "r", "--out", "o"],
    ],
)
def test_mitoem_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "--mitoem" in capsys.readouterr().err


def test_data_config_reads_listings(release, tmp_path):
    from mitoseg.datasets.volumes import FileVolumes

    volumes = FileVolumes(raw="im_val.json", labels="mito_val.json", voxel_size_nm=(30, 8, 8))
    paths = volumes.prepare(tmp_path / "cache", root=release["root"])
    np.testing.assert_array_equal(open_volume(paths.raw)[:], release["raw"][8:12])
    np.testing.assert_array_equal(open_volume(paths.labels)[:], release["labels"][8:12])
