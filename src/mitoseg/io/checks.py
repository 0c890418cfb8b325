"""Checks of zarr volumes before training or prediction: readable, numeric, finite, not constant,
valid label ids, patch fits (numpy and zarr only). Errors name the file and the region at fault.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mitoseg.geometry import Box
from mitoseg.io.errors import VolumeError
from mitoseg.io.label_values import ValueCounts
from mitoseg.io.store import open_volume


def read_box(array: Any, box: Box, path: Path) -> np.ndarray:
    """``array[box]`` as numpy; a storage or codec error (e.g. a corrupt chunk) names the file
    and the box."""
    try:
        return np.asarray(array[box.slices])
    except Exception as err:  # zarr and codecs raise many types (RuntimeError, ValueError, ...)
        raise VolumeError(f"cannot read {path} at {_where(box)}: {err}") from err


def _where(box: Box) -> str:
    return ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip("zyx", box.slices, strict=True))


def _chunk_boxes(region: Box, chunks: Sequence[int]) -> Iterator[Box]:
    """Chunk-aligned boxes covering ``region`` (each within one chunk), z-major order."""
    starts = [
        range(o - o % c, o + s, c)
        for o, s, c in zip(region.offset, region.shape, chunks, strict=True)
    ]
    for start in itertools.product(*starts):
        lo = [max(b, o) for b, o in zip(start, region.offset, strict=True)]
        hi = [min(b + c, e) for b, c, e in zip(start, chunks, region.stop, strict=True)]
        yield Box(tuple(lo), tuple(h - low for low, h in zip(lo, hi, strict=True)))  # type: ignore[arg-type]


def check_raw(path: Path) -> None:
    """Refuse a raw zarr volume that cannot be trained on or predicted.

    Reads chunk by chunk and stops at the first chunk that is not constant, so a real volume
    costs one chunk; float volumes are read whole (NaN / inf can be anywhere).

    Raises:
        VolumeError: a dtype that is not integer, bool or float; an empty shape; NaN or inf
            values (the message names the chunk); every voxel the same value.
    """
    array = open_volume(path)
    kind = np.dtype(array.dtype).kind
    if kind not in "biuf":
        raise VolumeError(
            f"raw {path} has dtype {array.dtype}; expected integer or float grey values"
        )
    if 0 in array.shape:
        raise VolumeError(f"raw {path} is empty: shape {tuple(array.shape)}")
    low = high = None
    for box in _chunk_boxes(Box.whole(array.shape), array.chunks):
        data = read_box(array, box, path)
        if kind == "f" and not np.isfinite(data).all():
            raise VolumeError(f"raw {path} holds NaN or inf values at {_where(box)}")
        low = data.min() if low is None else min(low, data.min())
        high = data.max() if high is None else max(high, data.max())
        if low != high and kind != "f":
            return
    if low == high:
        raise VolumeError(
            f"raw {path} is constant (every voxel is {low}, shape {tuple(array.shape)}): "
            "there is nothing to segment"
        )


def check_labels(path: Path) -> None:
    """Refuse a label zarr volume whose values are not a mask or instance ids.

    Raises:
        VolumeError: a dtype that is not integer or bool (e.g. float), negative values (the
            message names the chunk), or values that look like class codes or an anti-aliased
            mask (:func:`check_label_values`).
    """
    array = open_volume(path)
    kind = np.dtype(array.dtype).kind
    if kind not in "biu":
        raise VolumeError(
            f"labels {path} have dtype {array.dtype}; expected a mask or integer instance ids "
            "(mitoseg-convert --labels converts integral float labels)"
        )
    check_label_values(path)
    if kind != "i":
        return
    for box in _chunk_boxes(Box.whole(array.shape), array.chunks):
        data = read_box(array, box, path)
        if data.size and data.min() < 0:
            raise VolumeError(
                f"labels {path} hold negative values (min {data.min()}) at {_where(box)}"
            )


def check_label_values(path: Path) -> None:
    """Refuse a label zarr whose values look like class codes or an anti-aliased mask.

    Labels that mitoseg converted (a ``label_values`` attribute: checked or selected then) or
    decoded (``kind`` "instances" / "mask") are trusted. Others, e.g. converted by an earlier
    version that stored class codes as ids, are read chunk by chunk until a value above 255
    shows they hold ids, so real 16- and 32-bit ids usually cost one chunk; the heuristic is
    :meth:`mitoseg.io.label_values.ValueCounts.suspicion`.

    Raises:
        VolumeError: the values, their voxel counts and the options that select a mask.
    """
    array = open_volume(path)
    attrs = dict(array.attrs)
    if "label_values" in attrs or attrs.get("kind") in ("instances", "mask"):
        return
    if np.dtype(array.dtype).kind not in "biuf":
        return
    counts = ValueCounts()
    for box in _chunk_boxes(Box.whole(array.shape), array.chunks):
        counts.add(read_box(array, box, path))
        if counts.wide:
            return
    counts.check(str(path))


def has_foreground(path: Path, region: Box) -> bool:
    """Whether the labels at ``path`` hold a non-zero voxel in ``region`` (stops at the first)."""
    array = open_volume(path)
    return any(read_box(array, box, path).any() for box in _chunk_boxes(region, array.chunks))


def check_patch_fits(patch_shape: Sequence[int], region: Box, path: Path) -> None:
    """Refuse a training patch that does not fit the training region of the volume at ``path``."""
    patch = tuple(int(p) for p in patch_shape)
    if any(p > r for p, r in zip(patch, region.shape, strict=True)):
        shape = tuple(open_volume(path).shape)
        raise VolumeError(
            f"patch_shape {patch} is larger than the training region {region.shape} (offset "
            f"{region.offset}) of {path}, shape {shape}; use a smaller data.patch_shape"
        )
