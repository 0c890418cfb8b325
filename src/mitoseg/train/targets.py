"""Labels -> training targets (numpy only).

A target is a callable applied per sample: ``target(labels)`` turns instance ids (integer
(Z, Y, X), 0 = background) into a float32 (C, Z, Y, X) array, one channel per name in its
``channels`` attribute, in that order.

Values are 0 or 1 where the target is defined and NaN where it is not: an affinity whose edge
leaves the patch cannot be known from the patch, so it holds NaN and the losses ignore it.

Targets here:
    ``Semantic``       ("foreground",)
    ``Affinity``       one affinity channel per offset
    ``BinaryContour``  ("foreground", "contour")
    ``AffinityContour`` the affinity channels, then "contour"
    ``BinaryContourDistance`` ("foreground", "contour", "distance"), the BCD target

Values are 0 or 1 but for BCD's distance, which lies in [0, 1] (see ``boundary_distance``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import fastremap
import numpy as np
from scipy import ndimage

from mitoseg.io.voxels import check_voxel_size

Offset = tuple[int, int, int]

DEFAULT_OFFSETS: tuple[Offset, ...] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))
_UNIT_NAMES: dict[Offset, str] = dict(
    zip(DEFAULT_OFFSETS, ("aff_z", "aff_y", "aff_x"), strict=True)
)


class Semantic:
    """Foreground mask: 1 where labels are non-zero.

    Call with labels: integer (Z, Y, X), 0 = background. Returns float32 (1, Z, Y, X) in {0, 1}.
    """

    channels: tuple[str, ...] = ("foreground",)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        if labels.ndim != 3:
            raise ValueError(f"labels must be (Z, Y, X), got shape {labels.shape}")
        return (labels > 0).astype(np.float32)[None]


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _validate_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (Z, Y, X), got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"labels must hold integer ids, got dtype {labels.dtype}")
    return labels


def normalize_offsets(offsets: Sequence[Sequence[int]]) -> tuple[Offset, ...]:
    """Check affinity offsets and return them as a tuple of int 3-tuples.

    Args:
        offsets: non-empty sequence of distinct (dz, dy, dx) integer offsets, none all zero; lists
            (e.g. from YAML) are accepted.

    Returns:
        The offsets as ``tuple[tuple[int, int, int], ...]``, order kept.

    Raises:
        ValueError: when offsets is empty, an offset is not 3 integers, is all zero or repeats.
    """
    if isinstance(offsets, (str, bytes)) or not isinstance(offsets, Sequence) or not offsets:
        raise ValueError(f"offsets must be a non-empty sequence of (dz, dy, dx), got {offsets!r}")
    result: list[Offset] = []
    for offset in offsets:
        if (
            isinstance(offset, (str, bytes))
            or not isinstance(offset, Sequence)
            or len(offset) != 3
            or not all(_is_int(v) for v in offset)
        ):
            raise ValueError(f"each offset must be 3 integers (dz, dy, dx), got {offset!r}")
        dz, dy, dx = (int(v) for v in offset)
        if (dz, dy, dx) == (0, 0, 0):
            raise ValueError("offsets must not contain (0, 0, 0)")
        if (dz, dy, dx) in result:
            raise ValueError(f"offsets must be distinct, {(dz, dy, dx)} repeats")
        result.append((dz, dy, dx))
    return tuple(result)


def affinity_channel_name(offset: Offset) -> str:
    """Channel name of one affinity offset.

    The three unit offsets (-1, 0, 0), (0, -1, 0), (0, 0, -1) are "aff_z", "aff_y", "aff_x";
    any other offset (dz, dy, dx) is f"aff_{dz}_{dy}_{dx}" with a minus sign written "m",
    e.g. (0, -3, 9) -> "aff_0_m3_9".
    """
    if offset in _UNIT_NAMES:
        return _UNIT_NAMES[offset]
    return "aff_" + "_".join(str(v).replace("-", "m") for v in offset)


def _overlap(size: int, step: int) -> tuple[slice, slice]:
    """Slices of voxels p, and of their neighbours p + step, both inside an axis of length size."""
    if step >= 0:
        return slice(0, max(size - step, 0)), slice(step, size)
    return slice(min(-step, size), size), slice(0, max(size + step, 0))


def affinities(labels: np.ndarray, offsets: Sequence[Sequence[int]]) -> np.ndarray:
    """Affinity of each voxel to its neighbour at each offset.

    Args:
        labels: integer (Z, Y, X) instance ids, 0 = background.
        offsets: (dz, dy, dx) integer offsets of any sign and length, see ``normalize_offsets``.

    Returns:
        float32 (len(offsets), Z, Y, X); channel i belongs to offsets[i]. At voxel p it is 1 where
        labels[p] != 0 and labels[p] == labels[p + d], 0 where not, and NaN where p + d lies
        outside the array (the edge leaves the patch, so it is unknown).

    Raises:
        ValueError: for labels that are not integer (Z, Y, X) or for bad offsets.
    """
    labels = _validate_labels(labels)
    offsets = normalize_offsets(offsets)
    out = np.full((len(offsets), *labels.shape), np.nan, dtype=np.float32)
    for channel, offset in zip(out, offsets, strict=True):
        pairs = [_overlap(size, step) for size, step in zip(labels.shape, offset, strict=True)]
        here = labels[tuple(p for p, _ in pairs)]
        there = labels[tuple(q for _, q in pairs)]
        channel[tuple(p for p, _ in pairs)] = (here != 0) & (here == there)
    return out


def _validate_width(width: object) -> int:
    if not _is_int(width) or int(width) < 2 or int(width) % 2:  # type: ignore[call-overload]
        raise ValueError(f"width must be an even integer >= 2, got {width!r}")
    return int(width)  # type: ignore[call-overload]


def instance_contour(labels: np.ndarray, width: int = 4, in_plane: bool = False) -> np.ndarray:
    """Band about ``width`` voxels wide on every border between two different labels.

    Voxel p is contour when some voxel q with Chebyshev distance <= r = width // 2 from p has
    labels[q] != labels[p]. So the band straddles the border, r voxels on each side: it covers
    object voxels and the background voxels next to an object, and both sides of a face where two
    objects touch. Voxels near the array border compare only to voxels inside the array.

    With ``in_plane`` (anisotropic data) the band is computed per slice, and in addition a voxel
    whose z-neighbour (one slice up or down) holds a *different object* is contour: without it,
    two objects stacked in z would get no border at all and their seeds would merge.

    Args:
        labels: integer (Z, Y, X) instance ids, 0 = background.
        width: even integer >= 2, the band width in voxels.
        in_plane: compare only within each z-slice (the y-x plane), for anisotropic data;
            otherwise compare in 3D.

    Returns:
        bool (Z, Y, X), True on the contour band.

    Raises:
        ValueError: for labels that are not integer (Z, Y, X) or a bad width.
    """
    labels = _validate_labels(labels)
    r = _validate_width(width) // 2
    size = (1 if in_plane else 2 * r + 1, 2 * r + 1, 2 * r + 1)
    # A box holds a label other than labels[p] exactly when its max and min differ; "nearest"
    # padding only repeats values already inside the array, so border voxels see nothing else.
    high = ndimage.maximum_filter(labels, size=size, mode="nearest")
    low = ndimage.minimum_filter(labels, size=size, mode="nearest")
    band = high != low
    if in_plane and labels.shape[0] > 1:
        below, above = labels[:-1], labels[1:]
        stacked = (below != above) & (below != 0) & (above != 0)
        band[:-1] |= stacked
        band[1:] |= stacked
    return band


@dataclass(frozen=True)
class Affinity:
    """Affinity target: one channel per offset, see ``affinities``.

    Call with labels: integer (Z, Y, X), 0 = background. Returns float32 (len(offsets), Z, Y, X),
    channel i for offsets[i], values in {0, 1} or NaN where the edge leaves the patch.

    Attributes:
        offsets: (dz, dy, dx) integer offsets; lists are normalised to tuples.
    """

    offsets: tuple[Offset, ...] = DEFAULT_OFFSETS

    def __post_init__(self) -> None:
        object.__setattr__(self, "offsets", normalize_offsets(self.offsets))

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel names in order, see ``affinity_channel_name``."""
        return tuple(affinity_channel_name(offset) for offset in self.offsets)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        return affinities(labels, self.offsets)


