"""The instance decoders: :class:`BCWatershed`, :class:`AffinityWatershed`, :class:`ACWatershed`
and :class:`BCDWatershed` (frozen dataclasses of their parameters, see :mod:`mitoseg.decode.base`),
and the function forms ``bc_watershed``, ``affinity_watershed`` and ``ac_watershed``. Each is a
seeded watershed (:mod:`mitoseg.decode.watershed`) of its target's channels (numpy only).

Sizes are physical: seeds under ``min_seed_size_nm3`` and instances under ``min_size_nm3`` (nm^3)
are dropped, turned into voxels with ``voxel_size_nm`` (z, y, x), which the runner
(:mod:`mitoseg.decode.run`) takes from the probabilities. The defaults
(:data:`~mitoseg.decode.base.MIN_SIZE_NM3` = 5e5 nm^3, a ball of 98 nm diameter, and
:data:`~mitoseg.decode.base.MIN_SEED_SIZE_NM3` = 6e4 nm^3) keep every Lucchi++ mitochondrion
(5 nm voxels: 4000 and 480 voxels) and are 261 and 32 voxels at MitoEM's 30 x 8 x 8 nm, where
the published setting is 1024 and 32. ``min_size`` / ``min_seed_size`` in voxels, when set,
win (old configs with ``min_size: 1024`` keep their meaning).

BC, AC and BCD join regions that a thin neck split (``merge_necks``, see
:func:`mitoseg.decode.watershed.merge_necks`): a contour band covers a neck's whole section, and
a neck thinner than ``seed_threshold`` times its object's largest radius leaves the distance
seeds apart, so one mitochondrion would otherwise give one seed per body.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mitoseg.decode.affinity import _nearest_neighbour_channels, affinity_inside, strong_edges
from mitoseg.decode.base import (
    MIN_SEED_SIZE_NM3,
    MIN_SIZE_NM3,
    OutputKind,
    VoxelSize,
    check_voxel_size,
    size_voxels,
    voxel_count,
)
from mitoseg.decode.watershed import _check_settings, _decode, _Settings, check_probs
from mitoseg.io.voxels import is_isotropic
from mitoseg.train.targets import DEFAULT_OFFSETS, Offset, normalize_offsets


class _Decoder:
    """Checks shared by the decoder dataclasses (offsets: lists from YAML become tuples)."""

    kind: ClassVar[OutputKind] = OutputKind.INSTANCES
    # Seeds and masks come from affinity graphs (A, AC) rather than a foreground channel (BC).
    uses_affinities: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "voxel_size_nm", check_voxel_size(self.voxel_size_nm))  # type: ignore[attr-defined]
        for name in ("min_seed_size", "min_size"):  # types and signs, whatever the voxel size
            voxel_count(getattr(self, f"{name}_nm3"), getattr(self, name), (1, 1, 1), name)
        _check_settings(self._settings_with(0, 0))

    @property
    def halo(self) -> None:
        """None: a flood can reach any distance; blockwise runs take the runner's halo."""
        return None

    @property
    def contour_cut(self) -> float | None:
        """Contour probability at or above which a voxel cannot seed; None without a contour."""
        return None

    @property
    def seed_channel(self) -> int:
        """The probability channel whose score seeds and floods (BC: the foreground)."""
        return 0

    @property
    def sizes(self) -> tuple[int, int]:
        """(min_seed_size, min_size) in voxels; ValueError without a voxel size or override."""
        return size_voxels(self)

    @property
    def _settings(self) -> _Settings:
        """The shared watershed settings from this decoder's fields (A has no contour)."""
        return self._settings_with(*self.sizes)

    def _settings_with(self, min_seed_size: int, min_size: int) -> _Settings:
        fields = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        values = {name: getattr(self, name) for name in _Settings._fields if name in fields}
        voxel = self.voxel_size_nm  # type: ignore[attr-defined]
        values.update(
            min_seed_size=min_seed_size,
            min_size=min_size,
            in_plane=voxel is not None and not is_isotropic(voxel),
        )
        return _Settings(**{"contour_threshold": 1.0, **values})


class _AffinityDecoder(_Decoder):
    """A decoder reading affinities along ``offsets`` (lists from YAML become tuples)."""

    uses_affinities: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "offsets", normalize_offsets(self.offsets))  # type: ignore[attr-defined]
        _nearest_neighbour_channels(self.offsets)  # type: ignore[attr-defined]
        super().__post_init__()


