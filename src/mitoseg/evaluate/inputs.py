"""The inputs of ``mitoseg-evaluate``: any label file as a checked zarr, masks told from
instance ids, and the memory of an in-memory pass (numpy, zarr)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mitoseg.datasets.volumes import FileVolumes
from mitoseg.geometry import block_grid
from mitoseg.io import VolumeError, open_volume
from mitoseg.io.checks import check_label_values, read_box
from mitoseg.io.sources import is_zarr

# Bytes per voxel of an in-memory slab besides the stored values: the foreground mask, the
# gathered (truth, pred) ids and keys of the contingency count, the sort of the boxes.
WORK_BYTES = 25


def as_zarr(
    path: Path,
    dataset: str | None,
    cache_dir: Path,
    label_values: str | None = None,
    label_threshold: float | None = None,
) -> Path:
    """The labels at ``path`` as a checked zarr: a zarr as it is (``dataset``: an array inside
    it), anything else converted once into ``cache_dir``, with the label selection applied.

    As ``mitoseg-convert`` does for files, only 8-bit (and bool) labels are refused when their
    values look like class codes: wider ids may have gaps (a filtered prediction, a crop).
    """
    if is_zarr(path) and dataset is not None:
        path, dataset = path / dataset, None
    if is_zarr(path) and label_values is None and label_threshold is None:
        array = open_volume(path)
        if np.dtype(array.dtype).kind not in "biu":
            raise VolumeError(f"labels {path} have dtype {array.dtype}; need integer ids or a mask")
        if np.dtype(array.dtype).itemsize == 1:
            check_label_values(path)
        return path
    volumes = FileVolumes(
        str(path), labels=str(path), labels_dataset=dataset,
        label_values=label_values, label_threshold=label_threshold,
    )  # fmt: skip
    return volumes.prepare_labels(cache_dir)


def is_mask(path: Path) -> bool:
    """Whether the volume holds at most one non-zero value: a ``binary`` or ``mask`` volume by
    its attributes, else read chunk by chunk until a second non-zero value shows ids."""
    array = open_volume(path)
    attrs = dict(array.attrs)
    if attrs.get("binary") is True or attrs.get("kind") == "mask":
        return True
    seen: set[int] = set()
    for block in block_grid(array.shape, tuple(array.chunks)):
        values = np.unique(read_box(array, block.write_roi, path))
        seen |= {int(v) for v in values if v != 0}
        if len(seen) > 1:
            return False
    return True


def memory_estimate(truth: Path, pred: Path, probs: Path | None, slab: int) -> int:
    """Bytes of the in-memory pass: one z-slab of each volume plus the count's work space."""
    arrays = [open_volume(p) for p in (truth, pred, probs) if p is not None]
    plane = int(np.prod(arrays[0].shape[1:]))
    stored = sum(np.dtype(a.dtype).itemsize for a in arrays)
    return min(slab, arrays[0].shape[0]) * plane * (stored + WORK_BYTES)
