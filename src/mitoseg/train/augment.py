"""Joint raw + labels augmentation for 3D training patches (numpy and scipy only).

An ``Augmenter`` holds the parameters; every call takes the random generator, so a patch's
augmentation is reproducible from the generator's seed. Geometric transforms are applied
identically to raw and labels; intensity transforms touch raw only.

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

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage


def allowed_permutations(shape: Sequence[int], isotropic: bool) -> list[tuple[int, ...]]:
    """Axis permutations that keep ``shape``; never across z when not ``isotropic``.

    Args:
        shape: (Z, Y, X) of the patch.
        isotropic: whether z may be exchanged with y or x.

    Returns:
        Permutations for ``np.transpose``, the identity first.
    """
    perms = [
        p
        for p in itertools.permutations(range(3))
        if all(shape[a] == shape[i] for i, a in enumerate(p))
    ]
    return perms if isotropic else [p for p in perms if p[0] == 0]


def rotation_planes(shape: Sequence[int], isotropic: bool) -> list[tuple[int, int]]:
    """Planes (axis pairs for ``np.rot90``) of equal size; only y-x when not ``isotropic``."""
    planes = [(1, 2), (0, 1), (0, 2)] if isotropic else [(1, 2)]
    return [(a, b) for a, b in planes if shape[a] == shape[b]]


@lru_cache(maxsize=64)
def _zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
    """float32 (n_out, n_in): ``ndimage.zoom(v, n_out / n_in, order=3)`` as a matrix on ``v``."""
    eye = np.eye(n_in)
    columns = [ndimage.zoom(e, n_out / n_in, order=3) for e in eye]
    matrix = np.stack(columns, axis=1).astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def upsample(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Cubic-spline upsampling, equal to ``ndimage.zoom(coarse, shape / coarse.shape, order=3)``.

    Zoom is separable, so it is applied as one small matrix per axis, which is about 50 times
    faster than ``ndimage.zoom`` for a displacement field.

    Args:
        coarse: float array (any number of dimensions).
        shape: output shape, same length as ``coarse.shape``.

    Returns:
        float32 array of ``shape``.
    """
    out = coarse.astype(np.float32)
    for axis, n_out in enumerate(shape):
        matrix = _zoom_matrix(coarse.shape[axis], int(n_out))
        out = np.moveaxis(np.tensordot(matrix, out, axes=(1, axis)), 0, axis)
    return np.ascontiguousarray(out)


def elastic_coordinates(
    shape: Sequence[int], alpha: float, sigma: float, planar: bool, rng: np.random.Generator
) -> np.ndarray:
    """Sampling coordinates of a smooth random deformation.

    Control points every ``2 * sigma`` voxels are displaced uniformly in [-alpha, alpha] voxels
    per axis and the displacement is upsampled with cubic splines (``upsample``). The spacing of
    2 sigma gives about the smoothness of white noise blurred by a Gaussian of std sigma; control
    points every sigma voxels would fold about 20 % of the voxels at alpha 6, sigma 8 (about
    0.2 % with 2 sigma). ``planar`` displaces only y and x, one field for all slices.

    Args:
        shape: (Z, Y, X) of the patch.
        alpha: largest displacement of a control point, in voxels.
        sigma: smoothness in voxels.
        planar: displace in the y-x plane only (anisotropic data).
        rng: random generator.

    Returns:
        float32 (3, Z, Y, X): for each output voxel, the (z, y, x) position to sample the input.
    """
    axes = (1, 2) if planar else (0, 1, 2)
    field_shape = tuple(shape[a] for a in axes)
    grid = tuple(max(2, int(np.ceil(n / (2.0 * sigma))) + 1) for n in field_shape)
    coarse = rng.uniform(-alpha, alpha, (len(axes), *grid))
    coords = np.empty((3, *shape), dtype=np.float32)
    for axis in range(3):
        view = [-1 if a == axis else 1 for a in range(3)]
        coords[axis] = np.arange(shape[axis], dtype=np.float32).reshape(view)
    for i, axis in enumerate(axes):
        coords[axis] += upsample(coarse[i], field_shape)  # (Y, X) broadcasts over z when planar
    return coords


