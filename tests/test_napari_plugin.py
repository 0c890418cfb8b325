"""The napari plugin (issue 21.4): its npe2 manifest, the reader of mitoseg's OME-Zarr outputs,
the widget's work without Qt (blockwise prediction, decoding, the object table) and the widget
in a headless viewer (napari's ``make_napari_viewer``, Qt offscreen).

Qt's offscreen platform has no OpenGL context, and vispy then fails on napari's two start-up
queries of the GL driver (extensions, texture sizes; vispy/vispy#2736); the viewer test answers
them with fixed values (:func:`_offscreen_gl`). Nothing is drawn offscreen, so nothing else
needs GL. With a display (``DISPLAY`` set, e.g. under Xvfb) the real driver answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari", reason="the napari extra: pip install -e '.[napari]'")
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt starts

import torch  # noqa: E402
from torch import nn  # noqa: E402

from mitoseg import io  # noqa: E402
from mitoseg.napari_plugin import reader  # noqa: E402

VOXEL = [30.0, 8.0, 8.0]
SHAPE = (12, 40, 48)
BALLS = [((6, 12, 12), 5), ((6, 26, 34), 5)]  # centre (z, y, x) and radius in voxels


def _balls(shape=SHAPE) -> np.ndarray:
    """uint32 ids of two separate balls (in voxels)."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ids = np.zeros(shape, np.uint32)
    for i, ((cz, cy, cx), r) in enumerate(BALLS, 1):
        ids[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r] = i
    return ids


def _raw(shape=SHAPE) -> np.ndarray:
    return np.where(_balls(shape) > 0, 240, 10).astype(np.uint8)


def _write(path: Path, data: np.ndarray, kind: str, **attrs) -> Path:
    axes = ["c", "z", "y", "x"] if data.ndim == 4 else ["z", "y", "x"]
    base = {"axes": axes, "kind": kind, "voxel_size_nm": VOXEL}
    io.write_volume(path, data, attrs=base | attrs, chunks=(8, 32, 32))
    return path


def _run_folder(tmp_path: Path) -> Path:
    """A run folder as mitoseg writes it: raw, probabilities, mask and instances."""
    folder = tmp_path / "run"
    folder.mkdir()
    raw = _raw()
    ids = _balls()
    probs = np.stack([raw, np.zeros_like(raw)])
    _write(folder / "instances.zarr", ids, "instances")
    _write(folder / "raw.zarr", raw, "raw")
    _write(folder / "mask.zarr", (ids > 0).astype(np.uint8), "mask")
    _write(folder / "probs.zarr", probs, "probabilities", channels=["foreground", "contour"],
           scale=255)  # fmt: skip
    return folder


# --- a model: identity foreground, no contour -------------------------------------------------


class ForegroundIsRaw(nn.Module):
    """Two channels: foreground = the input (sigmoid(logit(x)) = x), contour = 0.001."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = torch.logit(x.clamp(1e-4, 1 - 1e-4))
        return torch.cat([foreground, torch.full_like(foreground, -7.0)], dim=1)


def _checkpoint(path: Path, tile=(8, 32, 32)) -> Path:
    config = {
        "model": {"_target_": f"{__name__}.ForegroundIsRaw"},
        "target": {"name": "bc", "channels": ["foreground", "contour"]},
        "postprocess": {
            "_target_": "mitoseg.decode.instances.BCWatershed",
            "seed_threshold": 0.85,
            "contour_threshold": 0.6,
            "mask_threshold": 0.8,
            "min_seed_size": 4,
            "min_size": 20,
        },  # fmt: skip
        "predict": {
            "tile_shape": list(tile),
            "overlap": 0.25,
            "blend": "gaussian",
            "tta": "none",
            "dtype": "uint8",
            "batch_size": 2,
        },  # fmt: skip
        "data": {"voxel_size_nm": VOXEL},
    }
    torch.save({"mitoseg": {"config": config}, "state_dict": {}}, path)
    return path


def _registry(folder: Path, name: str = "tiny") -> Path:
    """A pretrained-model registry folder ($MITOSEG_PRETRAINED) holding one entry: the
    checkpoint's config and its (empty) state dict, as mitoseg.pretrained stores them."""
    from mitoseg.pretrained import sha256_of

    entry = folder / name
    entry.mkdir(parents=True)
    torch.save({}, entry / "weights.pt")
    config = torch.load(_checkpoint(folder / "bc.ckpt"), weights_only=True)["mitoseg"]["config"]
    manifest = {"name": name, "sha256": sha256_of(entry / "weights.pt"), "config": config}
    (entry / "manifest.json").write_text(json.dumps(manifest))
    return folder


