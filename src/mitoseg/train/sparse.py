"""Sparse labels: training on a volume of which only a few z slices are labelled (numpy only).

A user says which sections of the training (or validation) volume are labelled with
``labelled_slices`` (z indices of the volume as read, after ``labels_z_range``); every voxel of
the other sections is *unlabelled*: neither foreground nor background. A label value can mark
unlabelled voxels too (``ignore_label``, e.g. 255 in an 8-bit label image; its mask is
converted once, :class:`mitoseg.datasets.volumes.FileVolumes`). Inside a patch the
unlabelled voxels carry :data:`IGNORE_LABEL` (-1, torch-em's ``ignore_label``) in the labels, so
that augmentation moves them with the labels; the target then holds NaN there, and the losses
and the validation scores skip NaN voxels (:mod:`mitoseg.train.losses`,
:func:`mitoseg.train.module.confusion_counts`).

A target value depends on a voxel's neighbours (a contour band, an affinity edge): it is NaN
wherever its neighbourhood (:func:`channel_reach`) reaches an unlabelled voxel, so no voxel
learns from labels that were never drawn. The BCD target's distance depends on whole objects and
is refused with sparse labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from mitoseg.train.targets import (
    Affinity,
    AffinityContour,
    BinaryContour,
    BinaryContourDistance,
    Semantic,
)

IGNORE_LABEL = -1
Reach = tuple[int, int, int]


def labelled_z_mask(z0: int, depth: int, labelled_slices: Sequence[int]) -> np.ndarray:
    """bool (depth,): which of the slices z0 .. z0 + depth - 1 are labelled."""
    return np.isin(np.arange(z0, z0 + depth), np.asarray(labelled_slices, dtype=np.int64))


def mark_unlabelled(labels: np.ndarray, z0: int, labelled_slices: Sequence[int]) -> np.ndarray:
    """Labels of a box whose first slice is volume z ``z0``, with the unlabelled slices set to
    :data:`IGNORE_LABEL`.

    Args:
        labels: integer (Z, Y, X) instance ids.
        z0: the volume z index of ``labels[0]``.
        labelled_slices: the volume's labelled z indices.

    Returns:
        int64 (Z, Y, X): the ids on labelled slices, -1 elsewhere.
    """
    out = labels.astype(np.int64, copy=True)
    out[~labelled_z_mask(z0, labels.shape[0], labelled_slices)] = IGNORE_LABEL
    return out


def keep_labelled(labels: np.ndarray, z0: int, labelled_slices: Sequence[int]) -> np.ndarray:
    """``labels`` with the unlabelled slices zeroed (e.g. to look for foreground on labelled
    slices only); same dtype."""
    out = np.array(labels, copy=True)
    out[~labelled_z_mask(z0, labels.shape[0], labelled_slices)] = 0
    return out


def channel_reach(target: Any) -> list[Reach]:
    """How far (z, y, x voxels) each target channel looks from a voxel: its value is unknown
    when an unlabelled voxel lies that close.

    Raises:
        ValueError: the BCD target (its distance is normalised per whole object) or a target
            without a rule here.
    """
    if isinstance(target, Semantic):
        return [(0, 0, 0)]
    if isinstance(target, BinaryContourDistance):
        raise ValueError(
            "the BCD target's distance channel needs whole objects labelled; with "
            "labelled_slices use target=bc (or semantic)"
        )
    contour: list[Reach] = []
    if isinstance(target, (BinaryContour, AffinityContour)):
        r = target.width // 2
        contour = [(0 if target.in_plane else r, r, r)]
    if isinstance(target, BinaryContour):
        return [(0, 0, 0), *contour]
    if isinstance(target, (Affinity, AffinityContour)):
        edges = [(abs(dz), abs(dy), abs(dx)) for dz, dy, dx in target.offsets]
        return edges + contour
    raise ValueError(
        f"target {type(target).__name__} has no rule for unlabelled voxels: train it on fully "
        "labelled volumes (leave labelled_slices null)"
    )


class SparseTarget:
    """A target for labels holding :data:`IGNORE_LABEL` on unlabelled voxels: the wrapped
    target of the labels (unlabelled read as background), NaN on every channel wherever that
    channel's :func:`channel_reach` meets an unlabelled voxel.

    Call with labels: integer (Z, Y, X), -1 = unlabelled. Returns float32 (C, Z, Y, X).
    """

    def __init__(self, target: Callable[[np.ndarray], np.ndarray]) -> None:
        self.target = target
        self.reach = channel_reach(target)
        self.channels = getattr(target, "channels", None)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        unlabelled = labels == IGNORE_LABEL
        if not unlabelled.any():
            return self.target(labels)
        out = self.target(np.where(unlabelled, 0, labels))
        for channel, reach in zip(out, self.reach, strict=True):
            size = tuple(2 * r + 1 for r in reach)
            unknown = unlabelled if size == (1, 1, 1) else ndimage.maximum_filter(unlabelled, size)
            channel[unknown] = np.nan
        return out
