"""Voxel sizes as files state them: TIFF tags, ImageJ and OME-TIFF metadata, HDF5 and zarr
attributes, OME-Zarr scales; and how two voxel sizes compare.

Every reader returns a :class:`VoxelSize` in nanometres, (z, y, x), with the axes the file does
not state as None (a plain TIFF's resolution tags give y and x only), or None when the file
states nothing usable. Where it is read from:

- TIFF: OME-XML ``Pixels`` ``PhysicalSizeZ/Y/X`` with ``PhysicalSize*Unit`` (default
  micrometre); else ImageJ metadata: y, x from ``XResolution`` / ``YResolution`` (pixels per
  ``unit``) and z from ``spacing``, in ImageJ's ``unit`` (e.g. ``micron``, ``nm``); else the
  TIFF resolution tags with ``ResolutionUnit`` inch or centimetre (y, x only). Tag resolutions
  coarser than :data:`MAX_TAG_SIZE_NM` per pixel are print resolutions (72 dpi and the like), not
  a microscope's, and are ignored; so is ``ResolutionUnit`` none.
- HDF5 (the dataset's attributes, then those of its groups up to the root) and zarr arrays:
  ``voxel_size_nm`` (nm), ``element_size_um`` (micrometres; ilastik / Fiji), ``resolution`` and
  ``voxel_size`` (nm, or in the unit of a ``unit`` / ``units`` attribute beside them), each a
  list of 3 numbers in (z, y, x) order.
- OME-Zarr groups: the ``scale`` of the level read (times the multiscale's own scale), on the
  axes named z, y and x, in each axis's ``unit``; a scale without units is not a physical size.
"""

from __future__ import annotations

import logging
import math
import numbers
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

AXES = ("z", "y", "x")
# Relative difference per axis beyond which two voxel sizes disagree (warnings, resampling).
TOLERANCE = 0.2
# z coarser than this times the in-plane size: anisotropic data (in-plane augmentation, targets).
ANISOTROPY_LIMIT = 1.5
# A pixel coarser than 10 um from resolution tags is a print resolution (dpi), not a microscope's.
MAX_TAG_SIZE_NM = 1e4
# Attribute names of HDF5 datasets and zarr arrays, in order of preference, and their unit.
ATTRIBUTES = (
    ("voxel_size_nm", "nm"),
    ("element_size_um", "um"),
    ("resolution", None),
    ("voxel_size", None),
)
_NM_PER_UNIT = {
    "pm": 1e-3,
    "picometer": 1e-3,
    "a": 0.1,
    "angstrom": 0.1,
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "cm": 1e7,
    "centimeter": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "inch": 2.54e7,
}

Sizes = tuple[float | None, float | None, float | None]


@dataclass(frozen=True)
class VoxelSize:
    """A voxel size stated by a file: ``nm`` is (z, y, x) in nanometres, None where the file
    says nothing about an axis; ``origin`` says where it was read, e.g. "ImageJ metadata of
    a.tif"."""

    nm: Sizes
    origin: str

    @property
    def complete(self) -> tuple[float, float, float] | None:
        """(z, y, x) when every axis is known, else None."""
        if any(v is None for v in self.nm):
            return None
        return tuple(float(v) for v in self.nm)  # type: ignore[arg-type,return-value]

    def describe(self) -> str:
        """e.g. ``z ?, y 4.6, x 4.6 nm (TIFF resolution tags of a.tif)``."""
        parts = ", ".join(
            f"{a} {'?' if v is None else f'{v:g}'}" for a, v in zip(AXES, self.nm, strict=True)
        )
        return f"{parts} nm ({self.origin})"


def check_voxel_size(voxel_size_nm: Any) -> tuple[float, float, float]:
    """``(z, y, x)`` nm as three positive finite floats, from any sequence of numbers (YAML
    lists, numpy values).

    Raises:
        ValueError: not three positive finite numbers; the message shows the value.
    """
    values = tuple(voxel_size_nm) if isinstance(voxel_size_nm, Sequence) else ()
    if len(values) != 3 or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in values
    ):
        raise ValueError(
            f"voxel_size_nm must be 3 positive sizes (z, y, x) in nm, got {voxel_size_nm!r}"
        )
    return (float(values[0]), float(values[1]), float(values[2]))