# --- manifest and reader ---------------------------------------------------------------------


def test_manifest_is_valid_and_names_the_reader_and_widget() -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest._from_package_or_name("mitoseg")  # what `npe2 validate` checks
    manifest.validate_imports()  # `npe2 validate --imports`: every python_name imports
    assert manifest.name == "mitoseg"
    (read,) = manifest.contributions.readers
    assert read.accepts_directories and read.command == "mitoseg.get_reader"
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    assert commands["mitoseg.get_reader"] == "mitoseg.napari_plugin.reader:get_reader"
    assert [w.command for w in manifest.contributions.widgets] == ["mitoseg.segment_widget"]
    assert commands["mitoseg.segment_widget"] == "mitoseg.napari_plugin.widget:SegmentWidget"


def test_reader_opens_a_run_folder_with_types_and_voxel_scale(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path)
    read = reader.get_reader(str(folder))
    assert read is not None
    layers = read(str(folder))
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["raw", ["probs: foreground", "probs: contour"], "mask", "instances"]
    assert [kind for *_, kind in layers] == ["image", "image", "labels", "labels"]
    for _data, kwargs, _ in layers:
        assert kwargs["scale"] == VOXEL and kwargs["units"] == "nm"
        assert kwargs["metadata"]["mitoseg"]["path"].startswith(str(folder))
    np.testing.assert_array_equal(np.asarray(layers[3][0]), _balls())
    assert layers[1][1]["channel_axis"] == 0 and layers[1][1]["contrast_limits"] == [0.0, 255.0]
    # one volume alone opens too
    (only,) = reader.read(str(folder / "instances.zarr"))
    assert only[2] == "labels" and only[1]["name"] == "instances"


def test_reader_gives_pyramids_as_multiscale_and_declines_other_paths(tmp_path: Path) -> None:
    big = _write(tmp_path / "big.zarr", np.zeros((2, 300, 600), np.uint8), "raw")
    (layer,) = reader.read(str(big))
    assert layer[1]["multiscale"] and [lvl.shape for lvl in layer[0]] == [
        (2, 300, 600),
        (2, 150, 300),
    ]
    assert layer[1]["scale"] == VOXEL  # level 0's; napari scales the levels itself
    import zarr

    zarr.create_array(str(tmp_path / "theirs.zarr"), shape=(4, 4), dtype="u1")  # not ours
    (tmp_path / "empty").mkdir()
    (tmp_path / "image.tif").write_bytes(b"II*\x00")
    for other in ("theirs.zarr", "empty", "image.tif", "missing"):
        assert reader.get_reader(str(tmp_path / other)) is None, other


# --- the widget's work, without Qt -----------------------------------------------------------


def test_pretrained_models_are_listed_and_load_by_name(tmp_path: Path, monkeypatch) -> None:
    from mitoseg.napari_plugin import segment

    monkeypatch.setenv("MITOSEG_PRETRAINED", str(_registry(tmp_path / "registry")))
    assert "tiny" in segment.pretrained_names()
    model = segment.load_model("tiny")
    assert model.source == "pretrained:tiny" and model.channels == ("foreground", "contour")


