"""The instance decoders: :class:`BCWatershed`, :class:`AffinityWatershed` and
:class:`ACWatershed` (frozen dataclasses of their parameters, see :mod:`mitoseg.decode.base`),
and the function forms ``bc_watershed``, ``affinity_watershed`` and ``ac_watershed``. Each is a
seeded watershed (:mod:`mitoseg.decode.watershed`) of its target's channels (numpy only)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mitoseg.decode.affinity import _nearest_neighbour_channels, affinity_inside, strong_edges
from mitoseg.decode.base import OutputKind
from mitoseg.decode.watershed import _check_settings, _decode, _Settings, check_probs
from mitoseg.train.targets import DEFAULT_OFFSETS, Offset, normalize_offsets


class _Decoder:
    """Checks shared by the decoder dataclasses (offsets: lists from YAML become tuples)."""

    kind: ClassVar[OutputKind] = OutputKind.INSTANCES
    # Seeds and masks come from affinity graphs (A, AC) rather than a foreground channel (BC).
    uses_affinities: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_settings(self._settings)

    @property
    def halo(self) -> None:
        """None: a flood can reach any distance; blockwise runs take the runner's halo."""
        return None

    @property
    def contour_cut(self) -> float | None:
        """Contour probability at or above which a voxel cannot seed; None without a contour."""
        return None

    @property
    def _settings(self) -> _Settings:
        """The shared watershed settings from this decoder's fields (A has no contour)."""
        fields = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        values = {name: getattr(self, name) for name in _Settings._fields if name in fields}
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
    min_seed_size: int = 32
    min_size: int = 1024
    connectivity: int = 26

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
    min_seed_size: int = 32
    min_size: int = 1024
    connectivity: int = 6
    offsets: tuple[Offset, ...] = DEFAULT_OFFSETS

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
    min_seed_size: int = 32
    min_size: int = 1024
    connectivity: int = 6
    offsets: tuple[Offset, ...] = DEFAULT_OFFSETS

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


def bc_watershed(
    probs: np.ndarray,
    seed_threshold: float = 0.85,
    contour_threshold: float = 0.6,
    mask_threshold: float = 0.8,
    min_seed_size: int = 32,
    min_size: int = 1024,
    connectivity: int = 26,
) -> np.ndarray:
    """The BC decoder: seeds where foreground F is high and contour C low; flood -F in F > mask.

    Args:
        probs: (2, Z, Y, X) uint8 in [0, 255] or float in [0, 1]; channel 0 F, channel 1 C.
        seed_threshold, contour_threshold, mask_threshold: probabilities in [0, 1].
        min_seed_size, min_size: smaller seeds / instances (voxels) are dropped.
        connectivity: 6, 18 or 26, for mask components, seeds and flooding.

    Returns:
        uint32 (Z, Y, X) instance ids 1..N, see ``seeded_watershed``. Peak memory beyond the
        input: about 5 bytes per voxel, plus ~40 per voxel of the largest multi-seed crop.
    """
    return BCWatershed(
        seed_threshold, contour_threshold, mask_threshold, min_seed_size, min_size, connectivity
    )(probs)


def affinity_watershed(
    affs: np.ndarray,
    seed_threshold: float = 0.9,
    mask_threshold: float = 0.5,
    min_seed_size: int = 32,
    min_size: int = 1024,
    connectivity: int = 6,
    offsets: tuple[Offset, ...] = DEFAULT_OFFSETS,
) -> np.ndarray:
    """The A decoder: seeds = components of the edges > seed_threshold, flood of
    ``affinity_inside(affs, offsets)`` within the components of the edges > mask_threshold.

    Args:
        affs: (len(offsets), Z, Y, X) uint8 in [0, 255] or float in [0, 1].
        Others as ``bc_watershed``; offsets as (dz, dy, dx) tuples or lists.

    Returns:
        uint32 (Z, Y, X) instance ids 1..N. Peak memory beyond the input: the inside map (1 byte
        per voxel for uint8, 4 for float), two edge bitfields (2 bytes) plus about 5, plus ~40
        per voxel of the largest
        multi-seed crop.
    """
    return AffinityWatershed(
        seed_threshold, mask_threshold, min_seed_size, min_size, connectivity, offsets
    )(affs)


def ac_watershed(
    probs: np.ndarray,
    seed_threshold: float = 0.85,
    contour_threshold: float = 0.6,
    mask_threshold: float = 0.5,
    min_seed_size: int = 32,
    min_size: int = 1024,
    connectivity: int = 6,
    offsets: tuple[Offset, ...] = DEFAULT_OFFSETS,
) -> np.ndarray:
    """The AC decoder: as ``affinity_watershed``, and seeds need contour < contour_threshold.

    Args:
        probs: (len(offsets) + 1, Z, Y, X) uint8 or float in [0, 1]: affinities, then contour.

    Returns:
        uint32 (Z, Y, X) instance ids 1..N; memory as ``affinity_watershed``.
    """
    return ACWatershed(
        seed_threshold,
        contour_threshold,
        mask_threshold,
        min_seed_size,
        min_size,
        connectivity,
        offsets,
    )(probs)
