"""Synthetic EM-like volumes with mitochondria of known instance ids (numpy and scipy only).

The default data for demos and tests. A volume holds mid-grey cytoplasm with smooth texture, thin
dark cell membranes (the zero level set of smooth noise), clear vesicles and dark dense bodies as
distractors, and mitochondria: randomly oriented ellipsoids with a dark double-membrane rim, a
slightly darker matrix and cristae-like stripes. Some mitochondria touch in pairs and at least one
is cut by the volume border. The image is blurred by a point-spread function and made noisy.

All sizes are physical (nm) and converted with ``voxel_size_nm``, so anisotropic voxels such as
(30, 8, 8) give objects that are flat in z when counted in voxels. Voxel ``i`` has its centre at
``i * voxel_size_nm`` along each axis. All randomness comes from ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

Box = tuple[slice, ...]

# Grey levels in [0, 1] before blur and noise.
_CYTOPLASM = 0.64
_MATRIX = (0.44, 0.52)  # mitochondrial interior, drawn per object
_RIM_OUTER, _RIM_INNER = 0.18, 0.30  # outermost rim voxel, the rest of the rim
_CRISTAE_DEPTH = 0.14
_MEMBRANE_DEPTH = 0.30
# Geometry in nm.
_RADIUS_NM = (45.0, 110.0)  # first short semi-axis; the second is 0.75-1 times it
_ELONGATION = (1.2, 3.0)  # long semi-axis / first short semi-axis
_CRISTAE_PERIOD_NM = (40.0, 70.0)
_RIM_NM = 10.0
_MEMBRANE_SIGMA_NM = 4.0
_CELL_SCALE_NM = 180.0  # control-point spacing of the noise whose zero set gives the membranes
_PSF_SIGMA_NM = 5.0
# Counts.
_TARGET_FRACTION = 0.10  # foreground fraction aimed at when n_objects is None
_MAX_FRACTION = 0.15
_MIN_VOXELS = 64  # smaller objects (slivers at the border) are not placed
_VESICLES_PER_UM3 = 60.0
_DENSE_BODIES_PER_UM3 = 6.0


@dataclass(frozen=True)
class _Ellipsoid:
    center_nm: np.ndarray  # (3,) z, y, x
    semi_axes_nm: np.ndarray  # (3,) long axis first
    rotation: np.ndarray  # (3, 3); column j is the direction of semi-axis j in (z, y, x)


@dataclass(frozen=True)
class _Object:
    box: Box
    mask: np.ndarray  # bool, the box's shape
    keep_out: np.ndarray  # bool, the ellipsoid grown by a gap: no other object, membrane, vesicle
    ellipsoid: _Ellipsoid


# --------------------------------------------------------------------------- geometry


def _box(ell: _Ellipsoid, vs: np.ndarray, shape: Sequence[int], scale: float = 1.0) -> Box:
    """Voxel bounding box of the ellipsoid scaled by ``scale``, cropped to the volume."""
    half = scale * np.sqrt(((ell.rotation * ell.semi_axes_nm[None, :]) ** 2).sum(axis=1))
    lo = np.clip(np.floor((ell.center_nm - half) / vs).astype(int), 0, shape)
    hi = np.clip(np.ceil((ell.center_nm + half) / vs).astype(int) + 1, 0, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _union(a: Box, b: Box) -> Box:
    return tuple(
        slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b, strict=True)
    )


def _box_shape(box: Box) -> tuple[int, ...]:
    return tuple(max(sl.stop - sl.start, 0) for sl in box)


def _offsets_nm(box: Box, center_nm: np.ndarray, vs: np.ndarray) -> list[np.ndarray]:
    """Broadcastable float32 (z, y, x) offsets in nm of the voxel centres of ``box``."""
    out = []
    for axis, sl in enumerate(box):
        d = np.arange(sl.start, sl.stop) * vs[axis] - center_nm[axis]
        shape = [1, 1, 1]
        shape[axis] = d.size
        out.append(d.reshape(shape).astype(np.float32))
    return out


def _quadric(ell: _Ellipsoid, box: Box, vs: np.ndarray) -> np.ndarray:
    """float32 q on the box's voxel centres: q <= 1 inside, q <= s**2 inside the ellipsoid x s."""
    d = _offsets_nm(box, ell.center_nm, vs)
    q = np.zeros(_box_shape(box), dtype=np.float32)
    for j in range(3):
        r = ell.rotation[:, j].astype(np.float32) / np.float32(ell.semi_axes_nm[j])
        q += (r[0] * d[0] + r[1] * d[1] + r[2] * d[2]) ** 2
    return q