def adjust_intensity(
    raw: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float, gamma: float
) -> np.ndarray:
    """Random contrast (about the mean), brightness and gamma.

    Args:
        raw: float32 (Z, Y, X) in [0, 1].
        rng: random generator.
        brightness: shift drawn from [-brightness, brightness].
        contrast: scale drawn from [1 - contrast, 1 + contrast], about the patch mean.
        gamma: exponent exp(u), u drawn from [-gamma, gamma].

    Returns:
        float32 (Z, Y, X) in [0, 1], a new array.
    """
    scale = 1.0 + rng.uniform(-contrast, contrast)
    shift = rng.uniform(-brightness, brightness)
    exponent = np.exp(rng.uniform(-gamma, gamma))
    mean = float(raw.mean())
    out = (raw - np.float32(mean)) * np.float32(scale) + np.float32(mean + shift)
    np.clip(out, 0.0, 1.0, out=out)
    np.power(out, np.float32(exponent), out=out)
    return out


def fill_sections(raw: np.ndarray, sections: Sequence[int]) -> np.ndarray:
    """Missing sections: each listed z-slice replaced by its own mean grey.

    A lost or blank section shows no structure; filling it with its mean (rather than
    interpolating the neighbours) keeps the patch's brightness and hides every edge, so the
    labels, which are kept, must be inferred from the sections around it.

    Args:
        raw: float32 (Z, Y, X) in [0, 1].
        sections: distinct z indices in [0, Z).

    Returns:
        float32 (Z, Y, X) in [0, 1], a new array.
    """
    if any(not 0 <= z < raw.shape[0] for z in sections):
        raise ValueError(f"sections must lie in [0, {raw.shape[0]}), got {list(sections)}")
    out = np.array(raw, dtype=np.float32, order="C", copy=True)
    for z in sections:
        out[z] = out[z].mean(dtype=np.float64)
    return out


def reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Integer indices folded into [0, n) by half-sample symmetric reflection (..., 1, 0 | 0, 1)."""
    folded = np.mod(index, 2 * n)
    return np.where(folded < n, folded, 2 * n - 1 - folded)


def shift_sections(array: np.ndarray, start: int, shift: tuple[int, int]) -> np.ndarray:
    """Misalignment step: the slices from ``start`` on moved by ``shift`` voxels in y-x.

    ``out[z, y, x] = array[z, y - dy, x - dx]`` for ``z >= start``; the strip that the shift
    reveals is the image mirrored at its edge (half-sample symmetric, as ``mode="reflect"`` of the
    elastic deformation), so raw and labels stay consistent and no new ids appear.

    Args:
        array: (Z, Y, X) of any dtype, raw or labels.
        start: first shifted slice, in [0, Z].
        shift: (dy, dx) in voxels.

    Returns:
        A new C-contiguous array of the input's shape and dtype.
    """
    if array.ndim != 3 or not 0 <= start <= array.shape[0]:
        raise ValueError(f"need a 3D array and start in [0, Z], got {array.shape}, {start}")
    out = np.array(array, order="C", copy=True)
    ys = reflect_index(np.arange(array.shape[1]) - int(shift[0]), array.shape[1])
    xs = reflect_index(np.arange(array.shape[2]) - int(shift[1]), array.shape[2])
    out[start:] = array[start:, ys[:, None], xs[None, :]]
    return out


def line_kernel(length: int, angle: float) -> np.ndarray:
    """Motion-blur kernel: a centred line segment of ``length`` voxels, normalised to sum 1.

    The segment is sampled finely and each sample goes to its nearest voxel, so an axis-aligned
    segment of odd length is a box filter of that length (even: half weights at both ends).

    Args:
        length: segment length in voxels, >= 1.
        angle: direction in the y-x plane in radians; 0 is along x, pi / 2 along y.

    Returns:
        float64 (K, K) with K = 2 * (length // 2) + 1, non-negative, summing to 1.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    half, samples = length // 2, 16 * length
    t = -length / 2.0 + (np.arange(samples) + 0.5) / 16.0
    ys = half + np.rint(t * np.sin(angle)).astype(int)
    xs = half + np.rint(t * np.cos(angle)).astype(int)
    kernel = np.zeros((2 * half + 1, 2 * half + 1))
    np.add.at(kernel, (ys, xs), 1.0 / samples)
    return kernel


def motion_blur(
    raw: np.ndarray, sections: Sequence[int], angles: Sequence[float], length: int
) -> np.ndarray:
    """Line blur of ``length`` voxels on the listed z-slices, each along its own direction.

    Args:
        raw: float32 (Z, Y, X) in [0, 1].
        sections: distinct z indices in [0, Z).
        angles: one in-plane direction per section, radians (see ``line_kernel``).
        length: kernel length in voxels.

    Returns:
        float32 (Z, Y, X) in [0, 1], a new array; other slices are unchanged.
    """
    if len(sections) != len(angles) or any(not 0 <= z < raw.shape[0] for z in sections):
        raise ValueError(f"need one angle per section in [0, {raw.shape[0]}): {sections}")
    out = np.array(raw, dtype=np.float32, order="C", copy=True)
    for z, angle in zip(sections, angles, strict=True):
        ndimage.convolve(raw[z], line_kernel(length, angle), output=out[z], mode="reflect")
    return np.clip(out, 0.0, 1.0, out=out)


def cut_blur(raw: np.ndarray, box: Sequence[slice], factor: int, planar: bool) -> np.ndarray:
    """Raw with the voxels in ``box`` replaced by a ``factor``-times lower-resolution copy.

    The box is averaged over ``factor`` voxels per axis, subsampled by ``factor`` and linearly
    interpolated back to its shape; z is left at full resolution when ``planar``.

    Args:
        raw: float32 (Z, Y, X) in [0, 1].
        box: three slices with positive extents inside ``raw``.
        factor: integer downsampling factor >= 2.
        planar: downsample in y-x only (anisotropic data).

    Returns:
        float32 (Z, Y, X) in [0, 1], a new array equal to ``raw`` outside ``box``.
    """
    region = np.asarray(raw[tuple(box)], dtype=np.float32)
    if region.ndim != 3 or region.size == 0 or factor < 2:
        raise ValueError(f"need a non-empty 3D box and factor >= 2, got {region.shape}, {factor}")
    factors = [1 if planar and axis == 0 else min(factor, n) for axis, n in enumerate(region.shape)]
    smooth = ndimage.uniform_filter(region, size=factors, mode="reflect")
    coarse = smooth[tuple(slice(f // 2, None, f) for f in factors)]
    zoom = [n / c for n, c in zip(region.shape, coarse.shape, strict=True)]
    out = np.array(raw, dtype=np.float32, order="C", copy=True)
    out[tuple(box)] = ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True)
    return np.clip(out, 0.0, 1.0, out=out)


def _validate_inputs(raw: np.ndarray, labels: np.ndarray) -> None:
    if raw.ndim != 3 or raw.shape != labels.shape:
        raise ValueError(f"need raw and labels of one 3D shape, got {raw.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer, got {labels.dtype}")


@dataclass(frozen=True)
class Orientation:
    """An element of the orientation group: transpose, then 90-degree rotations, then flips.

    Attributes:
        perm: axis permutation for ``np.transpose``.
        rotations: ``(k, (axis_a, axis_b))`` pairs for ``np.rot90``, applied in order.
        flips: axes to reverse.
    """

    perm: tuple[int, ...] = (0, 1, 2)
    rotations: tuple[tuple[int, tuple[int, int]], ...] = ()
    flips: tuple[int, ...] = ()

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The oriented (Z, Y, X) array, a view of ``array``."""
        array = np.transpose(array, self.perm)
        for k, plane in self.rotations:
            array = np.rot90(array, k, axes=plane)
        return np.flip(array, self.flips) if self.flips else array


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
