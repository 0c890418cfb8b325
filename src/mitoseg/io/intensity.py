"""Raw intensities: what a volume's values look like (subsampled statistics), how they become the
network's float input, and whether an input looks like what a model was trained on.

Every raw volume, in training and in prediction, is mapped to float32 by a
:class:`Normalization` chosen from its own dtype and range (:func:`choose_normalization`), so
that uint8 data, 12-bit data stored in uint16, and floats in 0..1, 0..255 or 0..65535 of one
image give the same network input:

- integers >= 0: scaled by their bit depth, the smallest of 8, 10, 12, 14 or 16 bits (or more)
  that holds the largest value: uint8 by 255, uint16 holding 0..4080 by 4095, full uint16 by
  65535;
- floats >= 0: up to 1 kept as they are; up to 65535 scaled like integers of that range;
- anything else (negative values, floats beyond 65535): the 0.5-99.5 % percentiles are mapped
  to where the reference (the model's training data) has them, or to 0..1 without one.

Statistics (:func:`raw_stats`) come from at most :data:`SAMPLE_VOXELS` voxels in a fixed set of
boxes, so they cost a few chunk reads for any volume size and are the same every time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

import numpy as np

from mitoseg.geometry import Box
from mitoseg.io.checks import read_box

NOMINAL_BITS = (8, 10, 12, 14, 16)
SAMPLE_VOXELS = 2**22
SAMPLE_BOX = (16, 128, 128)  # (z, y, x) voxels of each sampled box, inside one chunk
# Limits of "looks like the training data" in mapped units (training data in [0, 1]); the
# augmentation covers brightness +-0.1 and contrast x0.9-1.1.
MAX_CONTRAST_RATIO = 2.0
MAX_MEAN_SHIFT = 0.2
MIN_MAPPED_WIDTH = 0.02


class Method(StrEnum):
    """How raw values become the network's input: ``(raw - low) / (high - low)``."""

    BIT_DEPTH = "bit_depth"  # low = 0, high = 2**bits - 1 (or 1 for floats in 0..1)
    PERCENTILE = "percentile"  # low, high from the volume's 0.5 / 99.5 % percentiles
    GIVEN = "given"  # low, high set by the user (raw_range)


@dataclass(frozen=True)
class RawStats:
    """Statistics of a raw volume's values (of a subsample, see :func:`raw_stats`)."""

    dtype: str
    min: float
    max: float
    mean: float
    std: float
    p0_5: float
    p1: float
    p99: float
    p99_5: float
    sampled: int  # voxels the statistics were computed on
    voxels: int  # voxels in the volume

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> RawStats:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(values).items() if k in names})


@dataclass(frozen=True)
class Normalization:
    """``raw -> float32 (raw - low) / (high - low)``; see :class:`Method`."""

    method: Method
    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise ValueError(f"raw range needs high > low, got [{self.low}, {self.high}]")

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """raw: any real dtype, any shape -> float32, same shape (0..1 for the nominal range).

        uint8 by 255 is ``raw.astype(float32) / 255``, bit for bit as before ranges were chosen.
        """
        out = raw.astype(np.float32)
        if self.low != 0:
            out -= np.float32(self.low)
        if self.high - self.low != 1:
            out /= np.float32(self.high - self.low)
        return out

    @property
    def is_uint8_scale(self) -> bool:
        """Whether this is uint8's ``/ 255``, which the predictor applies on the device."""
        return self.low == 0 and self.high == 255

    def map(self, value: float) -> float:
        return (float(value) - self.low) / (self.high - self.low)

    def describe(self) -> str:
        """E.g. ``0..4095 (12-bit)``, ``0..1``, ``-3.1..2.5 (percentiles)``."""
        span = f"{self.low:g}..{self.high:g}"
        if self.method == Method.BIT_DEPTH and self.high > 1:
            return f"{span} ({round(math.log2(self.high + 1))}-bit)"
        return span if self.method == Method.BIT_DEPTH else f"{span} ({self.method.value})"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method.value, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, values: Any) -> Normalization:
        return cls(Method(values["method"]), float(values["low"]), float(values["high"]))


