"""Geometric augmentations, applied alike to raw and labels (numpy and scipy only).

Orientations: flips along z, y, x, a random transpose among axes of equal size (isotropic) or of
y and x only (anisotropic: z is never swapped), and random 90-degree rotations in the planes of
equal size (:class:`Orientation`, drawn by :meth:`mitoseg.train.augment.Augmenter.orientation`).
Elastic deformation samples both volumes at :func:`elastic_coordinates`; a misalignment step
(:func:`shift_sections`) moves raw and labels of all sections from a random z on in y-x.
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