@dataclass(frozen=True)
class BinaryContour:
    """Foreground and instance contour (the BC target).

    Call with labels: integer (Z, Y, X), 0 = background. Returns float32 (2, Z, Y, X) in {0, 1};
    channel 0 foreground (labels > 0), channel 1 contour (``instance_contour``).

    Attributes:
        width: contour band width in voxels, even >= 2.
        in_plane: contour per z-slice (anisotropic data) instead of in 3D.
    """

    width: int = 4
    in_plane: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", _validate_width(self.width))

    @property
    def channels(self) -> tuple[str, ...]:
        """("foreground", "contour")."""
        return ("foreground", "contour")

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        labels = _validate_labels(labels)
        contour = instance_contour(labels, self.width, self.in_plane)
        return np.stack([labels > 0, contour]).astype(np.float32)


@dataclass(frozen=True)
class AffinityContour:
    """Affinities followed by the instance contour (the AC target).

    Call with labels: integer (Z, Y, X), 0 = background. Returns float32
    (len(offsets) + 1, Z, Y, X): channels 0 .. len(offsets) - 1 as ``Affinity`` (NaN where the
    edge leaves the patch), the last channel ``instance_contour`` in {0, 1}.

    Attributes:
        offsets: (dz, dy, dx) integer offsets; lists are normalised to tuples.
        width: contour band width in voxels, even >= 2.
        in_plane: contour per z-slice (anisotropic data) instead of in 3D.
    """

    offsets: tuple[Offset, ...] = DEFAULT_OFFSETS
    width: int = 4
    in_plane: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "offsets", normalize_offsets(self.offsets))
        object.__setattr__(self, "width", _validate_width(self.width))

    @property
    def channels(self) -> tuple[str, ...]:
        """The affinity channel names, then "contour"."""
        return (*(affinity_channel_name(offset) for offset in self.offsets), "contour")

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        labels = _validate_labels(labels)
        out = np.empty((len(self.offsets) + 1, *labels.shape), dtype=np.float32)
        out[:-1] = affinities(labels, self.offsets)
        out[-1] = instance_contour(labels, self.width, self.in_plane)
        return out


