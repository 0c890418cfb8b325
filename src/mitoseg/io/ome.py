"""OME-Zarr (NGFF 0.5 on zarr v3) metadata and multiscale pyramids for mitoseg volumes.

A volume is a zarr group: the full-resolution array at ``0``, downsampled levels at ``1``,
``2``, ... and the NGFF ``ome.multiscales`` group attribute that napari and neuroglancer read.
Our own attributes (``axes``, ``kind``, ``voxel_size_nm``, ...) live on array ``0``, which is
what :func:`mitoseg.io.open_volume` returns.

Levels halve y and x; z is halved too while it is not much coarser than y-x (isotropic data),
so anisotropic EM keeps its z sampling until the in-plane voxels catch up. Label volumes
(labels, instances, masks) are downsampled by striding, which never invents ids; raw and
probabilities by the mean. Each level is written chunk by chunk from the level before.

The NGFF metadata is built and checked with ``ome-zarr-models`` (its 0.5 models); label kinds
(labels, masks, instances) carry ``image-label``, so napari's OME-Zarr reader opens them as
labels layers. :func:`validate_volume` checks a written volume against the same models.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import zarr
from ome_zarr_models.v05.axes import Axis
from ome_zarr_models.v05.base import BaseOMEAttrs
from ome_zarr_models.v05.image import Image, ImageAttrs
from ome_zarr_models.v05.image_label import ImageLabel, ImageLabelAttrs
from ome_zarr_models.v05.image_label_types import Color, Label
from ome_zarr_models.v05.labels import VALID_DTYPES as LABEL_DTYPES
from ome_zarr_models.v05.multiscales import Dataset, Multiscale

logger = logging.getLogger(__name__)

NGFF_VERSION = "0.5"
LEVEL0 = "0"
# Stop adding levels once the smaller in-plane side is at most this many voxels.
PYRAMID_MIN_SIZE = 256
# z is halved with y-x while its voxel size is at most this times the in-plane one.
Z_COARSER_LIMIT = 1.5
MEAN_KINDS = frozenset({"raw", "probabilities"})
# Kinds stored as NGFF labels (``image-label``): viewers show them as label layers.
LABEL_KINDS = frozenset({"labels", "mask", "instances"})
MASK_RGBA = (255, 0, 255, 255)  # magenta foreground of masks (value 1); 0 stays transparent
_AXIS_TYPES = {"z": "space", "y": "space", "x": "space", "c": "channel", "t": "time"}
_DEFAULT_AXES = {2: ("y", "x"), 3: ("z", "y", "x"), 4: ("c", "z", "y", "x")}


def volume_axes(shape: Sequence[int], attrs: Mapping[str, Any]) -> tuple[str, ...]:
    """Axis names of a volume: its ``axes`` attribute, else (y, x), (z, y, x) or (c, z, y, x).

    Raises:
        ValueError: the ``axes`` attribute does not match the number of axes, or there is none
            and the array is not 2D to 4D.
    """
    if "axes" in attrs:
        axes = tuple(str(a) for a in attrs["axes"])
        if len(axes) != len(shape):
            raise ValueError(f"axes {list(axes)} do not match shape {tuple(shape)}")
        return axes
    if len(shape) not in _DEFAULT_AXES:
        raise ValueError(f"an OME-Zarr volume has 2 to 4 axes without an 'axes' attribute: {shape}")
    return _DEFAULT_AXES[len(shape)]


def voxel_scale(axes: Sequence[str], voxel_size_nm: Sequence[float] | None) -> list[float]:
    """Physical size per axis: ``voxel_size_nm`` (z, y, x) on the spatial axes, 1 elsewhere."""
    sizes = dict(zip(("z", "y", "x"), voxel_size_nm or (), strict=False))
    return [float(sizes.get(a, 1.0)) for a in axes]


def axes_metadata(axes: Sequence[str], with_unit: bool) -> list[Axis]:
    """NGFF ``axes`` entries; spatial axes get ``nanometer`` when the voxel size is known."""
    entries = []
    for name in axes:
        kind = _AXIS_TYPES.get(name)
        unit = "nanometer" if with_unit and kind == "space" else None
        entries.append(Axis(name=name, type=kind, unit=unit))
    return entries


def image_label(attrs: Mapping[str, Any]) -> Label | None:
    """The NGFF ``image-label`` entry of a volume with array attributes ``attrs``: set for
    label kinds (:data:`LABEL_KINDS`) so viewers show them as labels; a mask (``kind`` mask, or
    converted labels with ``binary``) gets :data:`MASK_RGBA` for its value 1. None for raw and
    probabilities. No ``source``: our volumes are separate groups, not inside an image's
    ``labels/`` folder, so there is no key image at a known relative path."""
    kind = attrs.get("kind")
    if kind not in LABEL_KINDS:
        return None
    if kind == "mask" or attrs.get("binary") is True:
        return Label(colors=(Color(label_value=1, rgba=MASK_RGBA),))
    return Label()


def ome_attributes(
    axes: Sequence[str],
    scales: Sequence[Sequence[float]],
    attrs: Mapping[str, Any],
    method: str | None = None,
) -> dict[str, Any]:
    """The group attribute ``ome`` of a multiscale volume with levels ``0 .. len(scales) - 1``,
    built and validated by ``ome-zarr-models`` (NGFF 0.5).

    Args:
        axes: axis names, e.g. ("c", "z", "y", "x").
        scales: physical size of a voxel per axis, one list per level.
        attrs: the level-0 array attributes: ``kind`` names the multiscale and decides the
            ``image-label`` entry (:func:`image_label`); spatial axes are in nanometres when
            ``voxel_size_nm`` is set (else unitless voxels).
        method: how levels were downsampled ("mean" / "nearest"), once there are levels.

    Raises:
        ValueError: the metadata breaks NGFF 0.5 (e.g. an axis name twice), naming the rule.
    """
    try:
        multiscale = Multiscale(
            axes=axes_metadata(axes, attrs.get("voxel_size_nm") is not None),
            datasets=tuple(
                Dataset.build(path=str(i), scale=list(s), translation=None)
                for i, s in enumerate(scales)
            ),
            name=_name(attrs),
            type=method,
        )
        label = image_label(attrs)
        ome: BaseOMEAttrs
        if label is None:
            ome = ImageAttrs(version=NGFF_VERSION, multiscales=[multiscale])
        else:
            ome = ImageLabelAttrs(version=NGFF_VERSION, multiscales=[multiscale], image_label=label)
    except pydantic.ValidationError as err:
        raise ValueError(f"OME-Zarr metadata of axes {list(axes)}: {err}") from err
    return ome.model_dump(mode="json", by_alias=True, exclude_none=True)


def volume_group_attributes(shape: Sequence[int], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Group attributes of a new volume with array attributes ``attrs``: level 0 only."""
    axes = volume_axes(shape, attrs)
    return {"ome": ome_attributes(axes, [voxel_scale(axes, attrs.get("voxel_size_nm"))], attrs)}


