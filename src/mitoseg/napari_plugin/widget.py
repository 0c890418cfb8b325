"""The napari dock widget: segment the current image with a pretrained model or a checkpoint.

``Run`` loads the model, predicts the image block by block in a napari worker thread (the
progress bar counts blocks, the status line the tiles of the block being predicted; ``Cancel``
stops after the current batch of tiles), decodes the probabilities into instances or a mask and
lists one row per object (selecting a row centres the view on that object). The thresholds of
the decoder then appear, set to the values the model was validated with; ``Decode again``
reruns only the decoder and the table on the kept probabilities, never the network. The non-Qt
work is :mod:`mitoseg.napari_plugin.segment`.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    Table,
    create_widget,
)
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_warning

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint file"
DEFAULT_OUTPUT = "model's default"
# the table's columns, in this order (all of measure_objects' are kept in `table`)
SHOWN = (
    *("id", "voxels", "volume_nm3", "surface_nm2", "centroid_z", "centroid_y", "centroid_x"),
    *("axis_major_nm", "elongation", "sphericity", "skeleton_length_nm", "touches_border"),
)
_NM_PER_UNIT = {"nanometer": 1.0, "nm": 1.0, "micrometer": 1000.0, "µm": 1000.0, "um": 1000.0}


def layer_voxel_size(layer: Any) -> tuple[float, float, float] | None:
    """(z, y, x) nm of an image layer: its scale when its units are physical (nm, um), else
    None (pixels: the voxel size is unknown)."""
    units = [str(u) for u in getattr(layer, "units", ())][-3:]
    factors = [_NM_PER_UNIT.get(u) for u in units]
    if len(factors) != 3 or any(f is None for f in factors):
        return None
    return tuple(float(s) * f for s, f in zip(layer.scale[-3:], factors, strict=True))  # type: ignore[return-value,operator]


def layer_volume_path(layer: Any) -> Path | None:
    """The raw volume a layer of the mitoseg reader was opened from (None for other layers)."""
    info = dict(layer.metadata.get("mitoseg") or {})
    path = info.get("path")
    return Path(path) if path and info.get("kind") in ("raw", "") else None


def table_rows(table: dict[str, np.ndarray]) -> dict[str, list[Any]]:
    """The shown columns of an object table, floats rounded for reading."""
    rows: dict[str, list[Any]] = {}
    for name in SHOWN:
        values = table[name]
        rows[name] = [round(float(v), 2) if values.dtype.kind == "f" else v.item() for v in values]
    return rows


class SegmentWidget(Container):
    """Dock widget: model, image, output, thresholds, run / cancel, progress, object table.

    Attributes:
        worker: the running (or last) napari worker, or None.
        model: the loaded model (a :class:`~mitoseg.napari_plugin.segment.LoadedModel`) or None.
        result: the last :class:`~mitoseg.napari_plugin.segment.Segmentation`, or None.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from mitoseg.napari_plugin.segment import pretrained_names  # torch: once docked

        super().__init__(labels=True)
        self.viewer = viewer
        self.worker: Any = None
        self.model: Any = None
        self.result: Any = None
        self._model_ref: str | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._voxel: tuple[float, float, float] | None = None
        names = pretrained_names()
        self.model_choice = ComboBox(label="model", choices=[*names, CHECKPOINT])
        # a training checkpoint, or a bioimage.io package of mitoseg-export-model
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.ckpt *.zip")
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        # a callable: napari resets a dock widget's choices whenever layers change
        self.output = ComboBox(label="output", choices=self._output_choices)
        self.thresholds = Container(label="thresholds", labels=True)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.decode_button = PushButton(text="Decode again", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="")
        self.table = Table(label="objects")
        self.extend([
            self.model_choice, self.checkpoint, self.image, self.output, self.thresholds,
            self.run_button, self.cancel_button, self.decode_button, self.progress, self.status,
            self.table,
        ])  # fmt: skip
        self.model_choice.changed.connect(self._show_checkpoint)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.decode_button.clicked.connect(self.decode_again)
        self.output.changed.connect(self._fill_thresholds)
        self.table.native.itemSelectionChanged.connect(self._on_row)
        self._shown_on: Any = None  # the image layer the table's objects lie in
        self._filled_for: str | None = None  # the model whose choices are shown
        self._show_checkpoint()

    # --- the choices -----------------------------------------------------------------------

    def _show_checkpoint(self, *_: Any) -> None:
        self.checkpoint.visible = self.model_choice.value == CHECKPOINT

    def model_ref(self) -> str:
        """The chosen pretrained name, or the checkpoint path."""
        if self.model_choice.value != CHECKPOINT:
            return str(self.model_choice.value)
        path = Path(self.checkpoint.value)
        if not str(self.checkpoint.value) or path.is_dir():
            raise ValueError(
                "choose a checkpoint file (.ckpt of mitoseg-train, or .zip of mitoseg-export-model)"
            )
        return str(path)

    def decoder(self) -> Any:
        """The decoder of the chosen output, with the thresholds as set in the widget."""
        decoders = self.model.decoders()
        choice = self.output.value
        decoder = self.model.decoder if choice not in decoders else decoders[choice]
        values = {w.name: float(w.value) for w in self.thresholds}
        names = {f.name for f in dataclasses.fields(decoder)}
        return dataclasses.replace(decoder, **{k: v for k, v in values.items() if k in names})

    def _output_choices(self, *_: Any) -> list[str]:
        return [DEFAULT_OUTPUT, *(self.model.decoders() if self.model is not None else ())]

    def _fill_choices(self) -> None:
        """Output choices and threshold boxes of a newly loaded model."""
        self._filled_for = self._model_ref
        self.output.reset_choices()
        self.output.value = DEFAULT_OUTPUT
        self._fill_thresholds()

    def _fill_thresholds(self, *_: Any) -> None:
        """One box per threshold of the chosen output's decoder, at the model's values."""
        from mitoseg.napari_plugin.segment import threshold_fields

        if self.model is None:
            return
        decoders = self.model.decoders()
        choice = self.output.value
        decoder = decoders.get(choice, self.model.decoder)
        self.thresholds.clear()
        for name, value in threshold_fields(decoder).items():
            box = FloatSpinBox(name=name, label=name, value=value, min=0.0, max=1.0, step=0.01)
            self.thresholds.append(box)

    # --- running ---------------------------------------------------------------------------

    def run(self, *_: Any) -> Any:
        """Load the model (when another is chosen), predict the image, decode, measure."""
        layer = self.image.value
        try:
            ref = self.model_ref()
            if layer is None:
                raise ValueError("open an image first (no Image layer)")
        except ValueError as error:
            return self._fail(error)
        self._voxel = layer_voxel_size(layer)
        source = layer_volume_path(layer)
        data = layer.data[0] if layer.multiscale else layer.data
        # the settings shown belong to this model once it has run: read them here, in Qt's thread
        decoder = self.decoder() if ref == self._filled_for and self.model is not None else None
        self._start(self._run_steps(ref, source, data, decoder), layer)
        return self.worker

    def decode_again(self, *_: Any) -> Any:
        """Decode the kept probabilities with the current output and thresholds."""
        from mitoseg.napari_plugin.segment import decode_steps

        if self.result is None or self.model is None:
            return self._fail(ValueError("run the model first"))
        steps = decode_steps(self.result.probs, self.decoder(), self._voxel_size())
        self._start(steps, self._shown_on)  # the image the probabilities belong to
        return self.worker

    def cancel(self, *_: Any) -> None:
        """Stop the running job after its current block."""
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "cancelling after this block..."

    def _voxel_size(self) -> tuple[float, float, float] | None:
        return self._voxel or self.model.voxel_size_nm

    def _run_steps(
        self, ref: str, source: Path | None, data: Any, decoder: Any
    ) -> Generator[Any, None, Any]:
        """The worker's job (in its thread: no Qt calls here)."""
        from mitoseg.napari_plugin import segment

        yield segment.Progress(0, 0, "loading the model")
        if self.model is None or ref != self._model_ref:
            self.model, self._model_ref = segment.load_model(ref), ref
            self.result = None
        warnings = []
        if self._voxel is None:
            if self.model.voxel_size_nm is not None:
                warnings.append(
                    "the image's scale is in pixels: using the model's voxel size "
                    f"{self.model.voxel_size_nm} nm for the sizes of objects"
                )
            self._voxel = self.model.voxel_size_nm
        voxel = self._voxel or (1.0, 1.0, 1.0)
        if source is None:  # the predictor reads a zarr volume: a copy of the layer's data
            yield segment.Progress(0, 0, "copying the image")
            self._tmp = tempfile.TemporaryDirectory(prefix="mitoseg-napari-")
            source = segment.write_raw(Path(self._tmp.name) / "raw.zarr", data, voxel)
        decoder = decoder or self.model.decoder
        result = yield from segment.segment_steps(
            self.model, source, decoder, voxel, on_tiles=self._on_tiles
        )
        result.warnings[:0] = warnings
        return result

    def _on_tiles(self, progress: Any) -> None:
        """Inside a block (the worker's thread): stop there if asked, else report the tiles."""
        from mitoseg.napari_plugin.segment import Cancelled

        if self.worker is not None and self.worker.abort_requested:
            raise Cancelled("cancelled inside a block")
        if self.worker is not None:
            self.worker.yielded.emit(progress)  # a Qt signal: delivered in Qt's thread

    def _start(self, steps: Generator[Any, None, Any], layer: Any) -> None:
        self.worker = create_worker(lambda: (yield from steps), _start_thread=False)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(lambda result: self._on_result(result, layer))
        self.worker.errored.connect(self._fail)
        self.worker.aborted.connect(lambda: self._finish("cancelled"))
        self.worker.finished.connect(self._on_finished)
        self._set_running(True)
        self.worker.start()

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.decode_button.enabled = not running and self.result is not None
        self.cancel_button.enabled = running

    def _on_progress(self, progress: Any) -> None:
        self.progress.max = max(progress.total, 1)
        self.progress.value = progress.done
        text = progress.stage + (f" {progress.done}/{progress.total}" if progress.total else "")
        if progress.tiles is not None:  # inside the next block
            text += f" blocks, {progress.tiles[0]}/{progress.tiles[1]} tiles of the next"
        self.status.value = text

    def _on_result(self, result: Any, layer: Any) -> None:
        if self.model is not None and self._filled_for != self._model_ref:
            self._fill_choices()
        self.result = result
        for message in result.warnings:
            show_warning(message)
        self._show(result, layer)
        count = len(result.table["id"])
        self._finish(f"{result.kind.value}: {count} objects")

    def _on_finished(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._set_running(False)

    def _finish(self, message: str) -> None:
        self.status.value = message

    def _fail(self, error: Exception) -> None:
        from mitoseg.napari_plugin.segment import Cancelled

        if isinstance(error, Cancelled):
            self._finish("cancelled")
            self._set_running(False)
            return
        self.status.value = f"error: {error}"
        show_error(str(error))
        self._set_running(False)

    # --- showing ---------------------------------------------------------------------------

    def _put(self, name: str, data: Any, kind: str, layer: Any, **kwargs: Any) -> Any:
        """Update the layer ``name`` (or add it) with the image layer's scale and offset."""
        if name in self.viewer.layers:
            self.viewer.layers[name].data = data
            return self.viewer.layers[name]
        place = {"scale": layer.scale, "translate": layer.translate}
        add = self.viewer.add_labels if kind == "labels" else self.viewer.add_image
        return add(data, name=name, **place, **kwargs)

    def _show(self, result: Any, layer: Any) -> None:
        scale = 255.0 if result.probs.dtype == np.uint8 else 1.0
        for channel, probs in zip(self.model.channels, result.probs, strict=True):
            self._put(
                f"{layer.name} {channel}", probs, "image", layer, colormap="magma",
                blending="additive", contrast_limits=(0.0, scale), visible=False,
            )  # fmt: skip
        self._put(f"{layer.name} {result.kind.value}", result.segmentation, "labels", layer)
        self.table.value = table_rows(result.table)
        self._shown_on = layer

    def go_to(self, row: int) -> None:
        """Centre the view on the object of table row ``row`` (its centroid's slice)."""
        if self.result is None or not 0 <= row < len(self.result.table["id"]):
            return
        layer = self._shown_on
        centroid = np.array([self.result.table[f"centroid_{a}"][row] for a in "zyx"])
        world = centroid * np.asarray(layer.scale[-3:]) + np.asarray(layer.translate[-3:])
        axes = range(self.viewer.dims.ndim - 3, self.viewer.dims.ndim)
        self.viewer.dims.set_point(axes, world)
        self.viewer.camera.center = tuple(world)

    def _on_row(self) -> None:
        self.go_to(self.table.native.currentRow())