def touching_others(labels: np.ndarray) -> np.ndarray:
    """Object voxels with a 26-neighbour (Chebyshev distance 1) of another object.

    Args:
        labels: integer (Z, Y, X) instance ids, 0 = background.

    Returns:
        bool (Z, Y, X), True on object voxels that touch a different non-zero id; background
        neighbours do not count, nor do voxels beyond the array border.
    """
    labels = _validate_labels(labels)
    if labels.dtype == np.bool_:
        labels = labels.view(np.uint8)
    high = ndimage.maximum_filter(labels, size=3, mode="nearest")
    top = np.iinfo(labels.dtype).max
    low = ndimage.minimum_filter(np.where(labels == 0, top, labels), size=3, mode="nearest")
    return (labels != 0) & ((high != labels) | (low != labels))


def boundary_distance(
    labels: np.ndarray, voxel_size_nm: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """Distance of each object voxel to its instance's boundary, normalised per instance.

    For a voxel p of instance i: the Euclidean distance, in physical units (``voxel_size_nm``),
    from p to the nearest voxel that is not of instance i or that touches another object
    (``touching_others``), divided by the largest such distance in instance i. So the value is 0
    on background and on voxels next to another object, in (0, 1] elsewhere in objects, and 1 at
    each instance's innermost voxels, whatever its size. Touching objects get a layer of zeros on
    each side of their shared face, so seeds "distance > t" (t >= 0) never join across it, even
    where anisotropic voxels put the next section 30 nm away while the in-plane boundary voxels
    are 8 nm from the background.

    The array border is no boundary (an object may go on beyond it): only voxels inside the array
    count, and an instance with none of them in reach is 1 everywhere. On a training patch the
    normalising maximum is that of the instance's part inside the patch.

    Args:
        labels: integer (Z, Y, X) instance ids, 0 = background.
        voxel_size_nm: (z, y, x) voxel size; only its ratios matter.

    Returns:
        float32 (Z, Y, X) in [0, 1].

    Raises:
        ValueError: for labels that are not integer (Z, Y, X) or a bad voxel size.
    """
    labels = _validate_labels(labels)
    sampling = check_voxel_size(voxel_size_nm)
    out = np.zeros(labels.shape, dtype=np.float32)
    if not labels.any():
        return out
    compact, _ = fastremap.renumber(labels.view(np.uint8) if labels.dtype == np.bool_ else labels)
    touching = touching_others(compact)
    for i, box in enumerate(ndimage.find_objects(compact), start=1):
        if box is None:
            continue
        # Grown by one voxel, the crop's outer layer is outside the instance, so the nearest
        # boundary voxel of every voxel of it lies in the crop (or beyond the array).
        grown = tuple(
            slice(max(s.start - 1, 0), min(s.stop + 1, n))
            for s, n in zip(box, labels.shape, strict=True)
        )
        inside = (compact[grown] == i) & ~touching[grown]
        if not inside.any():
            continue
        if inside.all():
            distance = np.ones(inside.shape)
        else:
            distance = ndimage.distance_transform_edt(inside, sampling=sampling)
        values = distance[inside]
        out[grown][inside] = values / values.max()
    return out


@dataclass(frozen=True)
class BinaryContourDistance:
    """Foreground, instance contour and normalised boundary distance (the BCD target).

    Call with labels: integer (Z, Y, X), 0 = background. Returns float32 (3, Z, Y, X): channel 0
    foreground (labels > 0) in {0, 1}, channel 1 contour (``instance_contour``) in {0, 1},
    channel 2 distance (``boundary_distance``) in [0, 1].

    Attributes:
        width: contour band width in voxels, even >= 2.
        in_plane: contour per z-slice (anisotropic data) instead of in 3D.
        voxel_size_nm: (z, y, x) voxel size of the labels, so that the distance is physical on
            anisotropic voxels; lists (e.g. from YAML) are accepted.
    """

    width: int = 4
    in_plane: bool = False
    voxel_size_nm: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", _validate_width(self.width))
        object.__setattr__(self, "voxel_size_nm", check_voxel_size(self.voxel_size_nm))

    @property
    def channels(self) -> tuple[str, ...]:
        """("foreground", "contour", "distance")."""
        return ("foreground", "contour", "distance")

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        labels = _validate_labels(labels)
        out = np.empty((3, *labels.shape), dtype=np.float32)
        out[0] = labels > 0
        out[1] = instance_contour(labels, self.width, self.in_plane)
        out[2] = boundary_distance(labels, self.voxel_size_nm)
        return out
