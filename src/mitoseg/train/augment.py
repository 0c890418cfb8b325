"""Joint raw + labels augmentation for 3D training patches (numpy and scipy only).

An ``Augmenter`` holds the parameters; every call takes the random generator, so a patch's
augmentation is reproducible from the generator's seed. Geometric transforms are applied
identically to raw and labels (:mod:`mitoseg.train.augment_spatial`); intensity transforms
touch raw only (:mod:`mitoseg.train.augment_intensity`).

Orientations: flips along z, y, x (probability 0.5 each), a random transpose among axes of equal
size (isotropic) or of y and x only (anisotropic: z is never swapped), and random 90-degree
rotations in the planes of equal size. Flips and transposes alone already reach the whole
orientation group (48 elements for a cube, 16 = z-flip x the 8 y-x symmetries for anisotropic
patches with Y == X) with equal probability; rotations keep that distribution and are what
remains when ``flip`` or ``transpose`` is switched off.

Section artefacts of serial-section EM act along z (the section axis) after orientation, elastic
deformation and intensity: missing sections (raw slices replaced by their mean grey, labels
kept), a misalignment step (raw and labels of all sections from a random z on shifted together
in y-x) and motion blur (a line blur on a few raw slices). They are off by default, and a
disabled option draws nothing from the generator, so configs without them give the same patches
as before they existed.

Cut-blur (after Yoo et al., CVPR 2020, as used for EM by pytorch_connectomics): a random box of
the raw patch is replaced by a low-resolution copy of itself (box-filtered, subsampled by an
integer factor and linearly interpolated back; in y-x only for anisotropic data), so the network
sees resolution changes within one patch. Labels are kept. Off by default, drawing nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mitoseg.train.augment_intensity import (
    adjust_intensity,
    cut_blur,
    fill_sections,
    line_kernel,
    motion_blur,
)
from mitoseg.train.augment_spatial import (
    Orientation,
    allowed_permutations,
    elastic_coordinates,
    reflect_index,
    rotation_planes,
    shift_sections,
    upsample,
)

__all__ = [  # the transforms stay importable from here
    "Augmenter",
    "Orientation",
    "adjust_intensity",
    "allowed_permutations",
    "cut_blur",
    "elastic_coordinates",
    "fill_sections",
    "line_kernel",
    "motion_blur",
    "reflect_index",
    "rotation_planes",
    "shift_sections",
    "upsample",
]


def _validate_inputs(raw: np.ndarray, labels: np.ndarray) -> None:
    if raw.ndim != 3 or raw.shape != labels.shape:
        raise ValueError(f"need raw and labels of one 3D shape, got {raw.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer, got {labels.dtype}")


_PROBABILITIES = ("elastic_prob", "intensity_prob") + tuple(
    f"{a}_prob" for a in ("missing_section", "misalignment", "motion_blur", "cutblur")
)
_COUNTS = ("missing_sections", "misalignment_max_shift", "motion_blur_sections", "motion_blur_size")


def _happens(prob: float, rng: np.random.Generator) -> bool:
    """A Bernoulli draw that draws nothing when ``prob`` is 0 (keeps older random streams)."""
    return prob > 0.0 and rng.random() < prob


def _some_sections(depth: int, most: int, rng: np.random.Generator) -> list[int]:
    """Between 1 and ``min(most, depth)`` distinct z indices, sorted."""
    n = int(rng.integers(1, min(most, depth) + 1))
    return sorted(int(z) for z in rng.choice(depth, n, replace=False))


def _nonzero_shift(most: int, rng: np.random.Generator) -> tuple[int, int]:
    """Uniform integer (dy, dx) in [-most, most]^2 without (0, 0)."""
    side = 2 * most + 1
    k = int(rng.integers(side * side - 1))
    k += k >= side * side // 2  # skip the centre, (0, 0)
    return k // side - most, k % side - most


@dataclass(frozen=True, kw_only=True)
class Augmenter:
    """Joint raw + labels augmentation with parameters fixed and randomness passed per call.

    Args:
        isotropic: whether z may be transposed with y and x (else only y-x, never across z, and
            elastic deformation only in the y-x plane).
        flip: random flips along z, y and x.
        transpose: random axis permutations that keep the shape.
        rotate90: random 90-degree rotations in the planes of equal size.
        elastic_prob: probability of an elastic deformation.
        elastic_alpha: largest displacement of a control point, in voxels.
        elastic_sigma: smoothness in voxels (control points every 2 sigma voxels).
        intensity_prob: probability of a contrast, brightness and gamma change.
        brightness: see ``adjust_intensity``.
        contrast: see ``adjust_intensity``.
        gamma: see ``adjust_intensity``.
        missing_section_prob: probability of missing sections (``fill_sections``).
        missing_sections: most z-slices blanked, at least one (capped at Z).
        misalignment_prob: probability of a misalignment step (``shift_sections``): all slices
            from a random z in [1, Z) on, raw and labels alike, move by a random non-zero
            integer (dy, dx); patches with one slice are never misaligned.
        misalignment_max_shift: largest |dy| and |dx| in voxels.
        motion_blur_prob: probability of motion blur (``motion_blur``) on some raw slices.
        motion_blur_sections: most z-slices blurred, at least one (capped at Z), each along a
            uniformly random in-plane direction.
        motion_blur_size: length of the line kernel in voxels.
        cutblur_prob: probability of cut-blur (``cut_blur``) on a random box of the raw patch,
            whose sides are uniform in ``cutblur_extent`` times the patch's sides.
        cutblur_extent: (low, high) fractions of each side, in (0, 1].
        cutblur_max_factor: the downsampling factor is uniform in [2, cutblur_max_factor].
    """

    isotropic: bool = True
    flip: bool = True
    transpose: bool = True
    rotate90: bool = True
    elastic_prob: float = 0.3
    elastic_alpha: float = 6.0
    elastic_sigma: float = 8.0
    intensity_prob: float = 0.8
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.2
    missing_section_prob: float = 0.0
    missing_sections: int = 2
    misalignment_prob: float = 0.0
    misalignment_max_shift: int = 8
    motion_blur_prob: float = 0.0
    motion_blur_sections: int = 2
    motion_blur_size: int = 9
    cutblur_prob: float = 0.0
    cutblur_extent: tuple[float, float] = (0.3, 0.7)
    cutblur_max_factor: int = 4

    def __post_init__(self) -> None:
        low, high = self.cutblur_extent
        if not 0.0 < low <= high <= 1.0 or self.cutblur_max_factor < 2:
            raise ValueError(
                f"cutblur_extent must be 0 < low <= high <= 1, got {self.cutblur_extent}; "
                f"cutblur_max_factor must be >= 2, got {self.cutblur_max_factor}"
            )
        for name in _PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        for name in _COUNTS:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.elastic_sigma <= 0 or min(self.elastic_alpha, self.brightness) < 0:
            raise ValueError("elastic_sigma must be > 0; elastic_alpha, brightness >= 0")
        if not 0.0 <= self.contrast < 1.0 or self.gamma < 0:
            raise ValueError("contrast must be in [0, 1), gamma >= 0")

    def orientation(self, shape: Sequence[int], rng: np.random.Generator) -> Orientation:
        """Draw a random orientation that keeps ``shape`` (Z, Y, X)."""
        perms = allowed_permutations(shape, self.isotropic)
        perm = perms[int(rng.integers(len(perms)))] if self.transpose else (0, 1, 2)
        planes = rotation_planes(shape, self.isotropic) if self.rotate90 else []
        rotations = tuple((int(rng.integers(4)), plane) for plane in planes)
        flips = tuple(a for a in range(3) if self.flip and rng.random() < 0.5)
        return Orientation(perm, rotations, flips)

    def __call__(
        self, raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one patch.

        Args:
            raw: float32 (Z, Y, X) in [0, 1].
            labels: integer (Z, Y, X) instance ids (or any integer mask).
            rng: the generator all randomness comes from.

        Returns:
            ``(raw, labels)``: raw float32 (Z, Y, X) in [0, 1] and labels of the input dtype, both
            C-contiguous copies of the input shape; labels hold a subset of the input ids.
        """
        _validate_inputs(raw, labels)
        orientation = self.orientation(raw.shape, rng)
        raw_v, labels_v = orientation.apply(raw), orientation.apply(labels)
        if rng.random() < self.elastic_prob:
            coords = elastic_coordinates(
                raw_v.shape, self.elastic_alpha, self.elastic_sigma, not self.isotropic, rng
            )
            raw_out = ndimage.map_coordinates(
                raw_v, coords, output=np.float32, order=1, mode="reflect"
            )
            labels_out = ndimage.map_coordinates(
                labels_v, coords, output=labels.dtype, order=0, mode="reflect"
            )
        else:
            raw_out = np.array(raw_v, dtype=np.float32, order="C", copy=True)
            labels_out = np.array(labels_v, order="C", copy=True)
        if rng.random() < self.intensity_prob:
            raw_out = adjust_intensity(raw_out, rng, self.brightness, self.contrast, self.gamma)
        if _happens(self.cutblur_prob, rng):
            raw_out = self.random_cut_blur(raw_out, rng)
        return self.section_artefacts(raw_out, labels_out, rng)

    def random_cut_blur(self, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``cut_blur`` of a random box with a random factor (see the class docstring)."""
        low, high = self.cutblur_extent
        box = []
        for n in raw.shape:
            size = max(1, int(round(n * rng.uniform(low, high))))
            start = int(rng.integers(0, n - size + 1))
            box.append(slice(start, start + size))
        factor = int(rng.integers(2, self.cutblur_max_factor + 1))
        return cut_blur(raw, box, factor, planar=not self.isotropic)

    def section_artefacts(
        self, raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Misalignment, missing sections, then motion blur, each with its probability.

        Args:
            raw: float32 (Z, Y, X) in [0, 1].
            labels: integer (Z, Y, X).
            rng: random generator; nothing is drawn for an option of probability 0.

        Returns:
            ``(raw, labels)`` of the input shapes and dtypes; the inputs when nothing happens.
        """
        depth = raw.shape[0]
        if depth > 1 and _happens(self.misalignment_prob, rng):
            start = int(rng.integers(1, depth))
            shift = _nonzero_shift(self.misalignment_max_shift, rng)
            raw, labels = shift_sections(raw, start, shift), shift_sections(labels, start, shift)
        if _happens(self.missing_section_prob, rng):
            raw = fill_sections(raw, _some_sections(depth, self.missing_sections, rng))
        if _happens(self.motion_blur_prob, rng):
            sections = _some_sections(depth, self.motion_blur_sections, rng)
            angles = rng.uniform(0.0, np.pi, len(sections)).tolist()
            raw = motion_blur(raw, sections, angles, self.motion_blur_size)
        return raw, labels