@dataclass(frozen=True)
class BCWatershed(_Decoder):
    """The BC decoder (``bc_watershed``); call with probs (2, Z, Y, X) -> uint32 (Z, Y, X)."""

    seed_threshold: float = 0.85
    contour_threshold: float = 0.6
    mask_threshold: float = 0.8
    min_seed_size: int | None = None  # voxels; None: from min_seed_size_nm3
    min_size: int | None = None  # voxels; None: from min_size_nm3
    connectivity: int = 26
    min_seed_size_nm3: float = MIN_SEED_SIZE_NM3
    min_size_nm3: float = MIN_SIZE_NM3
    voxel_size_nm: VoxelSize | None = None  # (z, y, x); set by the runner from the probabilities
    merge_necks: bool = True

    @property
    def n_channels(self) -> int:
        """Channels expected in probs: foreground, contour."""
        return 2

    @property
    def contour_cut(self) -> float:
        return self.contour_threshold

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        probs = check_probs(probs, 2, "(2, Z, Y, X) (foreground, contour)")
        return _decode(probs[0], probs[1], self._settings)


@dataclass(frozen=True)
class AffinityWatershed(_AffinityDecoder):
    """The A decoder (``affinity_watershed``); call with affs (len(offsets), Z, Y, X)."""

    seed_threshold: float = 0.9
    mask_threshold: float = 0.5
    min_seed_size: int | None = None
    min_size: int | None = None
    connectivity: int = 6
    offsets: tuple[Offset, ...] = DEFAULT_OFFSETS
    min_seed_size_nm3: float = MIN_SEED_SIZE_NM3
    min_size_nm3: float = MIN_SIZE_NM3
    voxel_size_nm: VoxelSize | None = None

    @property
    def n_channels(self) -> int:
        """Channels expected in affs: one per offset."""
        return len(self.offsets)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        edges = strong_edges(probs, self.seed_threshold, self.offsets)
        regions = strong_edges(probs, self.mask_threshold, self.offsets)
        inside = affinity_inside(probs, self.offsets)
        return _decode(inside, None, self._settings, edges, regions)


@dataclass(frozen=True)
class ACWatershed(_AffinityDecoder):
    """The AC decoder (``ac_watershed``); call with probs (len(offsets) + 1, Z, Y, X)."""

    seed_threshold: float = 0.85
    contour_threshold: float = 0.6
    mask_threshold: float = 0.5
    min_seed_size: int | None = None
    min_size: int | None = None
    connectivity: int = 6
    offsets: tuple[Offset, ...] = DEFAULT_OFFSETS
    min_seed_size_nm3: float = MIN_SEED_SIZE_NM3
    min_size_nm3: float = MIN_SIZE_NM3
    voxel_size_nm: VoxelSize | None = None
    merge_necks: bool = True

    @property
    def n_channels(self) -> int:
        """Channels expected in probs: one per offset, then the contour."""
        return len(self.offsets) + 1

    @property
    def contour_cut(self) -> float:
        return self.contour_threshold

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        layout = f"({self.n_channels}, Z, Y, X) (affinities, contour)"
        probs = check_probs(probs, self.n_channels, layout)
        affs = probs[:-1]
        edges = strong_edges(affs, self.seed_threshold, self.offsets)
        regions = strong_edges(affs, self.mask_threshold, self.offsets)
        inside = affinity_inside(affs, self.offsets)
        return _decode(inside, probs[-1], self._settings, edges, regions)