def warn_if_not_stated(
    given: Sequence[float], stated: VoxelSize | None, where: Any, log: logging.Logger
) -> None:
    """Warn on ``log`` when the voxel size ``given`` differs from the one ``where`` states by more
    than :data:`TOLERANCE` on an axis (the given one is used)."""
    differ = differing_axes(given, stated.nm) if stated is not None else []
    if stated is not None and differ:
        log.warning(
            "%s: using the voxel size given, %s, but the file states %s: they differ by more "
            "than %d %% on %s",
            where, format_nm(given), stated.describe(), round(TOLERANCE * 100), ", ".join(differ),
        )  # fmt: skip


def format_nm(sizes: Sequence[float | None]) -> str:
    """``50 x 4.6 x 4.6 nm`` (unknown axes as ``?``)."""
    return " x ".join("?" if v is None else f"{float(v):g}" for v in sizes) + " nm"


def nm_per_unit(unit: Any) -> float | None:
    """Nanometres in one ``unit`` (``"micron"``, ``"µm"``, ``"\\u00B5m"``, ``"nanometer"``, ...);
    None for an unknown unit."""
    if not isinstance(unit, str):
        return None
    name = unit.strip().lower().replace("\\u00b5", "u").replace("µ", "u").replace("μ", "u")
    return _NM_PER_UNIT.get(name.rstrip("s") if name not in _NM_PER_UNIT else name)


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def differing_axes(
    a: Sequence[float | None], b: Sequence[float | None], tolerance: float = TOLERANCE
) -> list[str]:
    """Axes on which both sizes are known and differ by more than ``tolerance`` of the
    smaller."""
    return [
        axis
        for axis, x, y in zip(AXES, a, b, strict=True)
        if x is not None and y is not None and abs(x - y) > tolerance * min(x, y)
    ]


def is_isotropic(voxel_size_nm: Sequence[float], limit: float = ANISOTROPY_LIMIT) -> bool:
    """False when z is more than ``limit`` times coarser than the finer in-plane axis (or the
    in-plane axes differ by as much)."""
    z, y, x = (float(v) for v in voxel_size_nm)
    return max(z, y, x) <= limit * min(z, y, x)


# ----------------------------------------------------------------------------- TIFF


def _ome_tiff(xml: str, name: str) -> VoxelSize | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("Z", "Y", "X"):
        value = _positive(pixels.get(f"PhysicalSize{axis}"))
        scale = nm_per_unit(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        sizes.append(None if value is None or scale is None else value * scale)
    if all(v is None for v in sizes):
        return None
    return VoxelSize(tuple(sizes), f"OME-TIFF metadata of {name}")  # type: ignore[arg-type]


def _per_pixel(tag: Any) -> float | None:
    """Units per pixel of an X/YResolution tag (a rational, pixels per unit)."""
    if tag is None:
        return None
    value = tag.value
    pixels = value[0] / value[1] if isinstance(value, tuple) and value[1] else value
    pixels = _positive(pixels)
    return None if pixels is None else 1.0 / pixels


def _imagej_tiff(metadata: Mapping[str, Any], page: Any, name: str) -> VoxelSize | None:
    scale = nm_per_unit(metadata.get("unit"))
    if scale is None:
        return None
    y, x = (_per_pixel(page.tags.get(t)) for t in ("YResolution", "XResolution"))
    z = _positive(metadata.get("spacing"))
    sizes = tuple(None if v is None else v * scale for v in (z, y, x))
    if all(v is None for v in sizes):
        return None
    return VoxelSize(sizes, f"ImageJ metadata of {name}")  # type: ignore[arg-type]


def _tag_tiff(page: Any, name: str) -> VoxelSize | None:
    unit = page.tags.get("ResolutionUnit")
    # 2 inch, 3 centimetre (TIFF 6); 4 mm and 5 um are tifffile's extensions.
    scale = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}.get(int(unit.value) if unit else 2)
    if scale is None:
        return None
    y, x = (_per_pixel(page.tags.get(t)) for t in ("YResolution", "XResolution"))
    if y is None or x is None or max(y, x) * scale > MAX_TAG_SIZE_NM:
        return None
    return VoxelSize((None, y * scale, x * scale), f"TIFF resolution tags of {name}")


