"""Tests for mitoseg.io: sources, label rules, errors, atomic writes and streaming."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from mitoseg.io import (
    VolumeError,
    atomic_dir,
    check_same_shape,
    convert,
    create_volume,
    natural_key,
    normalize_labels,
    open_volume,
    volume_shape,
    write_volume,
)
from mitoseg.io import conversion as io_conversion
from mitoseg.io import slices as io_slices
from mitoseg.io import sources as io_sources
from mitoseg.io.normalize import binary_encoding

LUCCHI = (Path(__file__).parents[1] / ".." / "shared" / "data" / "lucchi_pp").resolve()


def _vol(shape=(7, 12, 10), dtype=np.uint8, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, shape).astype(dtype)


def _png_folder(folder: Path, vol: np.ndarray, pattern: str = "im{:04d}.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for z, image in enumerate(vol):
        Image.fromarray(image).save(folder / pattern.format(z))
    return folder


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# --- sources ------------------------------------------------------------------------------


def test_natural_key_orders_numbers_by_value():
    names = ["10.png", "2.png", "1.png", "im0010.png", "im10b.png", "im2b.png", "im0002.png"]
    ordered = ["1.png", "2.png", "10.png", "im0002.png", "im2b.png", "im0010.png", "im10b.png"]
    assert sorted(names, key=natural_key) == ordered
    assert sorted(["a02", "a2", "a1"], key=natural_key) == ["a1", "a02", "a2"]


def test_png_folder_is_read_in_natural_order_and_ignores_other_files(tmp_path):
    vol = _vol((12, 8, 9))
    folder = _png_folder(tmp_path / "slices", vol, pattern="{}.png")  # 0.png .. 11.png
    (folder / "meta.json").write_text("{}")
    (folder / "Thumbs.db").write_bytes(b"\0" * 10)
    Image.fromarray(vol[0] + 1).save(folder / ".hidden.png")
    out = convert(folder, tmp_path / "raw.zarr", chunks=(4, 8, 8))
    np.testing.assert_array_equal(out[:], vol)  # lexical order would put 10.png after 1.png


def test_tiff_folder_keeps_uint16(tmp_path):
    vol = _vol(dtype=np.uint16) * 300
    (tmp_path / "t").mkdir()
    for z, image in enumerate(vol):
        tifffile.imwrite(tmp_path / "t" / f"s{z}.tif", image)
    out = convert(tmp_path / "t", tmp_path / "raw.zarr")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[:], vol)


@pytest.mark.parametrize(
    "kwargs",
    [{"compression": "zlib"}, {"imagej": True}, {"volumetric": True, "tile": (16, 16)}],
    ids=["multipage", "imagej", "single-page-3d"],
)
def test_tiff_volumes(tmp_path, kwargs):
    vol = _vol((9, 20, 32))
    tifffile.imwrite(tmp_path / "v.tif", vol, **kwargs)
    assert volume_shape(tmp_path / "v.tif") == vol.shape
    out = convert(tmp_path / "v.tif", tmp_path / "raw.zarr", chunks=(4, 16, 16))
    np.testing.assert_array_equal(out[:], vol)


def test_hdf5_named_and_auto_detected_dataset(tmp_path):
    vol = _vol()
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["volumes/raw"] = vol
        f["meta/resolution"] = np.ones(3)
    auto = convert(tmp_path / "v.h5", tmp_path / "a.zarr")
    named = convert(tmp_path / "v.h5", tmp_path / "n.zarr", dataset="/volumes/raw")
    np.testing.assert_array_equal(auto[:], vol)
    np.testing.assert_array_equal(named[:], vol)


def test_zarr_source_is_rechunked(tmp_path):
    vol = _vol((20, 16, 16))
    write_volume(tmp_path / "in.zarr", vol, chunks=(20, 16, 16))
    out = convert(tmp_path / "in.zarr", tmp_path / "out.zarr", chunks=(8, 8, 8))
    assert out.chunks == (8, 8, 8)
    np.testing.assert_array_equal(out[:], vol)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", data=vol)
    np.testing.assert_array_equal(convert(tmp_path / "g.zarr", tmp_path / "o2.zarr")[:], vol)


def test_attributes_chunks_clipped_and_z_range(tmp_path):
    vol = _vol((7, 12, 10))
    tifffile.imwrite(tmp_path / "v.tif", vol)
    out = convert(tmp_path / "v.tif", tmp_path / "raw.zarr", voxel_size_nm=(30, 5, 5))
    assert out.chunks == (7, 12, 10)
    assert out.attrs.asdict() == {
        "axes": ["z", "y", "x"],
        "voxel_size_nm": [30.0, 5.0, 5.0],
        "kind": "raw",
        "source": str(tmp_path / "v.tif"),
    }
    part = convert(tmp_path / "v.tif", tmp_path / "part.zarr", z_range=(2, 5))
    np.testing.assert_array_equal(part[:], vol[2:5])
    assert part.attrs["z_range"] == [2, 5]


# --- raw normalisation --------------------------------------------------------------------


def test_rgb_raw_becomes_grey_luminance_with_warning(tmp_path, caplog):
    rgb = np.zeros((3, 4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with caplog.at_level(logging.WARNING):
        out = convert(tmp_path / "rgb.tif", tmp_path / "raw.zarr")
    assert out.dtype == np.uint8 and out.shape == (3, 4, 5)
    assert np.all(out[:] == round(0.299 * 100 + 0.587 * 200 + 0.114 * 50))
    assert "grey" in caplog.text


def test_float_raw_with_nan_names_the_slice(tmp_path):
    vol = _vol().astype(np.float32)
    vol[4, 2, 3] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", vol)
    with pytest.raises(VolumeError, match=r"f\.tif.*slice 4.*NaN"):
        convert(tmp_path / "f.tif", tmp_path / "raw.zarr")
    _no_leftovers(tmp_path)


# --- labels -------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [255, 1])
def test_grey_masks_become_uint8_0_1(tmp_path, scale):
    mask = (_vol() > 100).astype(np.uint8)
    _png_folder(tmp_path / "m", mask * scale)
    out = convert(tmp_path / "m", tmp_path / "l.zarr", labels=True)
    assert out.dtype == np.uint8 and out.attrs["binary"] is True and out.attrs["kind"] == "labels"
    np.testing.assert_array_equal(out[:], mask)


def _colour_masks() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (colour slices (Z, Y, X, C) uint8, expected mask (Z, Y, X) uint8)."""
    rng = np.random.default_rng(1)
    mask = rng.random((3, 6, 8)) > 0.5
    rgb = np.where(mask[..., None], np.uint8([0, 0, 255]), np.uint8(0))  # one channel suffices
    opaque = np.full((*mask.shape, 1), 255, np.uint8)
    garbage = rng.integers(1, 255, rgb.shape, dtype=np.uint8)  # colour under transparent pixels
    expected = mask.astype(np.uint8)
    return {
        "rgb": (rgb, expected),
        "rgba-opaque": (np.concatenate([rgb, opaque], -1), expected),
        "black-on-transparent": (
            np.concatenate([0 * rgb, 255 * expected[..., None]], -1),
            expected,
        ),
        "colour-and-alpha": (
            np.concatenate(
                [np.where(mask[..., None], rgb, garbage), 255 * expected[..., None]], -1
            ),
            expected,
        ),
    }