def test_segment_steps_predict_blockwise_decode_and_measure(tmp_path: Path) -> None:
    from mitoseg.decode.base import OutputKind
    from mitoseg.napari_plugin import segment

    model = segment.load_model(_checkpoint(tmp_path / "bc.ckpt"))
    assert set(model.decoders()) == {"instances", "mask"}
    assert segment.threshold_fields(model.decoder) == {
        "seed_threshold": 0.85, "contour_threshold": 0.6, "mask_threshold": 0.8
    }  # fmt: skip
    raw = segment.write_raw(tmp_path / "raw.zarr", _raw(), VOXEL)
    tiles = []
    steps = segment.segment_steps(
        model, raw, model.decoder, VOXEL, block_shape=(8, 32, 32), on_tiles=tiles.append
    )
    progress = []
    try:
        while True:
            progress.append(next(steps))
    except StopIteration as stop:
        result = stop.value
    blocks = [p for p in progress if p.stage == "predicting"]
    assert [(p.done, p.total) for p in blocks] == [(i, 8) for i in range(9)]  # 2 x 2 x 2 blocks
    # inside a block: the tiles it runs (not those carried from the blocks before), in
    # batches of 2, up to all of them
    running = sorted({p.done for p in tiles})
    assert running[0] == 0 and set(running) <= set(range(8))
    for block in running:
        done = [p.tiles for p in tiles if p.done == block]
        assert done[-1][0] == done[-1][1] and [d for d, _ in done] == sorted(d for d, _ in done)
    # identity foreground through tiles, blending and blocks: the raw back, no seams
    np.testing.assert_array_equal(result.probs[0], _raw())
    assert result.kind is OutputKind.INSTANCES
    assert len(np.unique(result.segmentation)) == 3  # background and the two balls
    table = result.table
    assert table["voxels"].tolist() == sorted(np.bincount(_balls().ravel())[1:].tolist()) or (
        sorted(table["voxels"].tolist()) == sorted(np.bincount(_balls().ravel())[1:].tolist())
    )
    np.testing.assert_allclose(table["volume_nm3"], table["voxels"] * np.prod(VOXEL))
    # other thresholds, no network: a mask whose components are the two balls
    mask = segment.decode(result.probs, model.decoders()["mask"], VOXEL)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert len(segment.object_table(mask, OutputKind.MASK, VOXEL)["id"]) == 2


@pytest.mark.slow  # ~12 s CPU: Lightning's predict loop and a real network
def test_the_widget_predicts_what_mitoseg_predict_writes(tmp_path: Path) -> None:
    """A trained network (the layout_v0 fixture): the same probabilities as mitoseg-predict."""
    from mitoseg.napari_plugin import segment
    from tests.helpers import predict_in_process

    ckpt = Path(__file__).parent / "fixtures" / "layout_v0.ckpt"
    raw = segment.write_raw(tmp_path / "raw.zarr", _raw((20, 40, 48)), [5.0, 5.0, 5.0])
    written = predict_in_process(
        tmp_path, f"ckpt={ckpt}", f"input={raw}", f"output={tmp_path / 'probs.zarr'}",
        "trainer.precision=32-true", "channels_last=false",
    )  # fmt: skip
    expected = np.asarray(io.open_volume(written))
    model = segment.load_model(ckpt, device="cpu")
    plan, _ = segment.make_plan(model, raw, block_shape=(8, 32, 32))  # other blocks: no seams
    steps = segment.predict_steps(model, plan)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            probs = stop.value
            break
    np.testing.assert_array_equal(probs, expected)


def test_a_tile_callback_stops_the_prediction_inside_a_block(tmp_path: Path) -> None:
    from mitoseg.napari_plugin import segment

    model = segment.load_model(_checkpoint(tmp_path / "bc.ckpt"))
    plan, _ = segment.make_plan(model, segment.write_raw(tmp_path / "raw.zarr", _raw(), VOXEL))

    def stop(progress: segment.Progress) -> None:
        raise segment.Cancelled("stop")

    steps = segment.predict_steps(model, plan, on_tiles=stop)
    assert next(steps) == segment.Progress(0, 1)
    with pytest.raises(segment.Cancelled):
        next(steps)
    assert model.module.tile_progress is None  # the module is left as it was


def test_write_raw_refuses_what_is_not_a_volume(tmp_path: Path) -> None:
    from mitoseg.napari_plugin import segment

    with pytest.raises(io.VolumeError, match=r"shape \(4, 5\).*\(Z, Y, X\)"):
        segment.write_raw(tmp_path / "raw.zarr", np.zeros((4, 5)), VOXEL)


def test_load_model_names_a_missing_checkpoint(tmp_path: Path) -> None:
    from mitoseg.cli.common import CheckpointError
    from mitoseg.napari_plugin import segment

    with pytest.raises(CheckpointError, match="nothing.ckpt"):
        segment.load_model(tmp_path / "nothing.ckpt")


