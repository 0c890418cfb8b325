"""Tests for report figures (overlay PNG, sweep plot) and mitoseg-view (napari / neuroglancer)."""

from __future__ import annotations

import json
import sys
import threading
import types
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from mitoseg import io
from mitoseg.analyze import plots
from mitoseg.cli import view

H, W = 20, 30


def _volumes():
    raw = np.full((6, H, W), 100, np.uint8)
    truth = np.zeros((6, H, W), np.uint32)
    truth[:, 2:10, 2:10] = 4
    pred = np.zeros((6, H, W), np.uint8)
    pred[:, 6:14, 6:14] = 1
    instances = np.zeros((6, H, W), np.uint32)
    instances[:, 15:19, 20:28] = 9
    return raw, truth, pred, instances


def _panel(image: np.ndarray, row: int, col: int) -> np.ndarray:
    top = plots.GAP + row * (plots.HEADER + H + plots.GAP) + plots.HEADER
    left = plots.GAP + col * (W + plots.GAP)
    return image[top : top + H, left : left + W]


def _blended(colour) -> list[int]:
    return [round(0.5 * 100 + 0.5 * c) for c in colour]


def test_overlay_png_has_one_row_per_slice_and_one_panel_per_volume(tmp_path):
    raw, truth, pred, instances = _volumes()
    path = plots.overlay_png(tmp_path / "o.png", raw, [1, 4], truth, pred, instances)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (2 * (plots.HEADER + H + plots.GAP) + plots.GAP, 4 * W + 5 * plots.GAP, 3)
    for row in (0, 1):
        assert (_panel(image, row, 0) == 100).all()  # raw, untouched
        outline = _panel(image, row, 1)
        assert list(outline[2, 5]) == list(plots.TRUTH_COLOUR)  # border of the truth square
        assert list(outline[5, 5]) == [100, 100, 100]  # its inside
        errors = _panel(image, row, 2)
        assert list(errors[8, 8]) == _blended(plots.TP_COLOUR)
        assert list(errors[12, 12]) == _blended(plots.FP_COLOUR)
        assert list(errors[3, 3]) == _blended(plots.FN_COLOUR)
        assert list(errors[18, 1]) == [100, 100, 100]
        coloured = _panel(image, row, 3)
        expected = np.rint(50 + 0.5 * plots.instance_colours(np.array([9]))[0]).tolist()
        assert coloured[16, 22].tolist() == expected and coloured[2, 2].tolist() == [100] * 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overlay_without_truth_fills_the_prediction_and_slices_along_x(tmp_path):
    raw, _, pred, _ = _volumes()
    path = plots.overlay_png(tmp_path / "o.png", raw, [7], prediction=pred, axis=2)
    image = np.asarray(Image.open(path).convert("RGB"))
    # x-slices are (Z, Y) = (6, 20); two panels
    assert image.shape == (plots.HEADER + 6 + 2 * plots.GAP, 2 * H + 3 * plots.GAP, 3)
    panel = image[plots.GAP + plots.HEADER :, plots.GAP + H + plots.GAP :][:6, :H]
    assert panel[0, 8].tolist() == _blended(plots.TP_COLOUR) and panel[0, 2].tolist() == [100] * 3


def test_overlay_refuses_bad_slices_and_shapes(tmp_path):
    raw, truth, _, _ = _volumes()
    with pytest.raises(ValueError, match=r"slices \[6\] must lie in \[0, 6\)"):
        plots.overlay_png(tmp_path / "o.png", raw, [6])
    with pytest.raises(ValueError, match="truth has shape"):
        plots.overlay_png(tmp_path / "o.png", raw, [0], truth=truth[:3])
    assert not list(tmp_path.iterdir())