@pytest.mark.parametrize("case", list(_colour_masks()))
def test_colour_masks_become_binary(tmp_path, case):
    colour, expected = _colour_masks()[case]
    folder = tmp_path / "m"
    folder.mkdir()
    for z, image in enumerate(colour):
        Image.fromarray(image).save(folder / f"{z}.png")
    out = convert(folder, tmp_path / "l.zarr", labels=True)
    assert out.dtype == np.uint8 and out.attrs["binary"] is True
    np.testing.assert_array_equal(out[:], expected)


def test_uint16_png_instance_ids_become_uint32(tmp_path):
    ids = (_vol() * 7).astype(np.uint16)  # up to 1393, beyond uint8
    folder = tmp_path / "ids"
    folder.mkdir()
    for z, image in enumerate(ids):
        Image.fromarray(image).save(folder / f"seg{z}.png")  # 16-bit grey PNG
    assert Image.open(folder / "seg0.png").mode == "I;16"
    out = convert(folder, tmp_path / "l.zarr", labels=True)
    assert out.dtype == np.uint32 and out.attrs["binary"] is False
    np.testing.assert_array_equal(out[:], ids)


@pytest.mark.parametrize(
    ("dtype", "offset", "stored"),
    [(np.uint32, 2**31, np.uint32), (np.int32, 0, np.uint32), (np.uint64, 2**40, np.uint64)],
)
def test_integer_tiff_ids(tmp_path, dtype, offset, stored):
    ids = _vol().astype(dtype)
    ids[ids > 0] += dtype(offset)
    tifffile.imwrite(tmp_path / "ids.tif", ids)
    out = convert(tmp_path / "ids.tif", tmp_path / "l.zarr", labels=True, chunks=(2, 8, 8))
    assert out.dtype == stored
    np.testing.assert_array_equal(out[:], ids)


