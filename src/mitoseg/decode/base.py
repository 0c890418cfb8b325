"""What every decoder is: the :class:`Decoder` protocol (numpy only).

A decoder turns probabilities (C, Z, Y, X) into a mask or instance ids (Z, Y, X). It is a frozen
dataclass whose fields are its parameters (sweeps replace them with ``dataclasses.replace``), and
it declares, instead of being guessed from its class:

- ``kind``: what it returns (:class:`OutputKind`);
- ``n_channels``: how many probability channels it reads (a mask decoder reads channel 0 of
  probabilities that may have more; an instance decoder needs exactly ``n_channels``);
- ``halo``: the context in voxels a block needs on each side to reproduce the whole-volume
  result exactly, or None when the decoder floods (watersheds), whose blockwise context is the
  runner's ``halo`` option (see :class:`mitoseg.decode.run.BlockwiseOptions`).

The decoders: :class:`mitoseg.decode.masks.BinarizeMedian`,
:class:`mitoseg.decode.instances.BCWatershed`, :class:`~mitoseg.decode.instances.AffinityWatershed`
and :class:`~mitoseg.decode.instances.ACWatershed`. :func:`mitoseg.decode.run.run_decoder` runs any
of them, in memory or blockwise.
"""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from typing import Any, Protocol

import numpy as np

from mitoseg.io import voxels
from mitoseg.io.errors import VolumeError

Shape3 = tuple[int, int, int]
VoxelSize = tuple[float, float, float]

# Size floors of the instance decoders, in nm^3 (1e9 nm^3 = 1 um^3); voxel counts follow from the
# volume's voxel size. Measured on the 3D connected components of the Lucchi++ labels (5 nm
# isotropic): apart from 1-2 voxel specks, the smallest component (cut by the volume's edge) has
# 6423 voxels = 8.0e5 nm^3 and the smallest whole one 2.6e5 voxels = 3.2e7 nm^3. MitoEM's
# published setting (30 x 8 x 8 nm = 1920 nm^3 voxels) is min_size 1024 (2.0e6 nm^3) and
# min_seed_size 32 (6.1e4 nm^3); 2.0e6 nm^3 would drop 8 edge-cut Lucchi++ mitochondria.
MIN_SIZE_NM3 = 5.0e5  # a ball of 98 nm diameter; 4000 voxels at 5 nm, 261 at 30 x 8 x 8 nm
MIN_SEED_SIZE_NM3 = 6.0e4  # 480 voxels at 5 nm, 32 (MitoEM's setting) at 30 x 8 x 8 nm


class OutputKind(str, Enum):
    """What a decoder returns; also the base name of its output (``mask.zarr``)."""

    MASK = "mask"  # bool (Z, Y, X), stored as uint8 {0, 1}
    INSTANCES = "instances"  # instance ids (Z, Y, X), 0 = background, stored as uint32


class Decoder(Protocol):
    """Probabilities -> mask or instance ids; a frozen dataclass of its parameters."""

    kind: OutputKind

    @property
    def n_channels(self) -> int:
        """Probability channels read."""
        ...

    @property
    def halo(self) -> Shape3 | None:
        """Exact blockwise context per side (z, y, x), or None for flooding decoders."""
        ...

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        """probs: (C, Z, Y, X) uint8 (p x 255) or float in [0, 1] -> (Z, Y, X)."""
        ...


SEMANTIC_COLUMNS = ("fg_iou", "mean_iou", "precision", "recall", "f1")
INSTANCE_COLUMNS = ("ap75", "ap50", "accuracy75", "are", "voi_split", "voi_merge", "n_pred")


def score_columns(decoder: Decoder) -> tuple[str, ...]:
    """The main score keys of the decoder's output kind, in display order."""
    return SEMANTIC_COLUMNS if decoder.kind is OutputKind.MASK else INSTANCE_COLUMNS


