"""Synthetic EM-like volumes with mitochondria of known instance ids (numpy and scipy only).

The default data for demos and tests. A volume holds mid-grey cytoplasm with smooth texture, thin
dark cell membranes (the zero level set of smooth noise), clear vesicles and dark dense bodies as
distractors, and mitochondria: randomly oriented ellipsoids with a dark double-membrane rim, a
slightly darker matrix and cristae-like stripes. Some mitochondria touch in pairs, some (on
request) form necked chains, and at least one is cut by the volume border (shapes:
:mod:`mitoseg.datasets.synthetic_shapes`; textures: :mod:`mitoseg.datasets.synthetic_textures`).
The image is blurred by a point-spread function and made noisy.
``make_instance_volume`` gives the recommended instance data with all of these hard cases.

All sizes are physical (nm) and converted with ``voxel_size_nm``, so anisotropic voxels such as
(30, 8, 8) give objects that are flat in z when counted in voxels. Voxel ``i`` has its centre at
``i * voxel_size_nm`` along each axis. All randomness comes from ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from scipy import ndimage

from mitoseg.datasets.synthetic_shapes import (
    ELONGATION,
    RADIUS_NM,
    Ellipsoid,
    PlacedObject,
    box_of,
    box_shape,
    ellipsoid_mask,
    offsets_nm,
    random_ellipsoid,
    try_chain,
    try_pair,
    try_single,
)
from mitoseg.datasets.synthetic_textures import _shell_profile, membrane_profile, smooth_noise

__all__ = [
    "ellipsoid_mask",
    "make_instance_volume",
    "make_volume",
    "membrane_profile",
    "smooth_noise",
]

_T = TypeVar("_T")

# Grey levels in [0, 1] before blur and noise.
_CYTOPLASM = 0.64
_MATRIX = (0.44, 0.52)  # mitochondrial interior, drawn per object
_RIM_OUTER, _RIM_INNER = 0.18, 0.30  # outermost rim voxel, the rest of the rim
_CRISTAE_DEPTH = 0.14
_MEMBRANE_DEPTH = 0.30
# Geometry in nm.
_CRISTAE_PERIOD_NM = (40.0, 70.0)
_RIM_NM = 10.0
_PSF_SIGMA_NM = 5.0
# Counts.
_TARGET_FRACTION = 0.10  # foreground fraction aimed at when n_objects is None
_MAX_FRACTION = 0.15
_VESICLES_PER_UM3 = 60.0
_DENSE_BODIES_PER_UM3 = 6.0
_HARD_CASES_PER_UM3 = 0.75  # touching pairs and necked chains in make_instance_volume


# --------------------------------------------------------------------------- placement


def _expected_count(shape: Sequence[int], vs: np.ndarray) -> float:
    """Number of objects of mean size that make ``_TARGET_FRACTION`` of the volume."""
    lo, hi = RADIUS_NM
    mean_cube = (hi**4 - lo**4) / (4 * (hi - lo))  # E[b**3] for b uniform in [lo, hi]
    mean_nm3 = 4 / 3 * np.pi * mean_cube * np.mean(ELONGATION) * 0.875
    return _TARGET_FRACTION * float(np.prod(shape)) * float(np.prod(vs)) / mean_nm3


def _border_point(rng: np.random.Generator, extent_nm: np.ndarray) -> np.ndarray:
    """A uniform point on a random face of the volume, so an object there is cut by the border."""
    point = rng.uniform(0.0, 1.0, 3) * extent_nm
    axis = int(rng.integers(3))
    point[axis] = extent_nm[axis] * int(rng.integers(2))
    return point


def _first_fit(tries: int, attempt: Callable[[], _T | None]) -> _T | None:
    """The first non-None result of up to ``tries`` calls of ``attempt``."""
    for _ in range(tries):
        found = attempt()
        if found is not None:
            return found
    return None


def _place_objects(
    labels: np.ndarray,
    vs: np.ndarray,
    rng: np.random.Generator,
    n_objects: int | None,
    touching_pairs: int,
    necked_chains: int = 0,
) -> list[PlacedObject]:
    """Place objects without overlap, writing ids 1..N into ``labels`` (uint32, zeros on entry).

    Order: one object on the border, then the touching pairs, the necked chains, then single
    objects until ``n_objects`` are placed or (for None) the foreground fraction reaches
    ``_TARGET_FRACTION``.
    """
    extent = (np.array(labels.shape) - 1) * vs
    gap_nm = max(15.0, 1.2 * float(np.linalg.norm(vs)))  # > a voxel diagonal: no accidental touch
    total = n_objects if n_objects is not None else np.inf
    pairs = int(min(touching_pairs, total // 2))
    chains = int(min(necked_chains, total - 2 * pairs))
    objects: list[PlacedObject] = []
    foreground = 0

    def add(obj: PlacedObject) -> None:
        nonlocal foreground
        objects.append(obj)
        labels[obj.box][obj.mask] = len(objects)
        foreground += int(obj.mask.sum())

    def anywhere() -> np.ndarray:
        return rng.uniform(0.0, 1.0, 3) * extent

    border = _first_fit(
        20 if total - 2 * pairs - chains >= 1 else 0,
        lambda: try_single(labels, random_ellipsoid(rng, _border_point(rng, extent)), vs, gap_nm),
    )
    if border is not None:
        add(border)
    for _ in range(pairs):  # each placed before the next is tried: they must not overlap
        for obj in _first_fit(30, lambda: try_pair(labels, rng, anywhere(), vs, gap_nm)) or ():
            add(obj)
    for _ in range(chains):
        chain = _first_fit(30, lambda: try_chain(labels, rng, anywhere(), vs, gap_nm))
        if chain is not None:
            add(chain)
    target, limit = _TARGET_FRACTION * labels.size, _MAX_FRACTION * labels.size
    for _ in range(50 + 5 * int(min(total, _expected_count(labels.shape, vs)))):
        if len(objects) >= total or (n_objects is None and foreground >= target):
            break
        obj = try_single(labels, random_ellipsoid(rng, rng.uniform(0, 1, 3) * extent), vs, gap_nm)
        if obj is not None and (n_objects is not None or foreground + obj.mask.sum() <= limit):
            add(obj)
    return objects


# --------------------------------------------------------------------------- painting


def _paint_blobs(
    raw: np.ndarray, occupied: np.ndarray, vs: np.ndarray, rng: np.random.Generator
) -> None:
    """Clear vesicles (dark ring, light lumen) and dark dense bodies, away from mitochondria."""
    volume_um3 = float(np.prod(np.array(raw.shape) * vs)) * 1e-9
    extent = (np.array(raw.shape) - 1) * vs
    kinds = [(_VESICLES_PER_UM3, (15.0, 25.0), False), (_DENSE_BODIES_PER_UM3, (30.0, 60.0), True)]
    for density, radii, dense in kinds:
        for _ in range(int(rng.poisson(density * volume_um3))):
            center, radius = rng.uniform(0, 1, 3) * extent, rng.uniform(*radii)
            ell = Ellipsoid(center, np.full(3, radius + 2 * vs.max()), np.eye(3))
            box = box_of(ell, vs, raw.shape)
            if min(box_shape(box)) == 0 or occupied[box].any():
                continue
            d = offsets_nm(box, center, vs)
            r = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + np.float32(1e-6)
            sheet = _shell_profile(r - radius, [c / r for c in d], 3.0, vs)
            inside = 1.0 / (1.0 + np.exp(np.clip((r - radius) / 3.0, -30, 30)))
            raw[box] += -0.28 * inside if dense else 0.06 * inside - 0.32 * sheet


def _paint_mitochondrion(
    raw: np.ndarray, obj: PlacedObject, vs: np.ndarray, rng: np.random.Generator
) -> None:
    """Matrix grey level, some of the cytoplasm texture and cristae-like stripes inside the mask."""
    ell = obj.ellipsoid
    direction = ell.rotation[:, 0] + 0.4 * rng.standard_normal(3)  # cristae mostly transverse
    direction = (direction / np.linalg.norm(direction)).astype(np.float32)
    period, phase = rng.uniform(*_CRISTAE_PERIOD_NM), rng.uniform(0, 2 * np.pi)
    level = rng.uniform(*_MATRIX)
    d = offsets_nm(obj.box, ell.center_nm, vs)
    s = direction[0] * d[0] + direction[1] * d[1] + direction[2] * d[2]
    stripes = np.clip(np.sin(2 * np.pi * s / period + phase), 0, 1) ** 6
    region = raw[obj.box]
    texture = 0.5 * (region - _CYTOPLASM)
    region[obj.mask] = (level + texture - _CRISTAE_DEPTH * stripes)[obj.mask]


def _rim(labels: np.ndarray, widths: Sequence[int]) -> np.ndarray:
    """bool: foreground voxels within ``widths[axis]`` voxels of a different id along an axis.

    The volume border is not a rim: an object cut by the border continues outside.
    """
    rim = np.zeros(labels.shape, dtype=bool)
    for axis, width in enumerate(widths):
        for k in range(1, width + 1):
            lo, hi = [slice(None)] * 3, [slice(None)] * 3
            lo[axis], hi[axis] = slice(None, -k), slice(k, None)
            differ = labels[tuple(lo)] != labels[tuple(hi)]
            rim[tuple(lo)] |= differ
            rim[tuple(hi)] |= differ
    return rim & (labels > 0)


def _rim_widths(vs: np.ndarray) -> list[int]:
    """Rim width in voxels per axis; at least one voxel unless the axis is much coarser (z)."""
    return [max(round(_RIM_NM / v), 1 if v <= 2 * vs.min() else 0) for v in vs]


def _image_formation(
    raw: np.ndarray, vs: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """PSF blur, additive Gaussian plus mild shot noise, quantisation to uint8."""
    sigma = [s if s >= 0.3 else 0.0 for s in (_PSF_SIGMA_NM / vs)]
    blurred = ndimage.gaussian_filter(raw, sigma, truncate=3.0)
    std = noise * np.sqrt(1.0 + 0.25 * np.clip(blurred, 0, 1))  # shot noise grows with signal
    noisy = blurred + std * rng.standard_normal(raw.shape, dtype=np.float32)
    return np.clip(noisy * 255.0 + 0.5, 0, 255).astype(np.uint8)


def make_volume(
    shape: tuple[int, int, int] = (64, 192, 192),
    *,
    seed: int = 0,
    n_objects: int | None = None,
    voxel_size_nm: tuple[float, float, float] = (5.0, 5.0, 5.0),
    touching_pairs: int = 2,
    noise: float = 0.08,
    necked_chains: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """An EM-like volume with mitochondria of known instance ids.

    Args:
        shape: (Z, Y, X) in voxels.
        seed: seed of ``np.random.default_rng``; the same arguments give identical arrays.
        n_objects: number of mitochondria, pair members included, a necked chain counted
            once; None places objects until
            about 10 % of the voxels are foreground. Fewer are placed when the volume is full.
        voxel_size_nm: (z, y, x) voxel size. Object sizes are physical: short diameters of
            70-220 nm, lengths up to 660 nm; a volume much smaller than that holds few objects
            and can exceed 15 % foreground, since the border object and pairs are always placed.
        touching_pairs: number of pairs of objects that share a face (different ids).
        noise: standard deviation of the additive Gaussian noise as a fraction of 255.
        necked_chains: number of "mitochondria on a string", each one id: two or three
            ellipsoid bodies (short diameters 120-220 nm) joined by tubes 40-60 nm wide and
            60-200 nm long. Constraint: a neck is widened where needed so that every section
            through it is at least 7 in-plane voxels wide (at (30, 8, 8) nm: 64 nm), so that a
            contour band of 2 voxels on each side of a border (4 wide) leaves a connected core
            even on a diagonal neck; with in-plane voxels coarser than 8 nm necks are wider
            still. All body centres lie in the volume, so every neck is visible. 0 (the
            default) draws nothing extra from the generator: volumes without chains are the
            same as before the option existed.

    Returns:
        ``(raw, labels)``: raw uint8 (Z, Y, X), mid-grey cytoplasm and darker mitochondria;
        labels uint32 (Z, Y, X), 0 = background, ids 1..N consecutive, each id one 26-connected
        component. One object is cut by the volume border (unless n_objects is used up by the
        pairs and chains).
    """
    if len(shape) != 3 or min(shape) < 1 or len(voxel_size_nm) != 3 or min(voxel_size_nm) <= 0:
        raise ValueError(f"need a 3D shape and positive voxel sizes: {shape}, {voxel_size_nm}")
    if min(touching_pairs, necked_chains, noise, 0 if n_objects is None else n_objects) < 0:
        raise ValueError("n_objects, touching_pairs, necked_chains and noise must be >= 0")
    rng = np.random.default_rng(seed)
    vs = np.asarray(voxel_size_nm, dtype=float)
    labels = np.zeros(shape, dtype=np.uint32)
    objects = _place_objects(labels, vs, rng, n_objects, touching_pairs, necked_chains)
    occupied = np.zeros(shape, dtype=bool)
    for obj in objects:
        occupied[obj.box] |= obj.keep_out
    raw = _CYTOPLASM + 0.04 * smooth_noise(shape, 120.0, vs, rng)
    raw += 0.025 * smooth_noise(shape, 20.0, vs, rng)
    raw -= _MEMBRANE_DEPTH * membrane_profile(shape, vs, rng) * ~occupied
    _paint_blobs(raw, occupied, vs, rng)
    for obj in objects:
        _paint_mitochondrion(raw, obj, vs, rng)
    widths = _rim_widths(vs)
    raw[_rim(labels, widths)] = _RIM_INNER
    raw[_rim(labels, [min(w, 1) for w in widths])] = _RIM_OUTER
    return _image_formation(raw, vs, noise, rng), labels


def make_instance_volume(
    shape: tuple[int, int, int] = (32, 256, 256),
    *,
    seed: int = 0,
    voxel_size_nm: tuple[float, float, float] = (30.0, 8.0, 8.0),
    noise: float = 0.08,
) -> tuple[np.ndarray, np.ndarray]:
    """The recommended data for instance segmentation: MitoEM's hard cases, anisotropic.

    ``make_volume`` with touching pairs (different ids sharing a face), necked chains (one id
    across thin necks) and an object cut by the border, at serial-section voxel sizes by default.
    Pairs and chains each number ``round(0.75 * volume in um**3)``, at least one: three each for
    the default 0.96 x 2.05 x 2.05 um.

    Args:
        shape: (Z, Y, X) in voxels.
        seed: seed of ``np.random.default_rng``; the same arguments give identical arrays.
        voxel_size_nm: (z, y, x) voxel size.
        noise: standard deviation of the additive Gaussian noise as a fraction of 255.

    Returns:
        ``(raw, labels)``: raw uint8 (Z, Y, X) and labels uint32 (Z, Y, X), as ``make_volume``.
    """
    if len(shape) != 3 or len(voxel_size_nm) != 3:
        raise ValueError(f"need a 3D shape and voxel size: {shape}, {voxel_size_nm}")
    volume_um3 = float(np.prod(np.asarray(shape) * np.asarray(voxel_size_nm))) * 1e-9
    count = max(1, round(_HARD_CASES_PER_UM3 * volume_um3))
    return make_volume(
        shape,
        seed=seed,
        voxel_size_nm=voxel_size_nm,
        touching_pairs=count,
        necked_chains=count,
        noise=noise,
    )