def test_leading_empty_slices_do_not_decide_binary(tmp_path):
    ids = np.zeros((8, 5, 5), np.uint16)
    ids[5:, 1:3, 1:3] = [[3, 4], [5, 6]]
    tifffile.imwrite(tmp_path / "ids.tif", ids)
    out = convert(tmp_path / "ids.tif", tmp_path / "l.zarr", labels=True, chunks=(2, 5, 5))
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out[:], ids)


def test_binary_then_other_values_is_an_error_naming_the_slice(tmp_path):
    labels = np.zeros((6, 5, 5), np.uint8)
    labels[0:2, 1, 1] = 255
    labels[4, 2, 2] = 3
    _png_folder(tmp_path / "m", labels)
    with pytest.raises(VolumeError, match=r"slice 4 \(im0004\.png\).*\{0, 3\}.*--instances"):
        convert(tmp_path / "m", tmp_path / "l.zarr", labels=True, chunks=(2, 5, 5))
    _no_leftovers(tmp_path)
    forced = convert(tmp_path / "m", tmp_path / "l.zarr", labels=True, binary=False)
    np.testing.assert_array_equal(forced[:], labels)


def test_negative_labels_are_refused(tmp_path):
    labels = np.zeros((3, 5, 6), np.int32)
    labels[2, 1, 1] = -5
    tifffile.imwrite(tmp_path / "neg.tif", labels)
    with pytest.raises(VolumeError, match=r"neg\.tif.*slice 2.*negative"):
        convert(tmp_path / "neg.tif", tmp_path / "l.zarr", labels=True)


def test_normalize_labels_decides_and_enforces():
    assert normalize_labels(np.array([0, 255, 0], np.uint8), binary=None).tolist() == [0, 1, 0]
    assert normalize_labels(np.array([0, 1], np.uint16), binary=None).dtype == np.uint8
    ids = normalize_labels(np.array([0, 1, 2], np.uint8), binary=None)
    assert ids.dtype == np.uint32 and ids.tolist() == [0, 1, 2]
    assert normalize_labels(np.array([0, 255], np.uint8), binary=False).tolist() == [0, 255]
    assert normalize_labels(np.array([2**33], np.uint64), binary=None).dtype == np.uint64
    with pytest.raises(VolumeError, match=r"not a binary mask.*\{0, 1, 255\}"):
        normalize_labels(np.array([0, 1, 255], np.uint8), binary=True)
    with pytest.raises(VolumeError, match="non-integer"):
        normalize_labels(np.array([0.5], np.float32), binary=None)


# --- errors -------------------------------------------------------------------------------


def test_missing_source_and_unsupported_suffix(tmp_path):
    with pytest.raises(VolumeError, match=r"nope\.tif does not exist"):
        convert(tmp_path / "nope.tif", tmp_path / "o.zarr")
    (tmp_path / "v.npy").write_bytes(b"")
    with pytest.raises(VolumeError, match=r"unsupported source .*v\.npy"):
        volume_shape(tmp_path / "v.npy")