def test_the_voxel_size_comes_from_a_physical_layer_scale_only() -> None:
    from napari.layers import Image

    from mitoseg.napari_plugin.widget import layer_voxel_size

    data = np.zeros((2, 3, 4), np.uint8)
    assert layer_voxel_size(Image(data, scale=VOXEL, units="nm")) == tuple(VOXEL)
    assert layer_voxel_size(Image(data, scale=(0.03, 0.008, 0.008), units="um")) == pytest.approx(
        VOXEL
    )
    assert layer_voxel_size(Image(data, scale=VOXEL)) is None  # pixels: unknown


# --- in a viewer (napari's fixture, Qt offscreen) --------------------------------------------


@pytest.fixture()
def _offscreen_gl(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed answers to napari's GL driver queries where Qt has no GL context (see the module
    docstring); the real driver's with a display."""
    if os.environ.get("QT_QPA_PLATFORM") != "offscreen":
        return
    import napari._vispy.canvas as canvas
    import napari._vispy.layers.base as base
    import napari._vispy.layers.image as image
    import napari._vispy.layers.labels as labels

    monkeypatch.setattr(image, "get_gl_extensions", lambda: "texture_float", raising=False)
    for module in (canvas, base, image, labels):
        monkeypatch.setattr(module, "get_max_texture_sizes", lambda: (4096, 2048), raising=False)


def _wait(qtbot, widget, start) -> None:
    """Start a job with ``start()`` and wait for its worker to finish."""
    assert start() is not None, widget.status.value
    # the widget's own handler of `finished` (connected before the start, unlike a wait on the
    # signal here, which a quick job finishes before)
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)


def test_viewer_opens_outputs_and_the_widget_segments_the_image(
    make_napari_viewer, qtbot, tmp_path: Path, _offscreen_gl, monkeypatch
) -> None:
    monkeypatch.setenv("MITOSEG_PRETRAINED", str(_registry(tmp_path / "registry")))
    viewer = make_napari_viewer()
    layers = viewer.open(str(_run_folder(tmp_path)), plugin="mitoseg")
    assert [layer.name for layer in layers] == [
        "raw", "probs: foreground", "probs: contour", "mask", "instances"
    ]  # fmt: skip
    assert type(viewer.layers["instances"]).__name__ == "Labels"
    assert tuple(viewer.layers["instances"].scale) == tuple(VOXEL)

    _, widget = viewer.window.add_plugin_dock_widget("mitoseg", "Segment mitochondria")
    assert "tiny" in widget.model_choice.choices  # the registry's models, then a file
    assert widget.model_choice.choices[-1] == "checkpoint file"
    widget.model_choice.value = "tiny"
    widget.image.value = viewer.layers["raw"]
    _wait(qtbot, widget, widget.run)
    assert widget.status.value == "instances: 2 objects"
    result = viewer.layers["raw instances"]
    assert type(result).__name__ == "Labels" and tuple(result.scale) == tuple(VOXEL)
    assert len(np.unique(result.data)) == 3
    assert widget.table.shape == (2, 12) and widget.table.column_headers[0] == "id"
    assert widget.progress.value == widget.progress.max  # every block counted
    widget.table.native.selectRow(1)  # centres the view on the second object
    z, y, x = (widget.result.table[f"centroid_{a}"][1] for a in "zyx")
    np.testing.assert_allclose(viewer.dims.point[0], z * VOXEL[0], atol=VOXEL[0] / 2)
    np.testing.assert_allclose(viewer.camera.center[-2:], (y * VOXEL[1], x * VOXEL[2]))
    # thresholds of the model's decoder, then the mask from the kept probabilities, no network
    assert [w.name for w in widget.thresholds] == [
        "seed_threshold", "contour_threshold", "mask_threshold"
    ]  # fmt: skip
    widget.output.value = "mask"
    widget.thresholds["threshold"].value = 0.99  # above the balls' 240 / 255: nothing left
    _wait(qtbot, widget, widget.decode_again)
    assert widget.status.value == "mask: 0 objects"
    assert not viewer.layers["raw mask"].data.any()

    # a checkpoint file, and cancel: the job stops after its current block
    widget.model_choice.value = "checkpoint file"
    assert widget.run() is None and "choose a checkpoint file" in widget.status.value
    widget.checkpoint.value = _checkpoint(tmp_path / "bc.ckpt")
    widget.image.value = viewer.layers["raw"]
    _wait(qtbot, widget, lambda: (widget.run(), widget.cancel())[0])
    assert widget.status.value == "cancelled" and widget.run_button.enabled
