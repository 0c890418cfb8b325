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

    def __post_init__(self) -> None:
        for name in ("elastic_prob", "intensity_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
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
        return raw_out, labels_out
