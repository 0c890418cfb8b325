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
from enum import Enum
from typing import Any, Protocol

import numpy as np

from mitoseg.io.errors import VolumeError

Shape3 = tuple[int, int, int]


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
