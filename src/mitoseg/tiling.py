"""One block's probabilities from its tiles, blended on the model's device (torch).

A block (``write``) is computed from every tile of the volume's tile grid that covers one of its
voxels, in grid order (:func:`mitoseg.geometry.tiles_touching`); the raw data read for it is
those tiles' bounding box (``read_roi``). Sums are kept for the block's own voxels only, so a
blockwise run adds, for every voxel, the same weighted terms in the same order as a
whole-volume run: there are no seams. Memory: the raw ``read_roi`` plus (C + 1) x 4 bytes per
voxel of the block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mitoseg.geometry import Box


def raw_to_float(raw: torch.Tensor) -> torch.Tensor:
    """Integer raw data -> float32 in [0, 1] by its dtype's range (as ``data.to_float``)."""
    if raw.dtype == torch.uint8:
        return raw.float() / 255.0
    return raw.float()


def to_storage(probs: torch.Tensor, dtype: str) -> torch.Tensor:
    """Float probabilities in [0, 1] -> the output dtype (uint8 means round(255 p)), on their
    device, as ``stitch.to_storage`` does in numpy."""
    if dtype == "uint8":
        return torch.round(probs.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return probs.to(getattr(torch, dtype))


def boxes_from_batch(batch_boxes: torch.Tensor) -> list[Box]:
    """int64 (N, 6) offsets and shapes -> list of :class:`Box`."""
    return [Box(tuple(b[:3]), tuple(b[3:])) for b in batch_boxes.tolist()]  # type: ignore[arg-type]


def _overlap(tile: Box, write: Box) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of the part of ``tile`` inside ``write``: (in tile coordinates, in write's)."""
    lo = [max(t, w) for t, w in zip(tile.offset, write.offset, strict=True)]
    hi = [min(t, w) for t, w in zip(tile.stop, write.stop, strict=True)]
    in_tile = tuple(slice(a - t, b - t) for a, b, t in zip(lo, hi, tile.offset, strict=True))
    in_write = tuple(slice(a - w, b - w) for a, b, w in zip(lo, hi, write.offset, strict=True))
    return in_tile, in_write


class WeightSums:
    """The last block's per-voxel sum of tile weights, reused by the next block whose tiles lie
    the same way around it (all inner blocks of a regular grid): a third less blending work.
    Computed by the same additions in the same order, so results do not change.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._sums: torch.Tensor | None = None

    @staticmethod
    def key(tiles: Sequence[Box], write: Box, weight: torch.Tensor) -> tuple:
        layout = tuple((b.shift([-o for o in write.offset]), b.shape) for b in tiles)
        return (write.shape, tuple(weight.shape), weight.device, layout)

    def get(self, key: tuple) -> torch.Tensor | None:
        return self._sums if key == self._key else None

    def put(self, key: tuple, sums: torch.Tensor) -> None:
        self._key, self._sums = key, sums


def _weight_sums(tiles: Sequence[Box], write: Box, weight: torch.Tensor) -> torch.Tensor:
    sums = torch.zeros(write.shape, dtype=torch.float32, device=weight.device)
    for box in tiles:
        in_tile, in_write = _overlap(box, write)
        sums[in_write].add_(weight[in_tile])
    if not bool((sums > 0).all()):
        raise ValueError(f"block {write} is not covered by its tiles")
    return sums


def predict_block(
    predict: Callable[[torch.Tensor], torch.Tensor],
    raw: torch.Tensor,
    tiles: Sequence[Box],
    write: Box,
    weight: torch.Tensor,
    batch_size: int = 1,
    weight_sums: WeightSums | None = None,
) -> torch.Tensor:
    """Blend the tile predictions covering ``write``.

    Args:
        predict: float32 (N, 1, tz, ty, tx) -> probabilities float32 (N, C, tz, ty, tx).
        raw: (Zr, Yr, Xr) raw of the read region (uint8, or float already in [0, 1]), at least
            one tile large along every axis (padded where the volume is smaller than a tile).
        tiles: tile boxes in read-region coordinates, in grid order; a box smaller than the
            tile (a volume smaller than the tile) uses the tile's leading part.
        write: the block in read-region coordinates.
        weight: float32 (tz, ty, tx) blend weight, on ``raw``'s device.
        batch_size: tiles per call of ``predict``.
        weight_sums: a cache shared by the blocks of one run.

    Returns:
        float32 (C, *write.shape) probabilities in [0, 1].

    Raises:
        ValueError: a voxel of ``write`` is covered by no tile.
    """
    if not tiles:
        raise ValueError(f"block {write} is not covered by its tiles")
    key = WeightSums.key(tiles, write, weight)
    sums = weight_sums.get(key) if weight_sums is not None else None
    if sums is None:
        sums = _weight_sums(tiles, write, weight)
        if weight_sums is not None:
            weight_sums.put(key, sums)
    tz, ty, tx = weight.shape
    total: torch.Tensor | None = None
    for start in range(0, len(tiles), max(1, batch_size)):
        batch = tiles[start : start + batch_size]
        x = torch.stack([raw[b.offset[0] : b.offset[0] + tz, b.offset[1] : b.offset[1] + ty,
                             b.offset[2] : b.offset[2] + tx] for b in batch])  # fmt: skip
        probs = predict(raw_to_float(x)[:, None])
        if total is None:
            total = torch.zeros(
                (probs.shape[1], *write.shape), dtype=torch.float32, device=raw.device
            )
        for value, box in zip(probs, batch, strict=True):
            in_tile, in_write = _overlap(box, write)
            total[(slice(None), *in_write)].addcmul_(
                value[(slice(None), *in_tile)].float(), weight[in_tile]
            )
    assert total is not None
    return total.div_(sums)
