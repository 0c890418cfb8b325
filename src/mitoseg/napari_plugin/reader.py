"""napari reader of the OME-Zarr volumes mitoseg writes (numpy and zarr only; no napari import).

A path opens when it is a volume mitoseg wrote (a zarr store with the ``mitoseg`` marker, or a
volume of an earlier version, see :func:`mitoseg.files.written_by_mitoseg`), or a folder holding
such volumes (a run folder: ``raw.zarr``, ``test_probs.zarr``, ``instances.zarr``, ...), which
opens them all. Each volume becomes one layer per its ``kind``:

- ``raw`` (and volumes without a kind): an image;
- ``probabilities`` (C, Z, Y, X): one image per channel, named after the channel, contrast
  limits [0, 1] in probability (``[0, 255]`` for uint8 storage);
- ``mask``, ``instances``, ``labels``: a labels layer.

The scale is the voxel size of the NGFF metadata (level 0's ``scale`` transform on the z, y, x
axes; nanometres when the axes say so), pyramids open as multiscale data, and the layer's
metadata keep the volume's path under ``mitoseg`` (the segmentation widget predicts from it
instead of copying the layer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zarr

from mitoseg import io
from mitoseg.files import MARKER_FILE, written_by_mitoseg
from mitoseg.io.ome import multiscale_of

LayerData = tuple[Any, dict[str, Any], str]
LABEL_KINDS = frozenset({"mask", "instances", "labels"})
# the order layers are added in: images below labels
KIND_ORDER = ("raw", "", "probabilities", "labels", "mask", "instances")
SPATIAL = ("z", "y", "x")


def is_volume(path: str | Path) -> bool:
    """Whether ``path`` is a zarr volume mitoseg wrote (a plain folder it wrote is not)."""
    path = Path(path)
    zarr_meta = any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup"))
    return zarr_meta and not (path / MARKER_FILE).is_file() and written_by_mitoseg(path)


def volumes_at(path: str | Path) -> list[Path]:
    """The volume at ``path``, or the volumes directly inside the folder ``path`` (kind order:
    raw, probabilities, masks, instances); empty when there is none."""
    path = Path(path)
    if is_volume(path):
        return [path]
    if not path.is_dir():
        return []
    found = [p for p in sorted(path.iterdir()) if p.is_dir() and is_volume(p)]
    return sorted(found, key=lambda p: _order(volume_kind(p)))


def volume_kind(path: Path) -> str:
    """The ``kind`` attribute of a volume's level 0 (``""`` when it has none)."""
    return str(dict(io.open_volume(path).attrs).get("kind", ""))


def _order(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else 1


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: :func:`read` when every path holds mitoseg volumes, else None (napari
    then tries other readers)."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or not all(volumes_at(p) for p in paths):
        return None
    return read


def read(path: str | Sequence[str]) -> list[LayerData]:
    """The layers of every volume at ``path`` (one path or several), as napari layer data.

    Raises:
        mitoseg.io.VolumeError: a volume cannot be opened.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    return [layer for p in paths for volume in volumes_at(p) for layer in layer_data(volume)]


def ngff_scale(path: Path, levels: Sequence[zarr.Array]) -> tuple[list[float], str | None]:
    """Voxel size (z, y, x) of level 0 from the NGFF metadata and its unit ("nm", or None when
    the axes state none); a plain array (no NGFF metadata) uses ``voxel_size_nm``, else 1."""
    attrs = dict(levels[0].attrs)
    group = zarr.open_group(str(path), mode="r") if levels[0].path else None
    multiscale = multiscale_of(group.attrs.asdict()) if group is not None else None
    if multiscale is None:
        voxel = attrs.get("voxel_size_nm")
        return ([float(v) for v in voxel], "nm") if voxel else ([1.0] * 3, None)
    axes = [str(a["name"]) for a in multiscale["axes"]]
    transforms = multiscale["datasets"][0].get("coordinateTransformations", [])
    scale = next((t["scale"] for t in transforms if t.get("type") == "scale"), [1.0] * len(axes))
    units = {str(a.get("unit")) for a in multiscale["axes"] if a["name"] in SPATIAL}
    unit = "nm" if units == {"nanometer"} else None
    return [float(s) for a, s in zip(axes, scale, strict=True) if a in SPATIAL], unit


def layer_data(path: str | Path, name: str | None = None) -> list[LayerData]:
    """napari layer data of one volume (see the module docstring): ``(data, kwargs, type)``,
    where data is the zarr level 0, or the list of levels of a pyramid. The layer is called
    ``name`` (default: the folder's name without ``.zarr``); channels ``"{name}: {channel}"``."""
    path = Path(path)
    levels = io.open_levels(path)
    base = levels[0]
    attrs = dict(base.attrs)
    kind = str(attrs.get("kind", ""))
    scale, unit = ngff_scale(path, levels)
    name = path.name.removesuffix(".zarr") if name is None else name
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": scale,
        "multiscale": len(levels) > 1,
        "metadata": {"mitoseg": {"path": str(path), "kind": kind}},
    }
    if unit is not None:
        kwargs["units"] = unit
    data: Any = list(levels) if len(levels) > 1 else base
    if kind in LABEL_KINDS:
        return [(data, kwargs, "labels")]
    if base.ndim == 4:  # (C, Z, Y, X) probabilities: one image per channel
        channels = attrs.get("channels") or [str(c) for c in range(base.shape[0])]
        kwargs["name"] = [f"{name}: {c}" for c in channels]
        kwargs["channel_axis"] = 0
        kwargs["contrast_limits"] = [0.0, float(attrs.get("scale", 1))]
        kwargs["colormap"] = "magma"
        kwargs["blending"] = "additive"
    return [(data, kwargs, "image")]
