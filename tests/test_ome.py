"""Tests for OME-Zarr volumes: NGFF metadata, pyramids, opening old and new layouts."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import zarr

from mitoseg import io
from mitoseg.decode.masks import BinarizeMedian
from mitoseg.decode.run import _mask_output
from mitoseg.io import ome


def _group_meta(path) -> dict:
    return json.loads((path / "zarr.json").read_text())


def _check_ngff(path) -> list[dict]:
    """Assert the NGFF 0.5 rules a viewer relies on; return the datasets."""
    meta = _group_meta(path)
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    omeattrs = meta["attributes"]["ome"]
    assert omeattrs["version"] == "0.5"
    (multiscale,) = omeattrs["multiscales"]
    axes, datasets = multiscale["axes"], multiscale["datasets"]
    names = [a["name"] for a in axes]
    base = zarr.open_array(str(path / datasets[0]["path"]), mode="r")
    for i, dataset in enumerate(datasets):
        assert dataset["path"] == str(i)
        array = zarr.open_array(str(path / dataset["path"]), mode="r")
        assert list(array.metadata.dimension_names) == names
        (transform,) = dataset["coordinateTransformations"]
        assert transform["type"] == "scale" and len(transform["scale"]) == array.ndim
        ratio = np.divide(transform["scale"], datasets[0]["coordinateTransformations"][0]["scale"])
        expected = [math.ceil(n / r) for n, r in zip(base.shape, ratio, strict=True)]
        assert list(array.shape) == expected
    return datasets


def test_new_volume_is_an_ngff_group_with_our_attributes_on_level_0(tmp_path):
    attrs = {"axes": ["z", "y", "x"], "kind": "raw", "voxel_size_nm": [30.0, 8.0, 8.0]}
    vol = np.arange(4 * 6 * 5, dtype=np.uint16).reshape(4, 6, 5)
    out = io.write_volume(tmp_path / "raw.zarr", vol, chunks=(2, 4, 4), attrs=attrs)
    assert out.attrs.asdict() == attrs and out.chunks == (2, 4, 4)
    np.testing.assert_array_equal(io.open_volume(tmp_path / "raw.zarr")[:], vol)
    datasets = _check_ngff(tmp_path / "raw.zarr")
    assert len(datasets) == 1  # too small for a pyramid
    axes = _group_meta(tmp_path / "raw.zarr")["attributes"]["ome"]["multiscales"][0]["axes"]
    assert axes == [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    assert datasets[0]["coordinateTransformations"][0]["scale"] == [30.0, 8.0, 8.0]


def test_probabilities_have_a_channel_axis_and_no_unit_without_voxel_size(tmp_path):
    attrs = {"axes": ["c", "z", "y", "x"], "kind": "probabilities", "channels": ["fg", "contour"]}
    probs = io.create_volume(
        tmp_path / "p.zarr", (2, 3, 8, 8), "uint8", chunks=(2, 4, 4), attrs=attrs
    )
    probs[1, 2, 3, 4] = 200
    assert probs.chunks == (2, 2, 4, 4)
    opened = io.open_volume(tmp_path / "p.zarr")
    assert opened.shape == (2, 3, 8, 8) and opened[1, 2, 3, 4] == 200
    assert opened.attrs["channels"] == ["fg", "contour"]
    multiscale = _group_meta(tmp_path / "p.zarr")["attributes"]["ome"]["multiscales"][0]
    assert multiscale["axes"] == [
        {"name": "c", "type": "channel"},
        *({"name": n, "type": "space"} for n in "zyx"),
    ]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0] * 4


def test_axes_that_do_not_fit_are_refused(tmp_path):
    with pytest.raises(io.VolumeError, match=r"axes \['z', 'y'\] do not match shape \(2, 3, 4\)"):
        io.create_volume(
            tmp_path / "a.zarr", (2, 3, 4), "uint8", chunks=(2, 2, 2), attrs={"axes": ["z", "y"]}
        )
    with pytest.raises(io.VolumeError, match="2 to 4 axes"):
        io.write_volume(tmp_path / "b.zarr", np.zeros(5, np.uint8))
    assert not (tmp_path / "b.zarr").exists()


def test_old_plain_arrays_still_open(tmp_path):
    plain = zarr.create_array(
        str(tmp_path / "old.zarr"), shape=(3, 4, 5), dtype="uint8", attributes={"kind": "raw"}
    )
    plain[...] = 7
    opened = io.open_volume(tmp_path / "old.zarr")
    assert opened.attrs["kind"] == "raw" and int(opened[:].sum()) == 7 * 60
    assert len(io.open_levels(tmp_path / "old.zarr")) == 1
    assert io.finalize_volume(tmp_path / "old.zarr") == 0  # left as it is
    assert isinstance(zarr.open(str(tmp_path / "old.zarr"), mode="r"), zarr.Array)


def test_ngff_04_group_from_another_tool_opens_at_full_resolution(tmp_path):
    group = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
    group.create_array("s0", data=np.ones((4, 8, 8), np.uint8))
    group.create_array("s1", data=np.ones((4, 4, 4), np.uint8))
    datasets = [{"path": p, "coordinateTransformations": []} for p in ("s0", "s1")]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [], "datasets": datasets}]
    assert [a.shape for a in io.open_levels(tmp_path / "v2.zarr")] == [(4, 8, 8), (4, 4, 4)]


def test_level_factors_follow_the_voxel_size():
    anisotropic = ome.level_factors((100, 2048, 2048), "zyx", (30, 8, 8), min_size=256)
    # z 30 nm stays while y-x go 8 -> 16 -> 32 nm, then 30 <= 1.5 * 32: all halve
    assert anisotropic == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert ome.level_factors((64, 1024, 600), "zyx", (5, 5, 5), min_size=256) == [(2, 2, 2)] * 2
    assert ome.level_factors((64, 1024, 1024), "zyx", None, min_size=256) == [(1, 2, 2)] * 2
    assert ome.level_factors((2, 1, 1024, 1024), "czyx", (5, 5, 5), 256) == [(1, 1, 2, 2)] * 2
    assert ome.level_factors((8, 256, 4096), "zyx", (5, 5, 5), 256) == []


def _mean_oracle(vol: np.ndarray, f: tuple[int, ...]) -> np.ndarray:
    shape = tuple(math.ceil(n / k) for n, k in zip(vol.shape, f, strict=True))
    out = np.zeros(shape, np.float64)
    for index in np.ndindex(*shape):
        window = vol[tuple(slice(i * k, (i + 1) * k) for i, k in zip(index, f, strict=True))]
        out[index] = window.mean()
    return out


def _pyramid_volume(tmp_path, kind, dtype, voxel, shape=(5, 27, 21), chunks=(2, 8, 8)):
    rng = np.random.default_rng(0)
    vol = (rng.integers(0, 9, shape) if kind != "raw" else rng.random(shape) * 250).astype(dtype)
    attrs = {"axes": list("czyx"[4 - len(shape) :]), "kind": kind}
    if voxel is not None:
        attrs["voxel_size_nm"] = voxel
    path = tmp_path / f"{kind}.zarr"
    out = io.create_volume(path, shape, dtype, chunks=chunks, attrs=attrs)
    out[...] = vol
    return path, vol


def test_pyramid_of_labels_strides_and_keeps_ids(tmp_path):
    path, vol = _pyramid_volume(tmp_path, "instances", np.uint32, [10.0, 5.0, 5.0])
    assert ome.write_pyramid(path, min_size=6) == 2  # 27x21 -> 14x11 -> 7x6
    levels = io.open_levels(path)
    # z 10 > 1.5 * 5: kept at level 1; z 10 <= 1.5 * 10: halved at level 2
    np.testing.assert_array_equal(levels[1][:], vol[:, ::2, ::2])
    np.testing.assert_array_equal(levels[2][:], vol[::2, ::4, ::4])
    assert levels[2].dtype == np.uint32 and levels[1].chunks == (2, 8, 8)
    datasets = _check_ngff(path)
    scales = [d["coordinateTransformations"][0]["scale"] for d in datasets]
    assert scales == [[10.0, 5.0, 5.0], [10.0, 10.0, 10.0], [20.0, 20.0, 20.0]]
    assert _group_meta(path)["attributes"]["ome"]["multiscales"][0]["type"] == "nearest"


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_pyramid_of_raw_is_the_window_mean(tmp_path, dtype):
    path, vol = _pyramid_volume(tmp_path, "raw", dtype, [4.0, 4.0, 4.0])
    assert ome.write_pyramid(path, min_size=6) == 2
    levels = io.open_levels(path)
    first = _mean_oracle(vol.astype(np.float64), (2, 2, 2))
    if dtype == np.uint8:
        # Each level is the rounded mean of the rounded level before.
        np.testing.assert_array_equal(levels[1][:], np.rint(first).astype(np.uint8))
        second = _mean_oracle(levels[1][:].astype(np.float64), (2, 2, 2))
        np.testing.assert_array_equal(levels[2][:], np.rint(second).astype(np.uint8))
    else:
        np.testing.assert_allclose(levels[1][:], first, rtol=1e-5)
        np.testing.assert_allclose(levels[2][:], _mean_oracle(first, (2, 2, 2)), rtol=1e-5)
    assert levels[2].shape == (2, 7, 6)
    assert _group_meta(path)["attributes"]["ome"]["multiscales"][0]["type"] == "mean"


def test_pyramid_of_probabilities_keeps_channels(tmp_path):
    path, vol = _pyramid_volume(
        tmp_path, "probabilities", np.uint8, None, shape=(2, 3, 20, 12), chunks=(3, 8, 8)
    )
    assert ome.write_pyramid(path, min_size=6) == 1
    level = io.open_levels(path)[1]
    assert level.shape == (2, 3, 10, 6)  # no voxel size: z kept
    np.testing.assert_array_equal(level[:], np.rint(_mean_oracle(vol.astype(float), (1, 1, 2, 2))))
    _check_ngff(path)


def test_pyramid_is_streamed_chunk_by_chunk(tmp_path, monkeypatch):
    path, _ = _pyramid_volume(tmp_path, "labels", np.uint8, [5.0, 5.0, 5.0], shape=(8, 64, 64))
    reads: list[int] = []
    original = zarr.Array.__getitem__

    def spy(self, selection):
        out = original(self, selection)
        reads.append(np.asarray(out).size)
        return out

    monkeypatch.setattr(zarr.Array, "__getitem__", spy)
    ome.write_pyramid(path, min_size=8)
    assert len(reads) > 8 and max(reads) <= (2 * 2) * (8 * 2) * (8 * 2)  # one output chunk's window


def test_pyramid_is_rebuilt_from_scratch(tmp_path):
    path, vol = _pyramid_volume(tmp_path, "labels", np.uint8, [5.0, 5.0, 5.0])
    assert ome.write_pyramid(path, min_size=4) == 3
    assert ome.write_pyramid(path, min_size=14) == 1
    assert sorted(zarr.open_group(str(path), mode="r").array_keys()) == ["0", "1"]
    assert len(_check_ngff(path)) == 2
    np.testing.assert_array_equal(io.open_levels(path)[1][:], vol[::2, ::2, ::2])


def test_atomic_outputs_get_their_pyramid_before_the_rename(tmp_path, monkeypatch):
    monkeypatch.setattr(ome, "PYRAMID_MIN_SIZE", 9)
    vol = np.random.default_rng(1).integers(0, 255, (4, 20, 18), dtype=np.uint8)
    io.write_volume(tmp_path / "w.zarr", vol, chunks=(2, 8, 8), attrs={"kind": "raw"})
    assert [a.shape for a in io.open_levels(tmp_path / "w.zarr")] == [(4, 20, 18), (4, 10, 9)]
    tifffile.imwrite(tmp_path / "v.tif", vol)
    converted = io.convert(tmp_path / "v.tif", tmp_path / "c.zarr", voxel_size_nm=(5, 5, 5))
    assert len(io.open_levels(tmp_path / "c.zarr")) == 2 and converted.shape == vol.shape
    # An OME output with levels is a conversion source too: its full resolution is read.
    again = io.convert(tmp_path / "c.zarr", tmp_path / "again.zarr", chunks=(4, 8, 8))
    np.testing.assert_array_equal(again[:], vol)
    probs = SimpleNamespace(shape=(1, *vol.shape), chunks=(1, 4, 8, 8))
    mask = (vol > 100).astype(np.uint8)
    with _mask_output(tmp_path / "mask.zarr", BinarizeMedian(0.5), probs) as out:
        out[...] = mask
        assert not (tmp_path / "mask.zarr").exists()
    levels = io.open_levels(tmp_path / "mask.zarr")
    np.testing.assert_array_equal(levels[1][:], mask[:, ::2, ::2])


def test_failed_pyramid_leaves_no_output(tmp_path, monkeypatch):
    monkeypatch.setattr(ome, "PYRAMID_MIN_SIZE", 4)

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ome, "_downsample_into", broken)
    with pytest.raises(KeyboardInterrupt):
        io.write_volume(tmp_path / "w.zarr", np.ones((2, 16, 16), np.uint8))
    assert list(tmp_path.iterdir()) == []