@dataclass(frozen=True)
class BCDWatershed(_Decoder):
    """The BCD decoder: seeds from the normalised distance D, flood of -D within the foreground.

    Call with probs (3, Z, Y, X) uint8 (p x 255) or float in [0, 1]: foreground F, contour C,
    distance D (``mitoseg.train.targets.BinaryContourDistance``). Returns uint32 (Z, Y, X)
    instance ids 1..N, as ``seeded_watershed``:

    - mask: F > mask_threshold; each of its components is decoded alone;
    - seeds: components of (D > seed_threshold) & (C < contour_threshold) in the mask, those
      under the seed size floor dropped; ``contour_threshold=None`` leaves C out of the seeds;
    - flood: seeded watershed of -D within the mask; instances under the size floor dropped.

    D is 1 at each object's innermost voxels and 0 on the voxels touching another object, so a
    seed threshold below the ratio of a neck's radius to its object's largest radius keeps a
    necked object whole, while touching objects stay apart at any threshold (see
    ``boundary_distance``). The default 0.05 gives perfect targets of every shape family of
    :mod:`mitoseg.datasets.shape_families` back (necks down to 0.08 of the largest radius); on
    predictions a higher threshold is safer where contacts are blurred, and the validation sweep
    of ``mitoseg-train`` chooses it. A thinner neck splits the seeds, and ``merge_necks`` joins
    the regions again (as for BC): two Lucchi++ training mitochondria have necks of 2-6 voxels
    in section, under 0.05 of their largest radius.

    Attributes:
        seed_threshold: normalised distance in [0, 1] a seed voxel must exceed.
        contour_threshold: contour probability a seed voxel must stay under, or None.
        mask_threshold: foreground probability of the mask.
        connectivity: 6, 18 or 26, for mask components, seeds and flooding.
        min_seed_size_nm3, min_size_nm3, min_seed_size, min_size, voxel_size_nm: the size
            floors in nm^3 or voxels, see :func:`mitoseg.decode.base.size_voxels`.
        merge_necks: join flooded regions split only by a neck
            (:func:`mitoseg.decode.watershed.merge_necks`).
    """

    seed_threshold: float = 0.05
    contour_threshold: float | None = None
    mask_threshold: float = 0.5
    min_seed_size: int | None = None  # voxels; None: from min_seed_size_nm3
    min_size: int | None = None  # voxels; None: from min_size_nm3
    connectivity: int = 26
    min_seed_size_nm3: float = MIN_SEED_SIZE_NM3
    min_size_nm3: float = MIN_SIZE_NM3
    voxel_size_nm: VoxelSize | None = None  # (z, y, x); set by the runner from the probabilities
    merge_necks: bool = True

    @property
    def n_channels(self) -> int:
        """Channels expected in probs: foreground, contour, distance."""
        return 3

    @property
    def contour_cut(self) -> float | None:
        return self.contour_threshold

    @property
    def seed_channel(self) -> int:
        """The distance."""
        return 2

    def _settings_with(self, min_seed_size: int, min_size: int) -> _Settings:
        settings = super()._settings_with(min_seed_size, min_size)
        cut = 1.0 if self.contour_threshold is None else self.contour_threshold
        return settings._replace(contour_threshold=cut)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        probs = check_probs(probs, 3, "(3, Z, Y, X) (foreground, contour, distance)")
        contour = None if self.contour_threshold is None else probs[1]
        return _decode(probs[0], contour, self._settings, distance=probs[2])


def bc_watershed(probs: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
    """The BC decoder: seeds where foreground F is high and contour C low; flood -F in F > mask.

    Args:
        probs: (2, Z, Y, X) uint8 in [0, 255] or float in [0, 1]; channel 0 F, channel 1 C.
        args, kwargs: the fields of :class:`BCWatershed` (seed_threshold, contour_threshold,
            mask_threshold: probabilities; min_seed_size, min_size: voxels, or None to take
            min_seed_size_nm3 / min_size_nm3 with voxel_size_nm; connectivity 6, 18 or 26;
            merge_necks).

    Returns:
        uint32 (Z, Y, X) instance ids 1..N, see ``seeded_watershed``. Peak memory beyond the
        input: about 5 bytes per voxel, plus ~40 per voxel of the largest multi-seed crop.
    """
    return BCWatershed(*args, **kwargs)(probs)  # type: ignore[arg-type]


def affinity_watershed(affs: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
    """The A decoder: seeds = components of the edges > seed_threshold, flood of
    ``affinity_inside(affs, offsets)`` within the components of the edges > mask_threshold
    (a voxel with at least one such edge is foreground).

    Args:
        affs: (len(offsets), Z, Y, X) uint8 in [0, 255] or float in [0, 1].
        args, kwargs: the fields of :class:`AffinityWatershed`; offsets as (dz, dy, dx).

    Returns:
        uint32 (Z, Y, X) instance ids 1..N. Peak memory beyond the input: the inside map (1 byte
        per voxel for uint8, 4 for float), two edge bitfields (2 bytes) plus about 5, plus ~40
        per voxel of the largest multi-seed crop.
    """
    return AffinityWatershed(*args, **kwargs)(affs)  # type: ignore[arg-type]


def ac_watershed(probs: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
    """The AC decoder: as ``affinity_watershed``, and seeds need contour < contour_threshold.

    Args:
        probs: (len(offsets) + 1, Z, Y, X) uint8 or float in [0, 1]: affinities, then contour.
        args, kwargs: the fields of :class:`ACWatershed`.

    Returns:
        uint32 (Z, Y, X) instance ids 1..N; memory as ``affinity_watershed``.
    """
    return ACWatershed(*args, **kwargs)(probs)  # type: ignore[arg-type]