def ellipsoid_mask(
    center_nm: Sequence[float],
    semi_axes_nm: Sequence[float],
    rotation: np.ndarray,
    voxel_size_nm: Sequence[float],
    shape: Sequence[int],
) -> tuple[Box, np.ndarray]:
    """Rasterise a rotated ellipsoid on its bounding box only.

    Args:
        center_nm: (3,) centre in nm, (z, y, x); voxel i has its centre at i * voxel_size_nm.
        semi_axes_nm: (3,) semi-axes in nm.
        rotation: float (3, 3); column j is the unit direction of semi-axis j in (z, y, x).
        voxel_size_nm: (3,) voxel size in nm.
        shape: (Z, Y, X) of the volume that the box is cropped to.

    Returns:
        ``(box, mask)``: three slices into the volume and a bool mask of the box's shape
        (possibly empty when the ellipsoid lies outside the volume).
    """
    vs = np.asarray(voxel_size_nm, dtype=float)
    ell = _Ellipsoid(np.asarray(center_nm, float), np.asarray(semi_axes_nm, float), rotation)
    box = _box(ell, vs, shape)
    return box, _quadric(ell, box, vs) <= 1.0


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random rotation matrix, from a random unit quaternion."""
    w, x, y, z = rng.standard_normal(4)
    n = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _random_ellipsoid(rng: np.random.Generator, center_nm: np.ndarray) -> _Ellipsoid:
    b = rng.uniform(*_RADIUS_NM)
    axes = np.array([b * rng.uniform(*_ELONGATION), b, b * rng.uniform(0.75, 1.0)])
    return _Ellipsoid(np.asarray(center_nm, float), axes, _random_rotation(rng))


def _reach_nm(ell: _Ellipsoid, direction: np.ndarray) -> float:
    """Distance from the centre to the surface along the unit vector ``direction``."""
    u = ell.rotation.T @ direction
    return float(1.0 / np.sqrt(((u / ell.semi_axes_nm) ** 2).sum()))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a bool mask."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask
    return lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1)


def _face_adjacent(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a voxel of bool mask ``a`` shares a face with a voxel of bool mask ``b``."""
    for axis in range(3):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        if (a[tuple(lo)] & b[tuple(hi)]).any() or (a[tuple(hi)] & b[tuple(lo)]).any():
            return True
    return False


# --------------------------------------------------------------------------- placement


def _gap_scale(ell: _Ellipsoid, gap_nm: float) -> float:
    return 1.0 + gap_nm / float(ell.semi_axes_nm.min())


def _try_single(
    labels: np.ndarray, ell: _Ellipsoid, vs: np.ndarray, gap_nm: float
) -> _Object | None:
    """An ``_Object`` for ``ell`` if it fits with a gap to all placed objects, else None."""
    s = _gap_scale(ell, gap_nm)
    box = _box(ell, vs, labels.shape, s)
    if min(_box_shape(box)) == 0:
        return None
    q = _quadric(ell, box, vs)
    keep_out = q <= s * s
    if labels[box][keep_out].any():
        return None
    mask = _largest_component(q <= 1.0)
    if mask.sum() < _MIN_VOXELS:
        return None
    return _Object(box, mask, keep_out, ell)


