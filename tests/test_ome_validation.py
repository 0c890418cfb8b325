"""OME-Zarr by the book (issue 21, point 5): every zarr mitoseg writes validates against NGFF 0.5
with ``ome-zarr-models`` (the community's pydantic models of the spec), pyramids included, and
label kinds carry ``image-label`` so viewers open them as labels layers.

What is validated: converted raw / instance labels / masks / class-coded selections, the
probabilities of ``mitoseg-predict`` and the volumes it caches for ``resample=true`` (the input on
the model's grid and the prediction there), the mask and instances of ``mitoseg-segment`` (in
memory and blockwise), the labels test-time evaluation copies, each with its pyramid levels.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel

from mitoseg import io
from mitoseg.decode.instances import BCWatershed
from mitoseg.decode.masks import BinarizeMedian
from mitoseg.decode.run import BlockwiseOptions, DaskOptions, run_decoder
from mitoseg.evaluate.testtime import TestEvaluation
from mitoseg.geometry import Box
from mitoseg.io import ome

FIXTURE = Path(__file__).parent / "fixtures" / "layout_v0.ckpt"  # semantic net at 5 nm
VOXEL = [10.0, 5.0, 5.0]


@pytest.fixture(autouse=True)
def small_pyramids(monkeypatch):
    """Levels down to 8 voxels in-plane, so these small outputs get pyramids to validate."""
    monkeypatch.setattr(ome, "PYRAMID_MIN_SIZE", 8)


def _volumes(root: Path) -> dict[str, Path]:
    """Every OME-Zarr volume group under ``root`` (its name relative to ``root``)."""
    found = {}
    for meta in sorted(root.rglob("zarr.json")):
        if ome.is_volume_group(meta.parent):
            found[str(meta.parent.relative_to(root))] = meta.parent
    return found


def _ome(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["ome"]


def _check(path: Path) -> Image | ImageLabel:
    """Validate ``path``; the kind decides what it must be: an image or a labelled image."""
    model = ome.validate_volume(path)
    kind = io.open_volume(path).attrs["kind"]
    levels = ome.level_paths(zarr.open_group(str(path), mode="r").attrs.asdict())
    assert len(levels) >= 2, f"{path}: expected pyramid levels to validate, got {levels}"
    if kind in ("labels", "mask", "instances"):
        assert isinstance(model, ImageLabel), path
        assert model.ome_attributes.image_label is not None
    else:
        assert type(model) is Image and "image-label" not in _ome(path), path
    return model


def _mask_colors(path: Path) -> list:
    return _ome(path)["image-label"].get("colors", [])


def test_converted_raw_labels_masks_and_selections_validate(tmp_path, small_volume) -> None:
    raw, labels = small_volume
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    tifffile.imwrite(tmp_path / "ids.tif", labels.astype(np.uint16))
    tifffile.imwrite(tmp_path / "mask.tif", ((labels > 0) * 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "classes.tif", np.where(labels > 0, 191, 0).astype(np.uint8))
    out = tmp_path / "out"
    io.convert(tmp_path / "raw.tif", out / "raw.zarr", voxel_size_nm=VOXEL)
    io.convert(tmp_path / "ids.tif", out / "ids.zarr", labels=True, voxel_size_nm=VOXEL)
    io.convert(tmp_path / "mask.tif", out / "mask.zarr", labels=True, voxel_size_nm=VOXEL)
    io.convert(tmp_path / "classes.tif", out / "sel.zarr", labels=True, label_values=191)
    assert set(_volumes(out)) == {"raw.zarr", "ids.zarr", "mask.zarr", "sel.zarr"}
    for path in _volumes(out).values():
        _check(path)
    # masks get a colour for their foreground; instance ids are left to the viewer's colormap
    for name in ("mask.zarr", "sel.zarr"):
        assert _mask_colors(out / name) == [{"label-value": 1, "rgba": list(ome.MASK_RGBA)}]
    assert _mask_colors(out / "ids.zarr") == []
    axes = _ome(out / "ids.zarr")["multiscales"][0]["axes"]
    assert axes == [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]


def test_predicted_and_cached_probabilities_and_decoded_outputs_validate(
    tmp_path, small_volume, monkeypatch
) -> None:
    from mitoseg.cli.predict_grid import PredictGrid
    from tests.helpers import predict_in_process

    raw, _ = small_volume
    io.write_volume(tmp_path / "raw.zarr", raw[:8], attrs={"kind": "raw", "voxel_size_nm": VOXEL})
    # 10 nm sections for a 5 nm model: the input is resampled into the cache, predicted there
    # (a work output in the cache, removed once resampled back) and resampled back
    work = []
    write_back = PredictGrid.write_back

    def checked_write_back(self, probs, *args):  # type: ignore[no-untyped-def]
        work.append(_check(probs))
        return write_back(self, probs, *args)

    monkeypatch.setattr(PredictGrid, "write_back", checked_write_back)
    probs = predict_in_process(
        tmp_path, f"ckpt={FIXTURE}", f"input={tmp_path / 'raw.zarr'}",
        f"output={tmp_path / 'probs.zarr'}", "resample=true",
    )  # fmt: skip
    assert len(work) == 1
    (cached,) = _volumes(tmp_path / "cache").values()  # the input on the model's grid
    for path in (probs, cached):
        _check(path)
    multiscale = _ome(probs)["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["c", "z", "y", "x"]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, *VOXEL]
    assert multiscale["type"] == "mean"

    mask = run_decoder(BinarizeMedian(median_size=0), probs, tmp_path / "mask.zarr").output
    _check(Path(mask))
    assert _mask_colors(Path(mask)) == [{"label-value": 1, "rgba": list(ome.MASK_RGBA)}]
    assert _ome(Path(mask))["multiscales"][0]["type"] == "nearest"


def test_blockwise_instances_and_copied_labels_validate(tmp_path, small_volume) -> None:
    _, labels = small_volume
    fg = (labels > 0).astype(np.float32)
    contour = np.zeros_like(fg)
    probs = io.write_volume(
        tmp_path / "probs.zarr", np.stack([fg, contour]), chunks=(8, 32, 32),
        attrs={"axes": ["c", "z", "y", "x"], "kind": "probabilities", "voxel_size_nm": VOXEL},
    )  # fmt: skip
    assert probs.shape[0] == 2
    options = BlockwiseOptions((8, 32, 32), (8, 32, 32), DaskOptions(None, 0))
    decoder = BCWatershed(min_seed_size=8, min_size=8)
    result = run_decoder(
        decoder, tmp_path / "probs.zarr", tmp_path / "instances.zarr",
        blockwise=options, work_dir=tmp_path / "work",
    )  # fmt: skip
    model = _check(Path(result.output))
    assert model.ome_attributes.image_label.colors is None
    assert io.open_volume(result.output)[:].max() > 0
    # the validation part of a training volume's labels, copied beside its probabilities
    io.write_volume(tmp_path / "labels.zarr", labels, attrs={"kind": "labels"})
    evaluation = TestEvaluation(str(tmp_path / "run"), ["foreground"], BinarizeMedian(), {})
    val = SimpleNamespace(
        name="val",
        region=Box((0, 0, 8), (24, 48, 40)),
        paths=SimpleNamespace(labels=tmp_path / "labels.zarr"),
    )
    _check(evaluation._write_labels(val))


def test_broken_volumes_are_refused_naming_the_rule(tmp_path) -> None:
    # labels of a float dtype are no NGFF labels
    io.write_volume(tmp_path / "f.zarr", np.ones((2, 4, 4), np.float32), attrs={"kind": "labels"})
    with pytest.raises(ValueError, match=r"f.zarr/0: labels of dtype float32"):
        ome.validate_volume(tmp_path / "f.zarr")
    # a level the metadata lists but the group lacks
    io.write_volume(tmp_path / "r.zarr", np.ones((2, 40, 40), np.uint8), attrs={"kind": "raw"})
    group = zarr.open_group(str(tmp_path / "r.zarr"), mode="r+")
    del group["1"]
    with pytest.raises(ValueError, match=r"r.zarr is not a valid OME-Zarr 0.5 image.*array at 1"):
        ome.validate_volume(tmp_path / "r.zarr")
    # metadata that breaks the spec is never written
    with pytest.raises(ValueError, match="Axis names must be unique"):
        ome.ome_attributes(["z", "z", "x"], [[1.0, 1.0, 1.0]], {"kind": "raw"})


def test_napari_ome_zarr_reader_opens_outputs_with_the_voxel_scale(tmp_path) -> None:
    """napari-ome-zarr (the reader napari uses for OME-Zarr): masks and instances become
    labels layers, raw an image, probabilities one image per channel; all at the voxel size."""
    reader_module = pytest.importorskip("napari_ome_zarr._reader")
    mask = np.zeros((4, 40, 40), np.uint8)
    mask[1:3, 5:20, 5:20] = 1
    volumes = {
        "mask": (mask, {"kind": "mask"}),
        "instances": (mask.astype(np.uint32) * 7, {"kind": "instances"}),
        "raw": (mask * 200, {"kind": "raw"}),
        "probs": (np.stack([mask, 1 - mask]), {"kind": "probabilities", "axes": list("czyx")}),
    }
    for name, (data, attrs) in volumes.items():
        path = tmp_path / "out" / "run" / f"{name}.zarr"
        io.write_volume(path, data, attrs={**attrs, "voxel_size_nm": VOXEL})
        ((levels, meta, layer_type),) = reader_module.napari_get_reader(str(path))(str(path))
        expected = "labels" if name in ("mask", "instances") else "image"
        assert layer_type == expected and len(levels) >= 2, name  # with the pyramid
        assert meta["scale"] == VOXEL, name
        assert meta.get("channel_axis") == (0 if name == "probs" else None), name
        np.testing.assert_array_equal(np.asarray(levels[0]), data, err_msg=name)
    colours = {1: [c / 255 for c in ome.MASK_RGBA]}
    path = str(tmp_path / "out" / "run" / "mask.zarr")
    assert reader_module.napari_get_reader(path)(path)[0][1]["colormap"] == colours