def params(decoder: Decoder) -> dict[str, Any]:
    """The decoder's parameters as JSON-friendly values."""
    return {k: _plain(v) for k, v in dataclasses.asdict(decoder).items()}  # type: ignore[call-overload]


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def voxel_count(nm3: float, override: int | None, voxel_size_nm: Any, name: str) -> int:
    """A size floor in voxels: ``override`` when set, else ``ceil(nm3 / voxel volume)``.

    Args:
        nm3: the floor in nm^3 (``min_size_nm3`` / ``min_seed_size_nm3``), >= 0.
        override: an explicit voxel count (``min_size`` / ``min_seed_size``), or None.
        voxel_size_nm: (z, y, x) nm of the probabilities' voxels, or None when unknown.
        name: the field named in errors, e.g. "min_size".

    Raises:
        ValueError: neither ``override`` nor ``voxel_size_nm`` given, or bad values.
    """
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int | np.integer) or override < 0:
            raise ValueError(f"{name} must be a voxel count >= 0 or None, got {override!r}")
        return int(override)
    if not (isinstance(nm3, int | float | np.number) and math.isfinite(nm3) and nm3 >= 0):
        raise ValueError(f"{name}_nm3 must be a finite size >= 0 in nm^3, got {nm3!r}")
    if voxel_size_nm is None:
        raise ValueError(
            f"{name}_nm3={nm3:g} needs the voxel size: set voxel_size_nm (z, y, x) nm, or give "
            f"{name} in voxels"
        )
    return max(0, math.ceil(nm3 / math.prod(voxel_size_nm) - 1e-9))


def size_voxels(decoder: Any) -> tuple[int, int]:
    """(min_seed_size, min_size) in voxels of an instance decoder with the size fields
    ``min_seed_size_nm3``, ``min_size_nm3``, ``min_seed_size``, ``min_size``, ``voxel_size_nm``."""
    voxel = decoder.voxel_size_nm
    return (
        voxel_count(decoder.min_seed_size_nm3, decoder.min_seed_size, voxel, "min_seed_size"),
        voxel_count(decoder.min_size_nm3, decoder.min_size, voxel, "min_size"),
    )


def check_voxel_size(voxel_size_nm: Any) -> VoxelSize | None:
    """None, or (z, y, x) nm as a tuple of three positive finite floats (lists from YAML too)."""
    return None if voxel_size_nm is None else voxels.check_voxel_size(voxel_size_nm)


def with_voxel_size(decoder: Decoder, voxel_size_nm: Any, source: str) -> Decoder:
    """The decoder with the probabilities' voxel size, so its nm^3 floors become voxel counts.

    Mask decoders (no ``voxel_size_nm`` field) come back unchanged. A None ``voxel_size_nm``
    keeps the decoder's own; when neither is known and a floor is given only in nm^3 (no voxel
    override), :class:`VolumeError` names ``source`` (the probabilities file).
    """
    names = {f.name for f in dataclasses.fields(decoder)}  # type: ignore[arg-type]
    if "voxel_size_nm" not in names:
        return decoder
    voxel = check_voxel_size(voxel_size_nm)
    if voxel is not None:
        decoder = dataclasses.replace(decoder, voxel_size_nm=voxel)  # type: ignore[type-var]
    try:
        size_voxels(decoder)
    except ValueError as err:
        raise VolumeError(
            f"{source} states no voxel_size_nm, so decoder {type(decoder).__name__} cannot turn "
            f"its sizes in nm^3 into voxels ({err}). Convert the input with its voxel size "
            "(mitoseg-convert --voxel-size) or set min_size and min_seed_size in voxels"
        ) from None
    return decoder


def check_channels(decoder: Decoder, probs: Any, source: str) -> None:
    """Raise :class:`VolumeError` when ``probs`` (C, Z, Y, X) does not fit ``decoder``."""
    if probs.ndim != 4:
        raise VolumeError(f"{source}: expected (C, Z, Y, X) probabilities, got {probs.shape}")
    have, need = int(probs.shape[0]), decoder.n_channels
    fits = have >= need if decoder.kind is OutputKind.MASK else have == need
    if not fits:
        names = dict(getattr(probs, "attrs", {})).get("channels")
        raise VolumeError(
            f"{source} has {have} channels {names or ''} but decoder {type(decoder).__name__} "
            f"needs {need}: the probabilities come from another target (pick the postprocess "
            "config of the target the model was trained with)"
        )
