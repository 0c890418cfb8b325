"""Label images as labs store them: instance ids, masks, class codes and anti-aliased masks.

A label image from another lab may hold instance ids, a binary mask, class codes (each grey
value one class, e.g. {0, 32, 64, ..., 255} with mitochondria at 191) or an anti-aliased mask
(0 and 255 plus a few in-between greys along object borders). Stored as they are, the last two
become "instance ids" (every class a mitochondrion, every grey border pixel an object), so:

- :class:`LabelSelection` turns them into a binary mask: ``--label-values 191,200-210`` (config
  key ``label_values``) selects classes, ``--label-threshold T`` (``label_threshold``) keeps
  values above ``T``. It is the one place a selection is applied (conversion, measure, segment
  and training all go through :func:`mitoseg.io.convert`).
- :class:`ValueCounts` counts the values of a label volume slab by slab and, with no selection
  given, refuses values that look like class codes or an anti-aliased mask (the heuristic is in
  :meth:`ValueCounts.suspicion`), showing the values and their voxel counts.

Numpy only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mitoseg.io.errors import VolumeError

# Values above this cannot be 8-bit class codes or grey levels: such a volume holds ids.
_GREY_MAX = 255
HINT = (
    "pass --label-values V (e.g. 191 or 191,200-210; config key label_values) to select "
    "classes into a mask, or --label-threshold T (config key label_threshold) to binarise an "
    "anti-aliased mask (values > T are foreground); if they really are instance ids, convert "
    "them with mitoseg-convert --labels --instances"
)
_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")

Ranges = tuple[tuple[int, int], ...]


def parse_label_values(spec: int | str | Sequence[int | str]) -> Ranges:
    """Parse a value spec: ``191``, ``"191,200-210"`` or ``[191, "200-210"]``.

    Returns:
        Sorted, merged inclusive ranges ``((lo, hi), ...)`` of non-negative integers.

    Raises:
        VolumeError: an empty spec, a negative, non-integer or malformed value, or ``lo > hi``.
    """
    if isinstance(spec, bool):
        raise VolumeError(f"label values must be integers or ranges like 191,200-210, got {spec!r}")
    items: list[Any] = (
        [spec] if isinstance(spec, (int, str, np.integer)) else list(spec)  # type: ignore[arg-type]
    )
    parts: list[str] = []
    for item in items:
        if isinstance(item, (bool, float)):
            raise VolumeError(f"label values must be integers or ranges, got {item!r} in {spec!r}")
        parts += str(item).split(",")
    ranges = []
    for part in parts:
        match = _RANGE.match(part)
        if match is None:
            raise VolumeError(
                f"cannot read label value {part.strip()!r} in {spec!r}: expected non-negative "
                "integers or ranges, e.g. 191 or 191,200-210"
            )
        lo = int(match[1])
        hi = int(match[2]) if match[2] is not None else lo
        if lo > hi:
            raise VolumeError(f"label value range {part.strip()!r} in {spec!r} is empty")
        ranges.append((lo, hi))
    if not ranges:
        raise VolumeError(f"no label values in {spec!r}")
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def format_label_values(ranges: Ranges) -> str:
    """``((191, 191), (200, 210))`` -> ``"191,200-210"``."""
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


@dataclass(frozen=True)
class LabelSelection:
    """Which label values are foreground: value ranges (class codes) or a threshold.

    Build with :meth:`from_options`; exactly one of ``values`` and ``threshold`` is set.
    """

    values: Ranges | None = None
    threshold: float | None = None

    @classmethod
    def from_options(
        cls, values: int | str | Sequence[int | str] | None, threshold: float | None
    ) -> LabelSelection | None:
        """The selection of ``--label-values`` / ``--label-threshold``; None when neither.

        Raises:
            VolumeError: both given, a bad value spec, or a threshold that is not a finite number.
        """
        if values is not None and threshold is not None:
            raise VolumeError(
                "give label values (--label-values / label_values) or a label threshold "
                "(--label-threshold / label_threshold), not both"
            )
        if values is not None:
            return cls(values=parse_label_values(values))
        if threshold is not None:
            if isinstance(threshold, bool) or not np.isfinite(float(threshold)):
                raise VolumeError(f"label threshold must be a finite number, got {threshold!r}")
            return cls(threshold=float(threshold))
        return None

    def apply(self, slab: np.ndarray) -> np.ndarray:
        """Mask of the selected values.

        Args:
            slab: labels without a colour axis, any shape, integer, bool or float.

        Returns:
            uint8 of the same shape, 1 where selected (a value in ``values``, or above
            ``threshold``), else 0.
        """
        if self.threshold is not None:
            return (slab > self.threshold).view(np.uint8)
        assert self.values is not None
        mask = np.zeros(slab.shape, dtype=bool)
        for lo, hi in self.values:
            mask |= (slab >= lo) & (slab <= hi)
        return mask.view(np.uint8)

    def attrs(self) -> dict[str, Any]:
        """Zarr attributes recording the selection: ``label_values`` / ``label_threshold``."""
        if self.threshold is not None:
            return {"label_values": None, "label_threshold": self.threshold}
        assert self.values is not None
        return {"label_values": format_label_values(self.values), "label_threshold": None}

    def describe(self) -> str:
        if self.threshold is not None:
            return f"--label-threshold {self.threshold:g}"
        assert self.values is not None
        return f"--label-values {format_label_values(self.values)}"


# Recorded on labels stored without a selection, once their values were checked.
UNSELECTED_ATTRS: dict[str, Any] = {"label_values": None, "label_threshold": None}


class ValueCounts:
    """Voxel counts of the values 0..255 of a label volume, added slab by slab.

    Once a value above 255 (or a non-integer float) is seen, the volume holds ids (or is
    refused elsewhere) and counting stops: :attr:`wide` is True.
    """

    def __init__(self) -> None:
        self.counts = np.zeros(_GREY_MAX + 1, dtype=np.int64)
        self.wide = False

    def add(self, slab: np.ndarray) -> None:
        """Count ``slab``: labels without a colour axis, integer, bool or float, any shape."""
        if self.wide or slab.size == 0:
            return
        if slab.dtype == bool:
            slab = slab.view(np.uint8)
        top = slab.max()
        if top > _GREY_MAX or slab.min() < 0:
            self.wide = True
            return
        if slab.dtype.kind == "f":
            if not np.array_equal(slab, np.floor(slab)):
                self.wide = True  # non-integer floats are refused with their own message
                return
            slab = slab.astype(np.uint8)
        for plane in slab if slab.ndim > 2 else [slab]:  # temporaries of one slice
            self.counts += np.bincount(plane.ravel().astype(np.intp), minlength=_GREY_MAX + 1)

    def suspicion(self) -> str | None:
        """Why the values look like class codes or an anti-aliased mask; None when they do not.

        The heuristic, on the non-zero values ``V`` of the whole volume (all <= 255):

        - a binary mask (``V`` within {1} or {255}) or a single value: accepted;
        - anti-aliased mask: 255 is present and holds at least 4x the voxels of every other
          non-zero value (a mask with rare in-between greys along its borders);
        - class codes: at least two values and fewer than half of 1..max(V) present (not
          consecutive instance ids 1..N, e.g. {32, 64, ..., 255}).

        Instance ids with a value above 255 (16- and 32-bit ids) are never suspected, nor
        uint8 ids that are mostly consecutive (1..N with a few missing) and whose largest id
        does not dominate the volume.
        """
        if self.wide:
            return None
        nonzero = np.flatnonzero(self.counts[1:]) + 1
        if nonzero.size < 2:
            return None
        top = int(nonzero[-1])
        if top == _GREY_MAX:
            others = self.counts[nonzero[:-1]]
            if self.counts[top] >= 4 * others.max():
                return (
                    f"an anti-aliased mask (255 and {nonzero.size - 1} rare in-between grey "
                    "values), not a binary mask"
                )
        if nonzero.size < top / 2:
            return (
                f"class codes ({nonzero.size} distinct non-zero values spread over 1..{top}), "
                "not instance ids 1..N"
            )
        return None

    def table(self, limit: int = 10) -> str:
        """The values with the most voxels, one ``value: voxels (percent)`` per line."""
        total = int(self.counts.sum())
        order = np.argsort(-self.counts, kind="stable")
        present = [int(v) for v in order if self.counts[v]]
        lines = [
            f"  {v:>5}: {int(self.counts[v]):>12} voxels ({100 * self.counts[v] / total:.2f} %)"
            for v in present[:limit]
        ]
        if len(present) > limit:
            rest = int(sum(self.counts[v] for v in present[limit:]))
            lines.append(f"  ... {len(present) - limit} more values: {rest} voxels")
        return "\n".join(lines)

    def check(self, where: str) -> None:
        """Refuse values that look like class codes or an anti-aliased mask.

        Raises:
            VolumeError: naming ``where``, the reason, the top values with their voxel counts
                and the options that say what the values mean.
        """
        reason = self.suspicion()
        if reason is not None:
            raise VolumeError(
                f"labels {where} look like {reason}; their values and voxel counts:\n"
                f"{self.table()}\n{HINT}"
            )