def _try_pair(
    labels: np.ndarray,
    rng: np.random.Generator,
    center_nm: np.ndarray,
    vs: np.ndarray,
    gap_nm: float,
) -> tuple[_Object, _Object] | None:
    """Two ellipsoids pressed together: the second loses the voxels of the first, so they share
    a face. Returns two ``_Object`` on a common box, or None if they do not fit."""
    a = _random_ellipsoid(rng, center_nm)
    b = _random_ellipsoid(rng, center_nm)
    u = rng.standard_normal(3)
    u /= np.linalg.norm(u)
    dist = (_reach_nm(a, u) + _reach_nm(b, -u)) * rng.uniform(0.7, 0.85)
    b = replace(b, center_nm=a.center_nm + dist * u)
    sa, sb = _gap_scale(a, gap_nm), _gap_scale(b, gap_nm)
    box = _union(_box(a, vs, labels.shape, sa), _box(b, vs, labels.shape, sb))
    if min(_box_shape(box)) == 0:
        return None
    qa, qb = _quadric(a, box, vs), _quadric(b, box, vs)
    keep_a, keep_b = qa <= sa * sa, qb <= sb * sb
    if labels[box][keep_a | keep_b].any():
        return None
    mask_a = _largest_component(qa <= 1.0)
    mask_b = _largest_component((qb <= 1.0) & ~mask_a)
    if min(mask_a.sum(), mask_b.sum()) < _MIN_VOXELS or not _face_adjacent(mask_a, mask_b):
        return None
    return _Object(box, mask_a, keep_a, a), _Object(box, mask_b, keep_b, b)


def _expected_count(shape: Sequence[int], vs: np.ndarray) -> float:
    """Number of objects of mean size that make ``_TARGET_FRACTION`` of the volume."""
    lo, hi = _RADIUS_NM
    mean_cube = (hi**4 - lo**4) / (4 * (hi - lo))  # E[b**3] for b uniform in [lo, hi]
    mean_nm3 = 4 / 3 * np.pi * mean_cube * np.mean(_ELONGATION) * 0.875
    return _TARGET_FRACTION * float(np.prod(shape)) * float(np.prod(vs)) / mean_nm3


def _border_point(rng: np.random.Generator, extent_nm: np.ndarray) -> np.ndarray:
    """A uniform point on a random face of the volume, so an object there is cut by the border."""
    point = rng.uniform(0.0, 1.0, 3) * extent_nm
    axis = int(rng.integers(3))
    point[axis] = extent_nm[axis] * int(rng.integers(2))
    return point