@dataclass(frozen=True)
class RawIntensity:
    """A volume's statistics and the normalisation chosen for it (what checkpoints and output
    attributes record, as ``{"normalization": ..., "stats": ...}``)."""

    stats: RawStats
    normalization: Normalization

    def mapped(self) -> dict[str, float]:
        """The robust range and mean after normalisation: ``p1``, ``p99``, ``mean``."""
        n = self.normalization
        return {
            "p1": n.map(self.stats.p1),
            "p99": n.map(self.stats.p99),
            "mean": n.map(self.stats.mean),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"normalization": self.normalization.to_dict(), "stats": self.stats.to_dict()}

    @classmethod
    def from_dict(cls, values: Any) -> RawIntensity:
        stats, normalization = values["stats"], values["normalization"]
        return cls(RawStats.from_dict(stats), Normalization.from_dict(normalization))

    def describe(self) -> str:
        """E.g. ``1-99 % at 0.18..0.84 (raw 47..215 uint8 as 0..255 (8-bit)), mean 0.41``."""
        s, m = self.stats, self.mapped()
        return (
            f"1-99 % at {m['p1']:.3g}..{m['p99']:.3g} (raw {s.p1:.6g}..{s.p99:.6g} {s.dtype} as "
            f"{self.normalization.describe()}), mean {m['mean']:.3g}"
        )