def test_folder_without_slices(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(VolumeError, match=r"no image slices.*empty"):
        convert(tmp_path / "empty", tmp_path / "o.zarr")


def test_corrupt_slice_names_the_file_and_leaves_nothing(tmp_path):
    folder = _png_folder(tmp_path / "s", _vol((9, 8, 8)))
    (folder / "im0006.png").write_bytes((folder / "im0006.png").read_bytes()[:40])
    with pytest.raises(VolumeError, match=r"im0006\.png"):
        convert(folder, tmp_path / "raw.zarr", chunks=(2, 8, 8))  # slabs before it are written
    assert not (tmp_path / "raw.zarr").exists()
    _no_leftovers(tmp_path)


def test_mixed_slice_sizes_name_file_and_shapes(tmp_path):
    folder = _png_folder(tmp_path / "s", _vol((4, 8, 8)))
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(folder / "im0002.png")
    with pytest.raises(VolumeError, match=r"im0002\.png has shape \(8, 9\).*im0000\.png.*\(8, 8\)"):
        convert(folder, tmp_path / "raw.zarr")


def test_multipage_tiff_with_a_differing_page(tmp_path):
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        for z in range(5):
            tif.write(np.zeros((8, 9) if z == 3 else (8, 8), np.uint8), contiguous=False)
    assert volume_shape(tmp_path / "mixed.tif") == (5, 8, 8)
    with pytest.raises(VolumeError, match=r"page 3 of .*mixed\.tif has shape \(8, 9\).*\(8, 8\)"):
        convert(tmp_path / "mixed.tif", tmp_path / "o.zarr")


def test_hdf5_dataset_errors_list_available(tmp_path):
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = _vol()
        f["labels"] = _vol()
        f["flat"] = np.zeros((4, 4))
    with pytest.raises(
        VolumeError, match=r"no dataset 'missing'.*flat \(4, 4\).*raw \(7, 12, 10\)"
    ):
        volume_shape(tmp_path / "v.h5", "missing")
    with pytest.raises(VolumeError, match=r"2 3D datasets.*labels.*raw"):
        volume_shape(tmp_path / "v.h5")
    with pytest.raises(VolumeError, match=r"'flat'.*not 3D.*\(4, 4\)"):
        volume_shape(tmp_path / "v.h5", "flat")


def test_non_3d_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "h.tif", np.zeros((3, 2, 8, 8), np.uint8), imagej=True)
    with pytest.raises(VolumeError, match=r"h\.tif is not a 3D volume.*\(3, 2, 8, 8\)"):
        volume_shape(tmp_path / "h.tif")


def test_check_same_shape_names_both(tmp_path):
    tifffile.imwrite(tmp_path / "raw.tif", _vol((5, 8, 8)))
    tifffile.imwrite(tmp_path / "lab.tif", _vol((4, 8, 8)))
    assert check_same_shape(tmp_path / "raw.tif", tmp_path / "raw.tif") == (5, 8, 8)
    with pytest.raises(VolumeError, match=r"raw\.tif.*\(5, 8, 8\).*lab\.tif.*\(4, 8, 8\)"):
        check_same_shape(tmp_path / "raw.tif", tmp_path / "lab.tif")


def test_z_range_out_of_bounds(tmp_path):
    tifffile.imwrite(tmp_path / "v.tif", _vol((5, 8, 8)))
    with pytest.raises(VolumeError, match=r"z_range \(3, 9\).*\(5, 8, 8\)"):
        convert(tmp_path / "v.tif", tmp_path / "o.zarr", z_range=(3, 9))


# --- atomic writes ------------------------------------------------------------------------


def test_existing_dst_is_refused_then_replaced_with_overwrite(tmp_path):
    tifffile.imwrite(tmp_path / "v.tif", _vol())
    convert(tmp_path / "v.tif", tmp_path / "o.zarr")
    with pytest.raises(VolumeError, match=r"o\.zarr already exists.*overwrite"):
        convert(tmp_path / "v.tif", tmp_path / "o.zarr")
    out = convert(tmp_path / "v.tif", tmp_path / "o.zarr", overwrite=True, z_range=(0, 2))
    assert out.shape == (2, 12, 10)
    _no_leftovers(tmp_path)


def test_failed_overwrite_keeps_the_old_output(tmp_path):
    good = write_volume(tmp_path / "o.zarr", _vol())
    folder = _png_folder(tmp_path / "s", _vol((4, 8, 8)))
    (folder / "im0003.png").write_bytes(b"not a png")
    with pytest.raises(VolumeError, match=r"im0003\.png"):
        convert(folder, tmp_path / "o.zarr", overwrite=True)
    np.testing.assert_array_equal(open_volume(tmp_path / "o.zarr")[:], good[:])
    _no_leftovers(tmp_path)


def test_atomic_dir_renames_on_success_and_cleans_up_on_error(tmp_path):
    dst = tmp_path / "out"
    with atomic_dir(dst, overwrite=False) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-") and not dst.exists()
        (tmp / "f").write_text("x")
    assert (dst / "f").read_text() == "x"
    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "other", overwrite=False):
        raise KeyboardInterrupt
    assert not (tmp_path / "other").exists()
    _no_leftovers(tmp_path)