def _place_objects(
    labels: np.ndarray,
    vs: np.ndarray,
    rng: np.random.Generator,
    n_objects: int | None,
    touching_pairs: int,
) -> list[_Object]:
    """Place objects without overlap, writing ids 1..N into ``labels`` (uint32, zeros on entry).

    Order: one object on the border, then the touching pairs, then single objects until
    ``n_objects`` are placed or (for None) the foreground fraction reaches ``_TARGET_FRACTION``.
    """
    extent = (np.array(labels.shape) - 1) * vs
    gap_nm = max(15.0, 1.2 * float(np.linalg.norm(vs)))  # > a voxel diagonal: no accidental touch
    total = n_objects if n_objects is not None else np.inf
    pairs = int(min(touching_pairs, total // 2))
    objects: list[_Object] = []
    foreground = 0

    def add(obj: _Object) -> None:
        nonlocal foreground
        objects.append(obj)
        labels[obj.box][obj.mask] = len(objects)
        foreground += int(obj.mask.sum())

    for _ in range(20 if total - 2 * pairs >= 1 else 0):
        obj = _try_single(labels, _random_ellipsoid(rng, _border_point(rng, extent)), vs, gap_nm)
        if obj is not None:
            add(obj)
            break
    for _ in range(pairs):
        for _ in range(30):
            pair = _try_pair(labels, rng, rng.uniform(0.0, 1.0, 3) * extent, vs, gap_nm)
            if pair is not None:
                add(pair[0])
                add(pair[1])
                break
    target, limit = _TARGET_FRACTION * labels.size, _MAX_FRACTION * labels.size
    for _ in range(50 + 5 * int(min(total, _expected_count(labels.shape, vs)))):
        if len(objects) >= total or (n_objects is None and foreground >= target):
            break
        obj = _try_single(labels, _random_ellipsoid(rng, rng.uniform(0, 1, 3) * extent), vs, gap_nm)
        if obj is not None and (n_objects is not None or foreground + obj.mask.sum() <= limit):
            add(obj)
    return objects


# --------------------------------------------------------------------------- textures


def _rbf_basis(n: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian bumps every ``spacing`` voxels, covering 3 spacings beyond both ends.

    Returns:
        ``(basis, derivative)``: float32 (n, K) values and d/dvoxel, scaled so that random
        standard-normal coefficients give a field of about unit variance.
    """
    k = int(np.ceil((n - 1) / spacing)) + 7
    d = np.arange(n)[:, None] - (np.arange(k)[None, :] - 3) * spacing
    basis = np.exp(-0.5 * (d / spacing) ** 2)
    norm = np.sqrt((basis**2).sum(axis=1).mean())
    return (basis / norm).astype(np.float32), (-d / spacing**2 * basis / norm).astype(np.float32)


def _separable(coeffs: np.ndarray, bz: np.ndarray, by: np.ndarray, bx: np.ndarray) -> np.ndarray:
    """Evaluate sum_ijk coeffs[i, j, k] bz[:, i] by[:, j] bx[:, k] as a float32 (Z, Y, X) array."""
    t = np.matmul(by[None], coeffs @ bx.T)  # (Kz, Y, X)
    out = bz @ t.reshape(t.shape[0], -1)
    return out.reshape(bz.shape[0], by.shape[0], bx.shape[0])


def _bases(shape: Sequence[int], spacing_nm: float, vs: np.ndarray):
    return [_rbf_basis(n, max(spacing_nm / v, 1.0)) for n, v in zip(shape, vs, strict=True)]


def smooth_noise(
    shape: Sequence[int],
    spacing_nm: float,
    voxel_size_nm: Sequence[float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Smooth Gaussian random field: random Gaussian bumps on a grid of ``spacing_nm``.

    Returns:
        float32 (Z, Y, X), mean about 0 and standard deviation about 1, correlation length about
        1.4 * spacing_nm (at least a voxel along each axis).
    """
    (bz, _), (by, _), (bx, _) = _bases(shape, spacing_nm, np.asarray(voxel_size_nm, float))
    coeffs = rng.standard_normal((bz.shape[1], by.shape[1], bx.shape[1]), dtype=np.float32)
    return _separable(coeffs, bz, by, bx)


def _shell_profile(
    distance_nm: np.ndarray, normal: Sequence[np.ndarray], sigma_nm: float, vs: np.ndarray
) -> np.ndarray:
    """Darkness of a thin sheet sampled on voxel centres, anti-aliased along its normal.

    The Gaussian profile is widened by the voxel's extent along the sheet normal (conserving its
    integral), so a membrane seen obliquely in 30 nm sections is a faint band, not a gap.

    Args:
        distance_nm: float32 signed distance to the sheet in nm, any shape.
        normal: three arrays broadcastable to ``distance_nm``: the unit normal (z, y, x).
        sigma_nm: profile standard deviation of the sheet in nm.
        vs: (3,) voxel size in nm.

    Returns:
        float32 of the broadcast shape, in [0, 1]; 1 on a sheet that is thin against the voxels.
    """
    width2 = np.float32(sigma_nm**2)
    for n, v in zip(normal, vs, strict=True):
        width2 = width2 + n * n * np.float32(v * v / 12.0)
    profile = np.exp(np.float32(-0.5) * distance_nm**2 / width2)
    profile *= np.float32(sigma_nm) / np.sqrt(width2)
    return profile.astype(np.float32, copy=False)


def membrane_profile(
    shape: Sequence[int], voxel_size_nm: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Cell membranes: thin curved sheets on the zero level set of smooth noise.

    Returns:
        float32 (Z, Y, X) in [0, 1], 1 at the centre of a membrane, 0 away from it.
    """
    vs = np.asarray(voxel_size_nm, dtype=float)
    (bz, dz), (by, dy), (bx, dx) = _bases(shape, _CELL_SCALE_NM, vs)
    coeffs = rng.standard_normal((bz.shape[1], by.shape[1], bx.shape[1]), dtype=np.float32)
    field = _separable(coeffs, bz, by, bx)
    grad = [
        _separable(coeffs, dz, by, bx) / np.float32(vs[0]),
        _separable(coeffs, bz, dy, bx) / np.float32(vs[1]),
        _separable(coeffs, bz, by, dx) / np.float32(vs[2]),
    ]
    norm = np.sqrt(grad[0] ** 2 + grad[1] ** 2 + grad[2] ** 2) + np.float32(1e-12)
    normal = [g / norm for g in grad]
    return _shell_profile(field / norm, normal, _MEMBRANE_SIGMA_NM, vs)


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
            ell = _Ellipsoid(center, np.full(3, radius + 2 * vs.max()), np.eye(3))
            box = _box(ell, vs, raw.shape)
            if min(_box_shape(box)) == 0 or occupied[box].any():
                continue
            d = _offsets_nm(box, center, vs)
            r = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + np.float32(1e-6)
            sheet = _shell_profile(r - radius, [c / r for c in d], 3.0, vs)
            inside = 1.0 / (1.0 + np.exp(np.clip((r - radius) / 3.0, -30, 30)))
            raw[box] += -0.28 * inside if dense else 0.06 * inside - 0.32 * sheet


def _paint_mitochondrion(
    raw: np.ndarray, obj: _Object, vs: np.ndarray, rng: np.random.Generator
) -> None:
    """Matrix grey level, some of the cytoplasm texture and cristae-like stripes inside the mask."""
    ell = obj.ellipsoid
    direction = ell.rotation[:, 0] + 0.4 * rng.standard_normal(3)  # cristae mostly transverse
    direction = (direction / np.linalg.norm(direction)).astype(np.float32)
    period, phase = rng.uniform(*_CRISTAE_PERIOD_NM), rng.uniform(0, 2 * np.pi)
    level = rng.uniform(*_MATRIX)
    d = _offsets_nm(obj.box, ell.center_nm, vs)
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
) -> tuple[np.ndarray, np.ndarray]:
    """An EM-like volume with mitochondria of known instance ids.

    Args:
        shape: (Z, Y, X) in voxels.
        seed: seed of ``np.random.default_rng``; the same arguments give identical arrays.
        n_objects: number of mitochondria, pair members included; None places objects until
            about 10 % of the voxels are foreground. Fewer are placed when the volume is full.
        voxel_size_nm: (z, y, x) voxel size. Object sizes are physical: short diameters of
            70-220 nm, lengths up to 660 nm; a volume much smaller than that holds few objects
            and can exceed 15 % foreground, since the border object and pairs are always placed.
        touching_pairs: number of pairs of objects that share a face (different ids).
        noise: standard deviation of the additive Gaussian noise as a fraction of 255.

    Returns:
        ``(raw, labels)``: raw uint8 (Z, Y, X), mid-grey cytoplasm and darker mitochondria;
        labels uint32 (Z, Y, X), 0 = background, ids 1..N consecutive, each id one 26-connected
        component. One object is cut by the volume border (when n_objects allows it).
    """
    if len(shape) != 3 or min(shape) < 1 or len(voxel_size_nm) != 3 or min(voxel_size_nm) <= 0:
        raise ValueError(f"need a 3D shape and positive voxel sizes: {shape}, {voxel_size_nm}")
    if (n_objects is not None and n_objects < 0) or touching_pairs < 0 or noise < 0:
        raise ValueError("n_objects, touching_pairs and noise must be >= 0")
    rng = np.random.default_rng(seed)
    vs = np.asarray(voxel_size_nm, dtype=float)
    labels = np.zeros(shape, dtype=np.uint32)
    objects = _place_objects(labels, vs, rng, n_objects, touching_pairs)
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