def _sample_boxes(shape: tuple[int, ...], chunks: tuple[int, ...], budget: int) -> list[Box]:
    """The whole volume chunk by chunk if it has at most ``budget`` voxels (a read error names
    its chunk), else up to ``budget`` voxels in boxes of :data:`SAMPLE_BOX` (at most a chunk, at
    most ``budget``) drawn with a fixed seed from the grid of such boxes: each box lies in one
    chunk when its shape divides the chunk's.
    """
    whole = math.prod(shape) <= budget
    limit = shape if whole else SAMPLE_BOX
    box = [min(b, c, s) for b, c, s in zip(limit, chunks, shape, strict=True)]
    while math.prod(box) > budget:
        box[box.index(max(box))] //= 2
    counts = [math.ceil(s / b) for s, b in zip(shape, box, strict=True)]
    cells = math.prod(counts)
    if whole:
        picks = list(range(cells))
    else:
        n = min(cells, max(1, budget // math.prod(box)))
        picks = sorted(np.random.default_rng(0).choice(cells, size=n, replace=False).tolist())
    boxes = []
    for index in picks:
        start = [int(i) * b for i, b in zip(np.unravel_index(index, counts), box, strict=True)]
        size = [min(b, s - o) for b, s, o in zip(box, shape, start, strict=True)]
        boxes.append(Box(tuple(start), tuple(size)))  # type: ignore[arg-type]
    return boxes


def raw_stats(array: Any, path: Any = "", budget: int = SAMPLE_VOXELS) -> RawStats:
    """Statistics of a raw volume, exact up to ``budget`` voxels, else of a fixed subsample.

    Args:
        array: (Z, Y, X) zarr or numpy array of any real dtype.
        path: named in read errors.
        budget: most voxels read.
    """
    shape = tuple(int(s) for s in array.shape)
    chunks = tuple(int(c) for c in getattr(array, "chunks", None) or SAMPLE_BOX)  # numpy: none
    values = np.concatenate(
        [read_box(array, b, path).ravel() for b in _sample_boxes(shape, chunks, budget)]
    )
    p = np.percentile(values, (0.5, 1, 99, 99.5))
    return RawStats(
        dtype=str(array.dtype),
        min=float(values.min()),
        max=float(values.max()),
        mean=float(values.mean(dtype=np.float64)),
        std=float(values.std(dtype=np.float64)),
        p0_5=float(p[0]),
        p1=float(p[1]),
        p99=float(p[2]),
        p99_5=float(p[3]),
        sampled=int(values.size),
        voxels=math.prod(shape),
    )


def _bit_depth_high(stats: RawStats) -> float | None:
    """The nominal top of the values' range, or None when they have none (negative values,
    floats beyond 16 bits)."""
    integer = np.dtype(stats.dtype).kind in "iub"
    if np.dtype(stats.dtype).kind == "b":
        return 1.0
    if not integer and stats.max <= 1.001 and stats.min >= -0.01:
        return 1.0
    if stats.min < (0 if integer else -0.01 * max(stats.max, 1.0)):
        return None
    needed = max(1, math.ceil(math.log2(stats.max + 1)))
    bits = next((b for b in NOMINAL_BITS if b >= needed), needed if integer else None)
    return None if bits is None else float(2**bits - 1)


def choose_normalization(stats: RawStats, reference: RawIntensity | None = None) -> Normalization:
    """The normalisation of a volume with ``stats`` (see the module docstring).

    Args:
        stats: the volume's statistics.
        reference: the model's training data; a reference normalised by percentiles makes this
            volume's normalised by percentiles too, and percentile mappings put this volume's
            0.5 / 99.5 % where the reference has them.
    """
    high = _bit_depth_high(stats)
    by_percentile = reference is not None and reference.normalization.method == Method.PERCENTILE
    if high is not None and not by_percentile:
        return Normalization(Method.BIT_DEPTH, 0.0, high)
    a, b = 0.0, 1.0
    if reference is not None:
        a = reference.normalization.map(reference.stats.p0_5)
        b = reference.normalization.map(reference.stats.p99_5)
    low, top = stats.p0_5, stats.p99_5
    if not top > low:
        low, top = stats.min, stats.max if stats.max > stats.min else stats.min + 1.0
    if not b > a:
        a, b = 0.0, 1.0
    width = (top - low) / (b - a)
    return Normalization(Method.PERCENTILE, low - a * width, low - a * width + width)


def measure(
    array: Any,
    path: Any = "",
    reference: RawIntensity | None = None,
    raw_range: Any = None,
) -> RawIntensity:
    """Statistics of a raw volume and its normalisation: ``raw_range`` ([low, high]) when given,
    else :func:`choose_normalization`."""
    stats = raw_stats(array, path)
    if raw_range is not None:
        low, high = (float(v) for v in raw_range)
        return RawIntensity(stats, Normalization(Method.GIVEN, low, high))
    return RawIntensity(stats, choose_normalization(stats, reference))


PREDICT_ADVICE = (
    "Predictions may be wrong. If the values mean something else, set raw_range=[low,high] "
    "(the raw values that become 0 and 1)"
)


def mismatch(
    name: str, found: RawIntensity, model: RawIntensity | None, advice: str = PREDICT_ADVICE
) -> str | None:
    """Why ``found`` (an input volume) looks unlike the model's training data, with the
    numbers and ``advice``, or None when it does not (or nothing is known of the training data
    and ``found`` varies)."""
    mapped = found.mapped()
    width = mapped["p99"] - mapped["p1"]
    if width < MIN_MAPPED_WIDTH:
        return f"{name} is almost constant: {found.describe()}. {advice}"
    if model is None:
        return None
    seen = model.mapped()
    ratio = width / max(seen["p99"] - seen["p1"], 1e-12)
    shift = mapped["mean"] - seen["mean"]
    if 1 / MAX_CONTRAST_RATIO <= ratio <= MAX_CONTRAST_RATIO and abs(shift) <= MAX_MEAN_SHIFT:
        return None
    return (
        f"{name} looks unlike the data the model was trained on: {found.describe()}; the model "
        f"saw {model.describe()} (contrast x{ratio:.3g}, mean {shift:+.3g}). {advice}"
    )