def test_store_helpers(tmp_path):
    probs = create_volume(tmp_path / "p.zarr", (2, 5, 40, 40), "float32", chunks=(4, 32, 32))
    assert probs.chunks == (2, 4, 32, 32)  # leading axis whole, rest clipped
    write_volume(tmp_path / "w.zarr", _vol(), attrs={"kind": "raw"})
    assert open_volume(tmp_path / "w.zarr").attrs["kind"] == "raw"
    with pytest.raises(VolumeError, match=r"missing\.zarr does not exist"):
        open_volume(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w").create_array("a", shape=(2,), dtype="u1")
    with pytest.raises(VolumeError, match=r"g\.zarr is a zarr group.*\['a'\]"):
        open_volume(tmp_path / "g.zarr")


# --- streaming ----------------------------------------------------------------------------


def _spy_writes(monkeypatch, events: list[tuple[str, int]]) -> None:
    original = zarr.Array.__setitem__

    def spy(self, selection, value):
        events.append(("write", np.asarray(value).shape[0]))
        return original(self, selection, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", spy)


def _assert_streamed(events: list[tuple[str, int]], slab: int) -> None:
    """Each write holds <= slab slices, and <= slab slices are read before each write."""
    assert any(kind == "write" for kind, _ in events)
    pending = 0
    for kind, n in events:
        assert n <= slab, events
        pending = pending + n if kind == "read" else 0
        assert pending <= slab, events


def test_folder_conversion_streams_one_slab_at_a_time(tmp_path, monkeypatch):
    folder = _png_folder(tmp_path / "s", _vol((11, 8, 8)))
    events: list[tuple[str, int]] = []
    decode = io_slices._decode_slice
    monkeypatch.setattr(
        io_slices, "_decode_slice", lambda p: events.append(("read", 1)) or decode(p)
    )
    _spy_writes(monkeypatch, events)
    convert(folder, tmp_path / "o.zarr", chunks=(3, 8, 8))
    assert sum(n for kind, n in events if kind == "read") == 11
    _assert_streamed(events, 3)


@pytest.mark.parametrize("labels", [False, True])
def test_hdf5_conversion_streams_one_slab_at_a_time(tmp_path, monkeypatch, labels):
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["v"] = (_vol((10, 8, 8)) > 100).astype(np.uint8) if labels else _vol((10, 8, 8))
    events: list[tuple[str, int]] = []
    original = h5py.Dataset.__getitem__

    def spy(self, selection):
        out = original(self, selection)
        events.append(("read", out.shape[0]))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    _spy_writes(monkeypatch, events)
    convert(tmp_path / "v.h5", tmp_path / "o.zarr", chunks=(4, 8, 8), labels=labels)
    _assert_streamed(events, 4)


def test_page_sources_are_read_into_one_reused_slab_buffer(tmp_path):
    vol = _vol((10, 12, 10))
    tifffile.imwrite(tmp_path / "v.tif", vol, compression="zlib")
    with io_sources.open_source(tmp_path / "v.tif") as source:
        assert isinstance(source, io_sources.TiffPagesSource)
        reader = io_conversion._SlabReader(source, 4)
        first = reader.read(0, 4)
        np.testing.assert_array_equal(first, vol[0:4])
        last = reader.read(8, 10)
        np.testing.assert_array_equal(last, vol[8:10])
        assert np.shares_memory(first, last)  # one buffer of 4 slices for every slab
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["v"] = vol
    with io_sources.open_source(tmp_path / "v.h5") as source:  # chunked in z itself: whole slabs
        reader = io_conversion._SlabReader(source, 4)
        a, b = reader.read(0, 4), reader.read(4, 8)
        np.testing.assert_array_equal(b, vol[4:8])
        assert not np.shares_memory(a, b)


def _chunk_files(array: Path) -> dict[str, bytes]:
    level0 = array / "0"  # OME-Zarr group: full resolution at "0"
    files = {
        str(p.relative_to(level0)): p.read_bytes() for p in (level0 / "c").rglob("*") if p.is_file()
    }
    assert files, f"no chunk files under {level0}"
    return files


def test_chunk_writer_stores_what_zarr_stores_one_chunk_per_write(tmp_path, monkeypatch):
    vol = _vol((5, 20, 30)).astype(np.float32)  # edge chunks on every axis
    vol[:, :8, :8] = 0  # empty chunks: left out
    vol[:3, 8:16, :8] = -0.0  # zero by value, not by bit pattern: stored, as zarr does
    plain = create_volume(tmp_path / "plain.zarr", vol.shape, vol.dtype, chunks=(3, 8, 8))
    plain[...] = vol
    writes: list[tuple[slice, ...]] = []
    original = zarr.Array.__setitem__

    def spy(self, selection, value):
        writes.append(selection)
        return original(self, selection, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", spy)
    out = create_volume(tmp_path / "chunked.zarr", vol.shape, vol.dtype, chunks=(3, 8, 8))
    writer = io_conversion._ChunkWriter(out)
    writer.write(0, vol[:3], lambda part: part)
    writer.write(3, vol[3:], lambda part: part * 1)
    assert len(writes) == 2 * 3 * 4 - 2  # every chunk but the two all-zero ones
    for selection in writes:  # each write lies within one chunk
        assert all(
            s.start // c == (s.stop - 1) // c for s, c in zip(selection, (3, 8, 8), strict=True)
        )
    np.testing.assert_array_equal(open_volume(tmp_path / "chunked.zarr")[:], vol)
    assert _chunk_files(tmp_path / "chunked.zarr") == _chunk_files(tmp_path / "plain.zarr")


@pytest.mark.parametrize(
    "slab,expected",
    [
        (np.zeros((2, 3, 3), np.uint8), 0),
        (np.array([[[0, 255]], [[255, 0]]], np.uint8), 255),
        (np.array([[[0, 1]], [[0, 0]]], np.uint16), 1),
        (np.array([[[0, 1]], [[0, 255]]], np.uint8), None),  # binary in each slice, not the slab
        (np.array([[[0, 7]], [[0, 0]]], np.uint8), None),
        (np.array([[[-1, 0]], [[1, 0]]], np.int8), None),
        (np.array([[[True, False]], [[False, False]]]), 1),
        (np.array([[[0.0, np.nan]], [[1.0, 0.0]]]), None),
        (np.zeros((0, 2, 2), np.uint8), 0),
        (np.array([[0, 255], [255, 0]], np.uint8), 255),  # a single 2D slice
    ],
)
def test_binary_encoding_by_hand(slab, expected):
    assert binary_encoding(slab) == expected


def test_mask_of_1_and_255_in_different_chunks_of_one_slab(tmp_path):
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[0, :2, :2] = 255
    labels[3, 6:, 6:] = 1
    tifffile.imwrite(tmp_path / "m.tif", labels)
    with pytest.raises(VolumeError, match=r"slices 0\.\.3: .*not a binary mask.*\{0, 1, 255\}"):
        convert(tmp_path / "m.tif", tmp_path / "l.zarr", labels=True, binary=True, chunks=(4, 4, 4))
    _no_leftovers(tmp_path)
    # Without binary=, {0, 1, 255} is one mask in two encodings, not ids: refused, naming the
    # options (tests/test_label_values.py); binary=False stores the values as ids.
    with pytest.raises(VolumeError, match=r"(?s)class codes.*--label-values"):
        convert(tmp_path / "m.tif", tmp_path / "l.zarr", labels=True, chunks=(4, 4, 4))
    ids = convert(
        tmp_path / "m.tif", tmp_path / "l.zarr", labels=True, binary=False, chunks=(4, 4, 4)
    )
    assert ids.attrs["binary"] is False and ids.dtype == np.uint32
    np.testing.assert_array_equal(ids[:], labels)


# --- real data ----------------------------------------------------------------------------


@pytest.mark.realdata
def test_lucchi_shape_and_first_slices(tmp_path):
    raw, lab = LUCCHI / "train_im.tif", LUCCHI / "train_label.tif"
    if not raw.exists():
        pytest.skip(f"{LUCCHI} not found")
    assert check_same_shape(raw, lab) == (165, 768, 1024)
    out = convert(raw, tmp_path / "raw.zarr", z_range=(0, 8))
    labels = convert(lab, tmp_path / "labels.zarr", labels=True, z_range=(0, 8))
    assert out.shape == labels.shape == (8, 768, 1024)
    assert labels.dtype == np.uint8 and labels.attrs["binary"] is True
    with tifffile.TiffFile(raw) as r, tifffile.TiffFile(lab) as m:
        for z in (0, 7):
            np.testing.assert_array_equal(out[z], r.pages[z].asarray())
            np.testing.assert_array_equal(labels[z], m.pages[z].asarray() // 255)
