"""``mitoseg-view``: look at raw, probabilities, masks, instances and ground truth together.

With napari installed (``pip install 'mitoseg[view]'``) the volumes open as napari layers at
their physical scale. Without it, a local HTTP server (127.0.0.1, CORS enabled) serves the
zarr folders and a neuroglancer link to them is printed; the server runs until Ctrl-C::

    mitoseg-view raw.zarr --probs test_probs.zarr --instances test_instances.zarr

``--png`` writes an overlay of chosen slices for a report instead, and serves nothing::

    mitoseg-view raw.zarr --labels labels.zarr --mask test_mask.zarr --png overlay.png \\
        --slices 10 40 80

With ``--labels`` (instance ids) and ``--instances`` the PNG has an error panel: ground-truth
objects coloured by what happened to them (matched, split, merged, partial, missed; the rules
of ``mitoseg-evaluate``'s ``objects.csv``), false positives red, and a legend.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from mitoseg import io
from mitoseg.analyze import plots
from mitoseg.evaluate.contingency import overlaps
from mitoseg.evaluate.objects import ObjectErrors, classify_objects
from mitoseg.files import check_output_apart

log = logging.getLogger(__name__)

NEUROGLANCER = "https://neuroglancer-demo.appspot.com/#!"
# option -> (layer name, neuroglancer layer type)
LAYER_OPTIONS = {
    "probs": ("probabilities", "image"),
    "mask": ("mask", "segmentation"),
    "instances": ("instances", "segmentation"),
    "labels": ("ground_truth", "segmentation"),
}


@dataclass(frozen=True)
class Layer:
    """One volume to show: its name, path, neuroglancer type and voxel size (z, y, x) in nm."""

    name: str
    path: Path
    kind: str
    voxel_size_nm: tuple[float, float, float]

    @property
    def levels(self) -> list[Any]:
        return io.open_levels(self.path)


def _voxel_size(array: Any) -> tuple[float, float, float] | None:
    value = dict(array.attrs).get("voxel_size_nm")
    return None if value is None else tuple(float(v) for v in value)  # type: ignore[return-value]


def build_layers(raw: Path, others: Mapping[str, Path | None]) -> list[Layer]:
    """Open every volume and give each a voxel size.

    A volume without ``voxel_size_nm`` (e.g. probabilities) that has the raw's (Z, Y, X) shape
    takes the raw's: it was predicted on that grid.

    Raises:
        io.VolumeError: a volume cannot be opened.
    """
    raw_array = io.open_volume(raw)
    raw_voxel = _voxel_size(raw_array) or (1.0, 1.0, 1.0)
    layers = [Layer("raw", Path(raw), "image", raw_voxel)]
    for option, path in others.items():
        if path is None:
            continue
        name, kind = LAYER_OPTIONS[option]
        array = io.open_volume(path)
        voxel = _voxel_size(array)
        if voxel is None and tuple(array.shape[-3:]) == tuple(raw_array.shape):
            voxel = raw_voxel
        elif voxel is None:
            log.warning("%s has no voxel_size_nm and another shape than raw: 1 nm voxels", path)
            voxel = (1.0, 1.0, 1.0)
        layers.append(Layer(name, Path(path), kind, voxel))
    return layers


def unscaled(layers: Sequence[Layer]) -> list[str]:
    """Names of layers stored without ``voxel_size_nm`` while raw has one: neuroglancer, which
    reads the stored metadata, shows them with 1 nm voxels."""
    if _voxel_size(io.open_volume(layers[0].path)) is None:
        return []
    return [layer.name for layer in layers[1:] if _voxel_size(io.open_volume(layer.path)) is None]


# --- napari -------------------------------------------------------------------------------


def show_napari(layers: Sequence[Layer]) -> None:
    """Open the layers in napari as the plugin's reader does (:mod:`mitoseg.napari_plugin.
    reader`: pyramids as multiscale data, probabilities one image per channel), named after the
    options, at each layer's voxel size (the options' volumes as labels), and run its loop."""
    import napari

    from mitoseg.napari_plugin.reader import layer_data

    viewer = napari.Viewer()
    for layer in layers:
        for data, kwargs, kind in layer_data(layer.path, name=layer.name):
            kwargs |= {"scale": layer.voxel_size_nm, "units": "nm"}
            kind = "labels" if layer.kind == "segmentation" else kind
            getattr(viewer, f"add_{kind}")(data, **kwargs)
    napari.run()


def napari_available() -> bool:
    try:
        import napari  # noqa: F401
    except ImportError:
        return False
    return True


# --- neuroglancer -------------------------------------------------------------------------


def _zarr_scheme(path: Path) -> str:
    return "zarr3" if (path / "zarr.json").exists() else "zarr2"


def neuroglancer_state(layers: Sequence[Layer], base_url: str) -> dict[str, Any]:
    """Viewer state with one layer per volume, each at ``{base_url}/{layer name}/``."""
    entries = [
        {
            "type": layer.kind,
            "name": layer.name,
            "source": f"{_zarr_scheme(layer.path)}://{base_url}/{layer.name}/",
        }
        for layer in layers
    ]
    return {"layers": entries, "layout": "4panel", "selectedLayer": {"layer": layers[0].name}}


def neuroglancer_url(layers: Sequence[Layer], base_url: str) -> str:
    """A neuroglancer-demo link whose fragment is the URL-encoded JSON state."""
    state = json.dumps(neuroglancer_state(layers, base_url), separators=(",", ":"))
    return NEUROGLANCER + urllib.parse.quote(state, safe="")


class _Handler(SimpleHTTPRequestHandler):
    """Serve ``/{name}/...`` from ``mounts[name]``, with CORS headers for neuroglancer."""

    def __init__(self, *args: Any, mounts: Mapping[str, Path], **kwargs: Any) -> None:
        self.mounts = mounts  # set first: the base class handles the request in __init__
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        parts = [p for p in urllib.parse.unquote(urllib.parse.urlsplit(path).path).split("/") if p]
        if not parts or parts[0] not in self.mounts or any(p in (".", "..") for p in parts):
            return str(Path("/nonexistent-mitoseg-view") / "missing")
        return str(self.mounts[parts[0]].joinpath(*parts[1:]))

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        super().end_headers()

    def do_OPTIONS(self) -> None:  # noqa: N802 - the http.server naming
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


def make_server(layers: Sequence[Layer], port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 (``port`` 0: a free one) serving each layer's folder."""
    mounts = {layer.name: layer.path.resolve() for layer in layers}
    handler = functools.partial(_Handler, mounts=mounts)
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


# --- overlay ------------------------------------------------------------------------------


class _Thresholded:
    """Channel 0 of (C, Z, Y, X) probabilities >= a threshold in [0, 1], read slice by slice."""

    def __init__(self, probs: Any, threshold: float) -> None:
        self.probs = probs
        self.shape = tuple(probs.shape[1:])
        self.cut = threshold * float(dict(probs.attrs).get("scale", 1))

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.probs[(0, *key)]) >= self.cut


def object_errors(labels: Any, instances: Any, iou_threshold: float) -> ObjectErrors | None:
    """What happened to each object (:func:`mitoseg.evaluate.objects.classify_objects`, as in
    ``objects.csv`` of ``mitoseg-evaluate``), from one streamed pass over both volumes; None
    when the ground truth is a mask (at most one id): it has no objects to split or merge."""
    ov = overlaps(labels, instances)
    if ov.n_truth <= 1:
        log.warning("the ground truth holds at most one id (a mask?): no error panel")
        return None
    return classify_objects(ov, iou_threshold)


def write_overlay(args: argparse.Namespace) -> Path:
    """The ``--png`` overlay of raw, ground truth, prediction (mask, else thresholded probs),
    instances and, with both ground truth and instances, where objects are split, merged,
    missed or false."""
    raw = io.open_volume(args.raw)
    axis = "zyx".index(args.axis)
    if args.mask is not None:
        prediction: Any = io.open_volume(args.mask)
    elif args.probs is not None:
        prediction = _Thresholded(io.open_volume(args.probs), args.threshold)
    else:
        prediction = None
    depth = raw.shape[axis]
    slices = args.slices or sorted({depth // 4, depth // 2, (3 * depth) // 4})
    truth = None if args.labels is None else io.open_volume(args.labels)
    instances = None if args.instances is None else io.open_volume(args.instances)
    errors = None
    if truth is not None and instances is not None:
        if tuple(truth.shape) != tuple(instances.shape):
            raise ValueError(
                f"--labels {args.labels} {tuple(truth.shape)} and --instances "
                f"{args.instances} {tuple(instances.shape)} differ in shape"
            )
        errors = object_errors(truth, instances, args.match_iou)
    return plots.overlay_png(
        args.png, raw, slices, truth=truth, prediction=prediction, instances=instances,
        axis=axis, errors=errors, voxel_size_nm=raw.attrs.get("voxel_size_nm"),
    )  # fmt: skip


# --- entry point --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mitoseg-view",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("raw", type=Path, help="raw zarr volume")
    p.add_argument("--probs", type=Path, help="probabilities (C, Z, Y, X) zarr")
    p.add_argument("--mask", type=Path, help="decoded mask zarr")
    p.add_argument("--instances", type=Path, help="instance ids zarr")
    p.add_argument("--labels", type=Path, help="ground truth zarr (mask or instance ids)")
    p.add_argument(
        "--viewer",
        choices=("auto", "napari", "neuroglancer"),
        default="auto",
        help="auto: napari when installed, else a neuroglancer link",
    )
    p.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    p.add_argument("--no-serve", action="store_true", help="print the link, start no server")
    p.add_argument("--png", type=Path, help="write an overlay PNG of --slices and exit")
    p.add_argument("--slices", type=int, nargs="+", help="slice indices (default: 3 spread)")
    p.add_argument("--axis", choices=("z", "y", "x"), default="z", help="slicing axis")
    p.add_argument(
        "--threshold", type=float, default=0.5, help="probability threshold (--png without --mask)"
    )
    p.add_argument(
        "--match-iou",
        type=float,
        default=0.75,
        help="--png with --labels and --instances: IoU of a match in the error panel (as "
        "mitoseg-evaluate's objects.csv)",
    )
    return p


def _note_unscaled(layers: Sequence[Layer]) -> None:
    names = unscaled(layers)
    if names:
        print(f"note: {', '.join(names)} stored without voxel_size_nm: shown with 1 nm voxels")


def _serve(layers: Sequence[Layer], port: int, no_serve: bool) -> None:
    if no_serve:
        print(neuroglancer_url(layers, f"http://127.0.0.1:{port or 8000}"))
        print(f"serve the folders at http://127.0.0.1:{port or 8000}/<layer name>/ with CORS")
        _note_unscaled(layers)
        return
    server = make_server(layers, port)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    print(f"serving {', '.join(str(layer.path) for layer in layers)} at {base} (Ctrl-C stops)")
    print(neuroglancer_url(layers, base), flush=True)
    _note_unscaled(layers)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mitoseg-view``; returns 0 on success, 2 on a bad volume or option."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.png is not None:
            inputs = [args.raw, *(getattr(args, option) for option in LAYER_OPTIONS)]
            check_output_apart(args.png, inputs)  # before anything is read or written
            print(f"wrote {write_overlay(args)}")
            return 0
        others = {option: getattr(args, option) for option in LAYER_OPTIONS}
        layers = build_layers(args.raw, others)
    except (io.VolumeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    use_napari = args.viewer == "napari" or (args.viewer == "auto" and napari_available())
    if use_napari:
        if not napari_available():
            print("error: napari is not installed: pip install 'mitoseg[view]'", file=sys.stderr)
            return 2
        show_napari(layers)
        return 0
    _serve(layers, args.port, args.no_serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