def tiff_voxel_size(tif: Any) -> VoxelSize | None:
    """The voxel size an open :class:`tifffile.TiffFile` states (see the module docstring)."""
    name = tif.filename or "the TIFF"
    try:
        page = tif.pages.first
        if tif.is_ome and tif.ome_metadata:
            found = _ome_tiff(tif.ome_metadata, name)
            if found is not None:
                return found
        if tif.is_imagej and tif.imagej_metadata:
            found = _imagej_tiff(tif.imagej_metadata, page, name)
            if found is not None:
                return found
        return _tag_tiff(page, name)
    except Exception as err:  # malformed tags of many kinds: the voxel size is then unknown
        logger.debug("%s: cannot read the voxel size: %s", name, err)
        return None


# ----------------------------------------------------------------------------- attributes


def _unit_of(attrs: Mapping[str, Any]) -> float | None:
    for key in ("unit", "units"):
        if key in attrs:
            unit = attrs[key]
            if isinstance(unit, (list, tuple)) and unit:
                unit = unit[0] if len(set(map(str, unit))) == 1 else None
            return nm_per_unit(unit)
    return 1.0  # nm, the convention of CREMI's ``resolution`` and of ours


def attrs_voxel_size(attrs: Mapping[str, Any], where: str) -> VoxelSize | None:
    """The voxel size in attributes (see :data:`ATTRIBUTES`); ``where`` names them, e.g.
    ``"HDF5 attribute {key} of a.h5/raw"`` is built from it."""
    for key, unit in ATTRIBUTES:
        if key not in attrs:
            continue
        value = attrs[key]
        scale = nm_per_unit(unit) if unit else _unit_of(attrs)
        sizes = [_positive(v) for v in value] if isinstance(value, (list, tuple)) else []
        if scale is None or len(sizes) != 3 or None in sizes:
            logger.warning("%s: attribute %r = %r is not a voxel size (z, y, x)", where, key, value)
            continue
        nm = tuple(float(v) * scale for v in sizes)  # type: ignore[operator]
        return VoxelSize(nm, f"attribute {key!r} of {where}")  # type: ignore[arg-type]
    return None


def hdf5_voxel_size(dataset: Any, path: str) -> VoxelSize | None:
    """The voxel size in the attributes of an h5py dataset or of the groups above it."""
    node = dataset
    while True:
        attrs = {k: _plain(v) for k, v in node.attrs.items()}
        found = attrs_voxel_size(attrs, f"{path}:{node.name}")
        if found is not None or node.name == "/":
            return found
        node = node.parent


def _plain(value: Any) -> Any:
    """numpy arrays and bytes of HDF5 attributes as lists and str."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def ome_zarr_voxel_size(multiscale: Mapping[str, Any], level: str, where: str) -> VoxelSize | None:
    """The voxel size of ``level`` in an NGFF multiscale (``axes`` with units, scales)."""
    axes = multiscale.get("axes") or []
    names = [a.get("name") if isinstance(a, Mapping) else str(a) for a in axes]
    units = [nm_per_unit(a.get("unit")) if isinstance(a, Mapping) else None for a in axes]
    scale = [1.0] * len(names)
    datasets = [d for d in multiscale.get("datasets", []) if str(d.get("path")) == level]
    transforms = [
        *(datasets[0].get("coordinateTransformations", []) if datasets else []),
        *multiscale.get("coordinateTransformations", []),
    ]
    for transform in transforms:
        if transform.get("type") == "scale" and len(transform.get("scale", [])) == len(names):
            scale = [s * float(t) for s, t in zip(scale, transform["scale"], strict=True)]
    sizes = []
    for axis in AXES:
        i = names.index(axis) if axis in names else None
        known = i is not None and units[i] is not None and _positive(scale[i]) is not None
        sizes.append(scale[i] * units[i] if known else None)  # type: ignore[index,operator]
    if not datasets or all(v is None for v in sizes):
        return None
    return VoxelSize(tuple(sizes), f"OME-Zarr scale of {where}")  # type: ignore[arg-type]