def test_grey_stretches_non_uint8_and_outline_marks_instance_borders():
    assert plots.grey(np.array([[0, 1000]], np.uint16)).tolist() == [[0, 255]]
    assert plots.grey(np.full((2, 2), 3.5, np.float32)).tolist() == [[0, 0], [0, 0]]
    touching = np.array([[1, 1, 2, 2]] * 3)
    assert plots.outline(touching)[1].tolist() == [False, True, True, False]  # not the frame
    assert not plots.outline(np.zeros((3, 3), int)).any()


def _rows(thresholds, sizes=(1,)):
    return [
        {
            "run": str(i),
            "overrides": "",
            "threshold": t,
            "median_size": m,
            "fg_iou": t / m,
            "f1": "",
        }
        for i, (t, m) in enumerate((t, m) for t in thresholds for m in sizes)
    ]


def test_sweep_plot_one_and_two_parameters(tmp_path):
    one = _rows([0.3, 0.5, 0.7])
    assert plots.swept_parameters(one, ["fg_iou"]) == ["threshold"]
    assert plots.unit_score_columns(one) == ["fg_iou"]  # f1 has no value
    small = plots.sweep_plot(tmp_path / "one.png", one, ["fg_iou", "f1"])
    two = _rows([0.3, 0.5, 0.7], sizes=(1, 3))
    assert plots.swept_parameters(two, ["fg_iou"]) == ["threshold", "median_size"]
    grid = plots.sweep_plot(tmp_path / "two.png", two, ["fg_iou", "precision"], x="median_size")
    for path in (small, grid):
        assert Image.open(path).format == "PNG" and Image.open(path).size[0] >= 400
    with pytest.raises(ValueError, match="no values of"):
        plots.sweep_plot(tmp_path / "none.png", one, ["ap75"])
    with pytest.raises(ValueError, match="unknown sweep parameter 'nope'"):
        plots.sweep_plot(tmp_path / "none.png", one, ["fg_iou"], x="nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "two.png"]


def test_sweep_summary_writes_the_plot_beside_the_csv(tmp_path, capsys):
    from omegaconf import OmegaConf

    from mitoseg.cli.segment import SweepSummary

    for i, threshold in enumerate([0.3, 0.5]):
        (tmp_path / str(i)).mkdir()
        result = {
            "overrides": [f"postprocess.threshold={threshold}"],
            "postprocess": {"threshold": threshold, "median_size": 1},
            "scores": {"fg_iou": 0.5 + i / 10, "mean_iou": 0.7, "precision": 0.8},
        }
        (tmp_path / str(i) / "metrics.json").write_text(json.dumps(result))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    SweepSummary().on_multirun_end(config)
    assert Image.open(tmp_path / "sweep_plot.png").format == "PNG"
    assert (tmp_path / "sweep_summary.csv").exists()
    assert "sweep_plot.png" in capsys.readouterr().out


# --- mitoseg-view -------------------------------------------------------------------------


@pytest.fixture
def volumes(tmp_path):
    """raw (30, 8, 8) nm, probabilities without a voxel size, instances and labels."""
    raw, truth, pred, instances = _volumes()
    voxel = {"axes": ["z", "y", "x"], "voxel_size_nm": [30.0, 8.0, 8.0]}
    io.write_volume(tmp_path / "raw.zarr", raw, attrs={**voxel, "kind": "raw"})
    probs = np.stack([pred * 255, np.zeros_like(pred)]).astype(np.uint8)
    attrs = {"axes": ["c", "z", "y", "x"], "kind": "probabilities", "channels": ["fg", "contour"]}
    io.write_volume(tmp_path / "probs.zarr", probs, attrs={**attrs, "scale": 255})
    io.write_volume(tmp_path / "inst.zarr", instances, attrs={**voxel, "kind": "instances"})
    io.write_volume(tmp_path / "labels.zarr", truth, attrs={**voxel, "kind": "labels"})
    return tmp_path


def _argv(d, *extra):
    return [
        str(d / "raw.zarr"),
        "--probs",
        str(d / "probs.zarr"),
        "--instances",
        str(d / "inst.zarr"),
        *extra,
    ]


def _no_napari(monkeypatch):
    monkeypatch.setitem(sys.modules, "napari", None)  # import napari raises ImportError


def test_without_napari_a_neuroglancer_link_is_printed(volumes, monkeypatch, capsys):
    _no_napari(monkeypatch)
    assert view.main(_argv(volumes, "--no-serve", "--port", "8123")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(view.NEUROGLANCER)
    state = json.loads(urllib.parse.unquote(out[0][len(view.NEUROGLANCER) :]))
    layers = {layer["name"]: layer for layer in state["layers"]}
    base = "zarr3://http://127.0.0.1:8123"
    assert layers["raw"] == {"type": "image", "name": "raw", "source": f"{base}/raw/"}
    assert layers["probabilities"]["source"] == f"{base}/probabilities/"
    assert layers["probabilities"]["type"] == "image"
    assert layers["instances"] == {
        "type": "segmentation",
        "name": "instances",
        "source": f"{base}/instances/",
    }
    assert "probabilities stored without voxel_size_nm" in out[-1]


def test_napari_requested_but_missing_is_a_clear_error(volumes, monkeypatch, capsys):
    _no_napari(monkeypatch)
    assert view.main(_argv(volumes, "--viewer", "napari")) == 2
    assert "pip install 'mitoseg[view]'" in capsys.readouterr().err
    assert view.main([str(volumes / "missing.zarr"), "--no-serve"]) == 2


def test_napari_gets_layers_at_the_raw_scale(volumes, monkeypatch):
    calls = []

    class Viewer:
        def add_image(self, data, **kwargs):
            calls.append(("image", data, kwargs))

        def add_labels(self, data, **kwargs):
            calls.append(("labels", data, kwargs))

    fake = types.SimpleNamespace(Viewer=Viewer, run=lambda: calls.append(("run", None, {})))
    monkeypatch.setitem(sys.modules, "napari", fake)
    assert view.main(_argv(volumes, "--labels", str(volumes / "labels.zarr"))) == 0
    kinds = [(kind, kwargs.get("name")) for kind, _, kwargs in calls]
    assert kinds == [
        ("image", "raw"),
        ("image", ["probabilities: fg", "probabilities: contour"]),
        ("labels", "instances"),
        ("labels", "ground_truth"),
        ("run", None),
    ]
    for _, _, kwargs in calls[:4]:
        assert kwargs["scale"] == (30.0, 8.0, 8.0)  # probabilities take the raw's voxel size
    assert calls[1][2]["channel_axis"] == 0 and calls[1][2]["contrast_limits"] == [0, 255.0]
    assert calls[1][1].shape == (2, 6, H, W)


def test_server_serves_the_zarr_folders_with_cors(volumes):
    layers = view.build_layers(volumes / "raw.zarr", {"instances": volumes / "inst.zarr"})
    server = view.make_server(layers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/instances/zarr.json") as response:
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert json.load(response)["attributes"]["ome"]["version"] == "0.5"
        with urllib.request.urlopen(f"{base}/raw/0/zarr.json") as response:
            assert json.load(response)["shape"] == [6, H, W]
        for bad in ("/raw/../inst.zarr/zarr.json", "/other/zarr.json"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(base + bad)
    finally:
        server.shutdown()
        server.server_close()


def test_png_overlay_from_the_command_line(volumes, capsys):
    out = volumes / "overlay.png"
    argv = _argv(volumes, "--labels", str(volumes / "labels.zarr"), "--png", str(out))
    assert view.main([*argv, "--slices", "2", "3"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[:2] == (
        2 * (plots.HEADER + H + plots.GAP) + plots.GAP,
        4 * W + 5 * plots.GAP,
    )
    errors = _panel(image, 0, 2)  # prediction = probabilities >= 0.5
    assert errors[12, 12].tolist() == _blended(plots.FP_COLOUR)
    assert view.main([*argv, "--slices", "9"]) == 2
    assert "must lie in [0, 6)" in capsys.readouterr().err
