"""Labels as labs store them (issue 20, point 2): class codes and anti-aliased masks are refused
unless ``--label-values`` / ``--label-threshold`` say what they mean; mixed slice modes are read
alike; the selection is recorded in the output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hydra.utils import instantiate
from PIL import Image
from scipy import ndimage

from mitoseg import io
from mitoseg.cli import convert as convert_cli
from mitoseg.cli import measure as measure_cli
from mitoseg.cli.common import compose_config
from mitoseg.datasets.volumes import FileVolumes
from mitoseg.io import VolumeError, convert
from mitoseg.io.checks import check_labels
from mitoseg.io.label_values import LabelSelection, ValueCounts, parse_label_values

CODES = np.array([0, 32, 64, 96, 128, 159, 191, 223, 255], np.uint8)
VOXEL = (5.0, 5.0, 5.0)


def _pngs(folder: Path, slices: np.ndarray | list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for z, image in enumerate(slices):
        Image.fromarray(image).save(folder / f"s{z:02d}.png")
    return folder


def _classes(shape=(4, 24, 24), seed=0) -> np.ndarray:
    """Class codes {0, 32, ..., 255} in blocks of 4 x 4, mitochondria (191) among them."""
    rng = np.random.default_rng(seed)
    blocks = CODES[rng.integers(0, CODES.size, size=(shape[0], shape[1] // 4, shape[2] // 4))]
    return blocks.repeat(4, axis=1).repeat(4, axis=2)


def _anti_aliased(shape=(4, 32, 32), seed=0) -> np.ndarray:
    """A 0 / 255 mask with rare in-between greys next to its objects."""
    mask = np.zeros(shape, np.uint8)
    mask[:, 4:14, 4:14] = 255
    mask[:, 20:28, 18:30] = 255
    border = ndimage.binary_dilation(mask > 0, iterations=1) & (mask == 0)
    rng = np.random.default_rng(seed)
    greys = rng.integers(1, 255, size=int(border.sum()), dtype=np.uint8)
    keep = rng.random(greys.size) < 0.3  # a few grey pixels, as anti-aliasing leaves them
    mask[tuple(idx[keep] for idx in np.nonzero(border))] = greys[keep]
    return mask


# --- the value spec ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "ranges"),
    [
        (191, ((191, 191),)),
        ("191", ((191, 191),)),
        ("191,200-210", ((191, 191), (200, 210))),
        (" 200 - 210 , 191 ", ((191, 191), (200, 210))),
        ([191, "200-210"], ((191, 191), (200, 210))),
        ("1-3,4,10-12,11", ((1, 4), (10, 12))),  # merged
    ],
)
def test_label_values_parse(spec, ranges):
    assert parse_label_values(spec) == ranges


@pytest.mark.parametrize("spec", ["", "1-x", "5-3", "-1", [1.5], True, "191;200"])
def test_bad_label_values_are_refused(spec):
    with pytest.raises(VolumeError, match="label value"):
        parse_label_values(spec)


def test_selection_options():
    assert LabelSelection.from_options(None, None) is None
    with pytest.raises(VolumeError, match="not both"):
        LabelSelection.from_options("191", 127)
    slab = np.array([0, 127, 128, 191, 200, 211], np.uint8)
    assert LabelSelection.from_options("191,200-210", None).apply(slab).tolist() == [
        0, 0, 0, 1, 1, 0,
    ]  # fmt: skip
    assert LabelSelection.from_options(None, 127).apply(slab).tolist() == [0, 0, 1, 1, 1, 1]


# --- the heuristic: refused and accepted values ---------------------------------------------


def _counts(values: np.ndarray) -> ValueCounts:
    counts = ValueCounts()
    counts.add(values)
    return counts


def test_heuristic_by_hand():
    assert "class codes" in _counts(_classes()).suspicion()
    assert "anti-aliased" in _counts(_anti_aliased()).suspicion()
    ids = np.arange(40, dtype=np.uint8).reshape(1, 5, 8)
    assert _counts(ids).suspicion() is None  # consecutive uint8 ids
    assert _counts(np.delete(ids, [3, 7, 9]).reshape(1, -1)).suspicion() is None  # a few gaps
    assert _counts(np.array([[0, 255]], np.uint8)).suspicion() is None  # Lucchi++ mask
    assert _counts(np.array([[0, 1]], np.uint8)).suspicion() is None
    assert _counts(np.array([[0, 7]], np.uint8)).suspicion() is None  # one object
    assert _counts(np.array([[0, 3, 300]], np.uint32)).suspicion() is None  # wide ids


def test_class_codes_are_refused_with_their_values(tmp_path):
    """At 8f5406b: stored as 9 uint32 "instance ids"."""
    _pngs(tmp_path / "classes", _classes())
    with pytest.raises(VolumeError) as err:
        convert(tmp_path / "classes", tmp_path / "l.zarr", labels=True, voxel_size_nm=VOXEL)
    text = str(err.value)
    assert "class codes" in text and "--label-values" in text and "label_values" in text
    assert "--label-threshold" in text and "label_threshold" in text
    assert "191:" in text and "voxels (" in text  # the table of values and counts
    assert not (tmp_path / "l.zarr").exists()


def test_anti_aliased_mask_is_refused(tmp_path):
    """At 8f5406b: every grey value became an "instance id"."""
    _pngs(tmp_path / "aa", _anti_aliased())
    with pytest.raises(VolumeError, match=r"(?s)anti-aliased.*255:.*--label-threshold"):
        convert(tmp_path / "aa", tmp_path / "l.zarr", labels=True, voxel_size_nm=VOXEL)
    assert not (tmp_path / "l.zarr").exists()


def test_greys_after_a_binary_first_slab_name_the_options(tmp_path):
    mask = _anti_aliased()
    mask[0] = np.where(mask[0] == 255, 255, 0)  # the first slab is a clean mask
    _pngs(tmp_path / "aa", mask)
    with pytest.raises(VolumeError, match=r"slice 1.*--label-threshold"):
        convert(tmp_path / "aa", tmp_path / "l.zarr", labels=True, chunks=(1, 32, 32))


@pytest.mark.parametrize("kind", ["uint16-png", "uint32-tif", "uint8-ids", "mask255", "mask1"])
def test_real_ids_and_masks_stay_accepted(tmp_path, kind):
    rng = np.random.default_rng(3)
    if kind == "uint16-png":
        labels = rng.choice(np.array([0, 3, 9], np.uint16), size=(3, 16, 16))  # few, sparse
        _pngs(tmp_path / "src", labels)
        src = tmp_path / "src"
    elif kind == "uint32-tif":
        labels = rng.choice(np.array([0, 5, 17, 90], np.uint32), size=(3, 16, 16))
        src = tmp_path / "l.tif"
        tifffile.imwrite(src, labels)
    else:
        values = {"uint8-ids": np.arange(30), "mask255": [0, 255], "mask1": [0, 1]}[kind]
        labels = rng.choice(np.asarray(values, np.uint8), size=(3, 16, 16))
        _pngs(tmp_path / "src", labels)
        src = tmp_path / "src"
    out = convert(src, tmp_path / "l.zarr", labels=True, voxel_size_nm=VOXEL)
    expected = (labels > 0).astype(np.uint8) if kind.startswith("mask") else labels
    np.testing.assert_array_equal(out[:], expected)
    assert out.attrs["label_values"] is None and out.attrs["label_threshold"] is None


# --- selecting ---------------------------------------------------------------------------------


def test_label_values_select_classes_and_are_recorded(tmp_path):
    classes = _classes()
    _pngs(tmp_path / "classes", classes)
    out = convert(
        tmp_path / "classes", tmp_path / "m.zarr", labels=True, voxel_size_nm=VOXEL,
        label_values="191",
    )  # fmt: skip
    assert out.dtype == np.uint8 and out.attrs["binary"] is True
    assert out.attrs["label_values"] == "191" and out.attrs["label_threshold"] is None
    np.testing.assert_array_equal(out[:], classes == 191)
    several = convert(
        tmp_path / "classes", tmp_path / "s.zarr", labels=True, voxel_size_nm=VOXEL,
        label_values=[159, "190-200"],
    )  # fmt: skip
    assert several.attrs["label_values"] == "159,190-200"
    np.testing.assert_array_equal(several[:], (classes == 159) | (classes == 191))


def test_label_threshold_binarises_and_is_recorded(tmp_path):
    mask = _anti_aliased()
    _pngs(tmp_path / "aa", mask)
    out = convert(
        tmp_path / "aa", tmp_path / "m.zarr", labels=True, voxel_size_nm=VOXEL, label_threshold=127
    )
    assert out.attrs["label_threshold"] == 127.0 and out.attrs["label_values"] is None
    np.testing.assert_array_equal(out[:], mask > 127)


def test_selection_needs_labels_and_a_mask(tmp_path):
    _pngs(tmp_path / "classes", _classes())
    with pytest.raises(VolumeError, match="labels only"):
        convert(tmp_path / "classes", tmp_path / "m.zarr", label_values="191")
    with pytest.raises(VolumeError, match="binary=False"):
        convert(tmp_path / "classes", tmp_path / "m.zarr", labels=True, label_values="191",
                binary=False)  # fmt: skip


# --- mixed slice modes -------------------------------------------------------------------------


def _mask_slices() -> np.ndarray:
    mask = np.zeros((4, 16, 16), bool)
    mask[:, 3:8, 4:12] = True
    mask[2:, 10:14, 2:6] = True
    return mask


def test_mixed_1bit_and_8bit_masks_are_one_mask(tmp_path):
    """At 8f5406b: refused (slice has dtype uint8, but slice s00.png has dtype bool)."""
    mask = _mask_slices()
    slices = [m if z % 2 == 0 else m.astype(np.uint8) * 255 for z, m in enumerate(mask)]
    folder = _pngs(tmp_path / "m", slices)
    assert Image.open(folder / "s00.png").mode == "1" and Image.open(folder / "s01.png").mode == "L"
    out = convert(folder, tmp_path / "l.zarr", labels=True, voxel_size_nm=VOXEL)
    assert out.attrs["binary"] is True
    np.testing.assert_array_equal(out[:], mask)


@pytest.mark.parametrize("colour", [(255, 0, 0), (255, 255, 255)])
def test_mixed_rgb_and_rgba_masks_are_one_mask(tmp_path, colour):
    """At 8f5406b: refused (shape (16, 16, 4), but slice s00.png has shape (16, 16, 3))."""
    mask = _mask_slices()
    rgb = np.where(mask[..., None], np.uint8(colour), np.uint8(0))
    opaque = np.full((*mask.shape, 1), 255, np.uint8)
    slices = [rgb[z] if z % 2 else np.concatenate([rgb[z], opaque[z]], -1) for z in range(4)]
    out = convert(_pngs(tmp_path / "m", slices), tmp_path / "l.zarr", labels=True)
    np.testing.assert_array_equal(out[:], mask)


def test_mixed_tiff_and_png_slices_are_one_mask(tmp_path):
    """TIFF slices are reconciled like PNGs: 1-bit and 8-bit grey, RGB and RGBA, and a folder
    holding both file types (before, any TIFF slice kept each slice as decoded: refused)."""
    import tifffile

    mask = _mask_slices()
    folder = tmp_path / "m"
    folder.mkdir()
    rgb = np.where(mask[..., None], np.uint8((255, 0, 0)), np.uint8(0))
    opaque = np.full((*mask.shape[1:], 1), 255, np.uint8)
    tifffile.imwrite(folder / "s00.tif", mask[0])  # 1-bit
    tifffile.imwrite(folder / "s01.tif", mask[1].astype(np.uint8) * 255)
    tifffile.imwrite(folder / "s02.tif", np.concatenate([rgb[2], opaque], -1))
    Image.fromarray(rgb[3]).save(folder / "s03.png")
    assert tifffile.TiffFile(folder / "s00.tif").pages.first.bitspersample == 1
    out = convert(folder, tmp_path / "l.zarr", labels=True, voxel_size_nm=VOXEL)
    np.testing.assert_array_equal(out[:], mask)


def test_classes_coded_by_colour_are_refused_and_shades_of_one_colour_are_a_mask(tmp_path):
    """Red mitochondria and green ER in one RGB label image were both foreground, silently."""
    mask = _mask_slices()
    other = np.roll(mask, 8, axis=2) & ~mask
    two = np.zeros((*mask.shape, 3), np.uint8)
    two[mask] = (255, 0, 0)
    two[other] = (0, 255, 0)
    with pytest.raises(VolumeError, match=r"2 colours \(.*\(255, 0, 0\): \d+ px") as refused:
        convert(_pngs(tmp_path / "two", list(two)), tmp_path / "two.zarr", labels=True)
    assert "two" in str(refused.value) and "slice z=" in str(refused.value)
    # one colour with anti-aliased (darker) edges is one mask
    shaded = np.where(mask[..., None], np.uint8((255, 0, 0)), np.uint8(0))
    edge = ndimage.binary_dilation(mask, iterations=1) & ~mask
    shaded[edge] = (96, 0, 0)
    out = convert(_pngs(tmp_path / "one", list(shaded)), tmp_path / "one.zarr", labels=True,
                  binary=True)  # fmt: skip
    np.testing.assert_array_equal(out[:], mask | edge)


def test_class_codes_in_mixed_grey_rgb_rgba_slices_are_selected(tmp_path):
    classes = _classes()
    grey = classes[..., None]
    slices = [classes[0], np.repeat(grey[1], 3, -1),
              np.concatenate([np.repeat(grey[2], 3, -1), np.full_like(grey[2], 255)], -1),
              classes[3]]  # fmt: skip
    folder = _pngs(tmp_path / "m", slices)
    with pytest.raises(VolumeError, match="class codes"):
        convert(folder, tmp_path / "l.zarr", labels=True)
    out = convert(folder, tmp_path / "l.zarr", labels=True, label_values=191)
    np.testing.assert_array_equal(out[:], classes == 191)


# --- the command lines and the Hydra entry points --------------------------------------------


def test_cli_convert_single_and_pair(tmp_path, capsys):
    classes = _classes()
    _pngs(tmp_path / "classes", classes)
    tifffile.imwrite(tmp_path / "raw.tif", (classes // 2).astype(np.uint8))
    vs = ["--voxel-size-nm", "5", "5", "5"]
    assert (
        convert_cli.main([str(tmp_path / "classes"), str(tmp_path / "r.zarr"), "--labels", *vs])
        == 2
    )
    assert "--label-values" in capsys.readouterr().err
    argv = [
        str(tmp_path / "classes"),
        str(tmp_path / "m.zarr"),
        "--labels",
        "--label-values",
        "191",
    ]
    assert convert_cli.main([*argv, *vs]) == 0
    np.testing.assert_array_equal(io.open_volume(tmp_path / "m.zarr")[:], classes == 191)
    pair = ["--raw", str(tmp_path / "raw.tif"), "--labels-src", str(tmp_path / "classes"),
            "--out", str(tmp_path / "pair"), "--label-values", "159,191", *vs]  # fmt: skip
    assert convert_cli.main(pair) == 0
    labels = io.open_volume(tmp_path / "pair" / "labels.zarr")
    assert labels.attrs["label_values"] == "159,191"
    np.testing.assert_array_equal(labels[:], np.isin(classes, [159, 191]))


@pytest.mark.parametrize(
    "argv",
    [
        ["a", "b.zarr", "--label-values", "191"],  # needs --labels
        ["a", "b.zarr", "--labels", "--label-values", "19x"],
        ["a", "b.zarr", "--labels", "--label-values", "191", "--label-threshold", "3"],
        ["--mitoem", "r", "--out", "o", "--label-threshold", "3"],
    ],
)
def test_cli_convert_usage_errors(argv):
    with pytest.raises(SystemExit) as exit_:
        convert_cli.main(argv)
    assert exit_.value.code == 2


def test_measure_refuses_class_codes_and_measures_a_selection(tmp_path, capsys):
    """At 8f5406b: each class (or grey) value measured as one object."""
    classes = _classes(shape=(4, 32, 32), seed=5)
    attrs = {"axes": list(io.AXES), "voxel_size_nm": list(VOXEL), "kind": "labels"}
    io.write_volume(tmp_path / "c.zarr", classes.astype(np.uint32), attrs=attrs)  # as 8f5406b
    assert measure_cli.main([str(tmp_path / "c.zarr"), "--out", str(tmp_path / "m0")]) == 2
    err = capsys.readouterr().err
    assert "class codes" in err and "--label-values" in err
    argv = [str(tmp_path / "c.zarr"), "--out", str(tmp_path / "m"), "--label-values", "191"]
    assert measure_cli.main(argv) == 0
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    expected = ndimage.label(classes == 191, structure=np.ones((3, 3, 3)))[1]
    assert summary["count"] == expected and summary["label_values"] == "191"
    assert not list((tmp_path / "m").glob(".selected-*"))


def test_measure_threshold_of_an_anti_aliased_mask(tmp_path):
    mask = _anti_aliased()
    attrs = {"axes": list(io.AXES), "voxel_size_nm": list(VOXEL), "kind": "labels"}
    io.write_volume(tmp_path / "aa.zarr", mask, attrs=attrs)
    summary = measure_cli.run(tmp_path / "aa.zarr", tmp_path / "m", label_threshold=127)
    assert summary["count"] == 2 and summary["label_threshold"] == 127.0


def test_train_data_config_takes_label_values(tmp_path):
    classes = _classes()
    _pngs(tmp_path / "classes", classes)
    tifffile.imwrite(tmp_path / "raw.tif", (classes // 2 + 1).astype(np.uint8))
    cfg = compose_config(
        "train",
        [
            "data=files", f"data.root={tmp_path}", "data.train.raw=raw.tif",
            "data.train.labels=classes", "data.train.label_values=[191,200-210]",
            "data.train.voxel_size_nm=[5,5,5]", "data.test=null",
        ],
    )  # fmt: skip
    volumes = instantiate(cfg.data.train)
    paths = volumes.prepare(tmp_path / "cache", root=tmp_path)
    labels = io.open_volume(paths.labels)
    assert labels.attrs["label_values"] == "191,200-210"
    np.testing.assert_array_equal(labels[:], classes == 191)
    unselected = FileVolumes("raw.tif", "classes", voxel_size_nm=VOXEL)
    with pytest.raises(VolumeError, match="--label-values"):
        unselected.prepare(tmp_path / "cache", root=tmp_path)


def test_zarr_class_codes_are_refused_for_training(tmp_path):
    attrs = {"axes": list(io.AXES), "kind": "labels"}
    io.write_volume(tmp_path / "c.zarr", _classes().astype(np.uint32), attrs=attrs)
    with pytest.raises(VolumeError, match="label_values"):
        check_labels(tmp_path / "c.zarr")
    selected = FileVolumes(str(tmp_path / "c.zarr"), str(tmp_path / "c.zarr"), label_values=191)
    path = selected.prepare_labels(tmp_path / "cache")
    np.testing.assert_array_equal(io.open_volume(path)[:], _classes() == 191)


def test_segment_scores_against_selected_classes(tmp_path):
    from mitoseg.cli.segment import segment

    classes = _classes()
    probs = (classes == 191).astype(np.float32)[None]
    io.write_volume(tmp_path / "p.zarr", probs, attrs={"kind": "probabilities"})
    _pngs(tmp_path / "classes", classes)
    base = [
        f"probs={tmp_path / 'p.zarr'}", f"labels={tmp_path / 'classes'}",
        f"cache_dir={tmp_path / 'cache'}", "progress=false", "postprocess.median_size=0",
    ]  # fmt: skip
    refused = compose_config("segment", [*base, f"output_dir={tmp_path / 'a'}"])
    chosen = compose_config("segment", [*base, f"output_dir={tmp_path / 'b'}", "label_values=191"])
    with pytest.raises(VolumeError, match="label_values"):
        segment(refused)
    result = segment(chosen)
    assert result["label_values"] == 191 and result["scores"]["fg_iou"] == pytest.approx(1.0)