def _name(attrs: Mapping[str, Any]) -> str:
    return str(attrs.get("kind", "volume"))


def validate_volume(path: str | Path) -> Image | ImageLabel:
    """Check the volume group at ``path`` against NGFF 0.5 with ``ome-zarr-models``: the
    metadata, every level it lists (present, an array, its ``dimension_names`` the axes), and
    for a labels volume the ``image-label`` entry and an integer dtype on every level.

    Returns:
        The validated model: ``ImageLabel`` when the group has ``image-label``, else ``Image``.

    Raises:
        ValueError: the group breaks a rule; the message names ``path`` and the rule.
    """
    group = zarr.open_group(str(path), mode="r")
    try:
        image = Image.from_zarr(group)
        if "image-label" not in image.ome_attributes.model_dump(by_alias=True):
            return image
        label = ImageLabel(attributes=image.attributes.model_dump(), members=image.members)
    except (pydantic.ValidationError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is not a valid OME-Zarr 0.5 image: {err}") from err
    for level in level_paths(group.attrs.asdict()):
        dtype = np.dtype(group[level].dtype)
        if dtype not in LABEL_DTYPES:
            raise ValueError(
                f"{path}/{level}: labels of dtype {dtype}; NGFF labels are one of "
                f"{[str(d) for d in LABEL_DTYPES]}"
            )
    return label


def multiscale_of(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The first multiscale of group attributes (NGFF 0.5 ``ome``, or 0.4 at the top level)."""
    ome = attrs.get("ome", attrs)
    entries = ome.get("multiscales") if isinstance(ome, Mapping) else None
    if not entries or not isinstance(entries, list) or not entries[0].get("datasets"):
        return None
    return dict(entries[0])


def level_paths(attrs: Mapping[str, Any]) -> list[str]:
    """Paths of the pyramid levels, full resolution first; empty when not a multiscale."""
    multiscale = multiscale_of(attrs)
    return [] if multiscale is None else [str(d["path"]) for d in multiscale["datasets"]]


def is_volume_group(path: str | Path) -> bool:
    """True when ``path`` is a zarr v3 group with multiscale metadata (read without zarr)."""
    meta = Path(path) / "zarr.json"
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    attributes = doc.get("attributes", {}) if isinstance(doc, dict) else {}
    return doc.get("node_type") == "group" and multiscale_of(attributes) is not None


def level_factors(
    shape: Sequence[int],
    axes: Sequence[str],
    voxel_size_nm: Sequence[float] | None,
    min_size: int = PYRAMID_MIN_SIZE,
) -> list[tuple[int, ...]]:
    """Downsampling factor per axis of each pyramid level, relative to the level before.

    y and x are halved while the smaller of them exceeds ``min_size``. z is halved along when
    its current voxel size is at most :data:`Z_COARSER_LIMIT` times the in-plane one; without a
    known voxel size z is kept (EM is usually anisotropic). Other axes are never downsampled.
    """
    if "y" not in axes or "x" not in axes:
        return []
    shape = [int(s) for s in shape]
    size = dict(zip(axes, voxel_scale(axes, voxel_size_nm), strict=True))
    iy, ix = axes.index("y"), axes.index("x")
    factors = []
    while min(shape[iy], shape[ix]) > min_size:
        level = []
        for i, name in enumerate(axes):
            halve = name in ("y", "x") or (
                name == "z"
                and voxel_size_nm is not None
                and shape[i] > 1
                and size["z"] <= Z_COARSER_LIMIT * min(size["y"], size["x"])
            )
            level.append(2 if halve else 1)
        for i, name in enumerate(axes):
            shape[i] = math.ceil(shape[i] / level[i])
            size[name] *= level[i]
        factors.append(tuple(level))
    return factors


def downsample_nearest(block: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Every ``factors[i]``-th voxel from the first: ids stay ids. Same dtype, ceil shape."""
    return block[tuple(slice(None, None, f) for f in factors)]


def downsample_mean(block: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Mean over ``factors`` windows; windows cut by the border average what is there.

    Integers are rounded to the nearest value of their dtype; float16 / float32 are averaged in
    float32, float64 in float64. Output shape: ``ceil(block.shape / factors)``.
    """
    work_dtype = np.float64 if block.dtype == np.float64 else np.float32
    work = block.astype(work_dtype, copy=False)
    pad = [(0, -n % f) for n, f in zip(block.shape, factors, strict=True)]
    if any(after for _, after in pad):
        # Repeating the border along an axis weights every voxel of a cut window equally.
        work = np.pad(work, pad, mode="edge")
    split = [d for n, f in zip(work.shape, factors, strict=True) for d in (n // f, f)]
    means = work.reshape(split).mean(axis=tuple(range(1, 2 * block.ndim, 2)))
    if np.issubdtype(block.dtype, np.integer):
        return np.rint(means).astype(block.dtype)
    return means.astype(block.dtype)


def downsample_region(
    source: zarr.Array,
    out: zarr.Array,
    write: tuple[slice, ...],
    factors: Sequence[int],
    mean: bool,
) -> None:
    """Fill the region ``write`` of ``out`` (whole chunks of it) from ``source``."""
    reduce = downsample_mean if mean else downsample_nearest
    read = tuple(
        slice(w.start * f, min(w.stop * f, n))
        for w, f, n in zip(write, factors, source.shape, strict=True)
    )
    out[write] = reduce(np.asarray(source[read]), factors)


def _downsample_into(
    source: zarr.Array, out: zarr.Array, factors: Sequence[int], mean: bool
) -> None:
    """Fill ``out`` one of its chunks at a time from the matching region of ``source``."""
    grid = [math.ceil(n / c) for n, c in zip(out.shape, out.chunks, strict=True)]
    for index in np.ndindex(*grid):
        write = tuple(
            slice(i * c, min((i + 1) * c, n))
            for i, c, n in zip(index, out.chunks, out.shape, strict=True)
        )
        downsample_region(source, out, write, factors, mean)


# fill(source, out, factors, mean): fills one pyramid level from the level before
LevelFill = Callable[[zarr.Array, zarr.Array, Sequence[int], bool], None]


def write_pyramid(
    path: str | Path, min_size: int | None = None, fill: LevelFill | None = None
) -> int:
    """(Re)build the downsampled levels of the volume group at ``path`` from its level 0.

    Streams chunk by chunk (memory: a few chunks), replaces levels from an earlier call, and
    updates the NGFF metadata last, so the metadata lists a level only once it is complete.
    Levels keep level 0's chunk shape (clipped), dtype, codecs and fill value.

    Args:
        path: a volume group made by :func:`mitoseg.io.create_volume`.
        min_size: stop once the smaller in-plane side is at most this; None:
            :data:`PYRAMID_MIN_SIZE`.
        fill: fills one level from the one before (e.g. block by block on a Dask cluster,
            :func:`mitoseg.decode.blockwise.cluster.pyramid_fill`); None: chunk by chunk here.

    Returns:
        The number of levels added (0 for a small volume).
    """
    min_size = PYRAMID_MIN_SIZE if min_size is None else min_size
    group = zarr.open_group(str(path), mode="r+")
    paths = level_paths(group.attrs.asdict())
    if not paths:
        raise ValueError(f"{path} has no OME-Zarr multiscale metadata")
    base = group[paths[0]]
    attrs = base.attrs.asdict()
    axes = volume_axes(base.shape, attrs)
    voxel = attrs.get("voxel_size_nm")
    mean = attrs.get("kind") in MEAN_KINDS
    for old in paths[1:]:
        if old in group:
            del group[old]
    scales = [voxel_scale(axes, voxel)]
    source = base
    for i, factors in enumerate(level_factors(base.shape, axes, voxel, min_size), 1):
        shape = tuple(math.ceil(n / f) for n, f in zip(source.shape, factors, strict=True))
        out = group.create_array(
            str(i),
            shape=shape,
            chunks=tuple(min(c, n) for c, n in zip(base.chunks, shape, strict=True)),
            dtype=base.dtype,
            compressors=base.compressors,
            fill_value=base.fill_value,
            dimension_names=axes,
            overwrite=True,
        )
        (fill or _downsample_into)(source, out, factors, mean)
        scales.append([s * f for s, f in zip(scales[-1], factors, strict=True)])
        source = out
    method = ("mean" if mean else "nearest") if len(scales) > 1 else None
    ome = ome_attributes(axes, scales, attrs, method)
    group.update_attributes({"ome": ome})
    logger.debug("%s: %d pyramid levels", path, len(scales) - 1)
    return len(scales) - 1
