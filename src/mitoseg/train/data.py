"""Datasets and the LightningDataModule: random training patches, validation tiles, and the sets
evaluated at test time (predicted by :class:`mitoseg.evaluate.testtime.TestEvaluation`).

Volumes live in zarr and are opened lazily inside each data-loader worker. Sources that are not
zarr yet (TIFF stacks, slice folders, HDF5) and the synthetic default are written to a cache folder
once, in ``prepare_data``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mitoseg import files, io
from mitoseg.datasets.volumes import FileVolumes, SyntheticVolumes, VolumePaths
from mitoseg.geometry import Box, overlap_stride, split_axis, tile_grid
from mitoseg.io.checks import check_patch_fits, has_foreground, read_box
from mitoseg.io.intensity import Normalization, RawIntensity, measure, mismatch
from mitoseg.train.augment import Augmenter
from mitoseg.train.sampling import EpochSampler, ResumableLoader
from mitoseg.train.sparse import IGNORE_LABEL, SparseTarget, keep_labelled, mark_unlabelled

__all__ = [  # the samplers stay importable here
    "EpochSampler",
    "EvalSet",
    "PatchDataset",
    "ResumableLoader",
    "TileDataset",
    "VolumeDataModule",
]

log = logging.getLogger(__name__)

TRAIN_ADVICE = (
    "Its scores will not tell how the model does on data like the training volume: check that "
    "it is the intended volume, or store it in the training volume's range"
)


class _ZarrDataset(Dataset):
    """Opens ``paths.raw`` and (when ``_with_labels``) ``paths.labels`` on first use, i.e. inside
    each data-loader worker; open arrays are never pickled. Raw values become float32 by
    ``normalization``; None chooses it from the raw volume's own dtype and range
    (:func:`mitoseg.io.intensity.measure`, a fixed subsample: the same in every worker)."""

    paths: VolumePaths
    normalization: Normalization | None = None
    _arrays: tuple[Any, Any] | None = None
    _unlabelled: Any = None

    def _with_labels(self) -> bool:
        return self.paths.labels is not None

    def _open(self) -> tuple[Any, Any]:
        if self._arrays is None:
            labels = self.paths.labels if self._with_labels() else None
            self._arrays = (
                io.open_volume(self.paths.raw),
                io.open_volume(labels) if labels is not None else None,
            )
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None, "_unlabelled": None}

    @property
    def _sparse(self) -> bool:
        return self.paths.labelled_slices is not None or self.paths.unlabelled is not None

    def _mark(self, labels: np.ndarray, box: Box) -> np.ndarray:
        """The labels of ``box`` (volume coordinates), int64 with -1 on unlabelled voxels
        (``labelled_slices``, ``unlabelled``); unchanged without sparse labels."""
        paths = self.paths
        if paths.labelled_slices is not None:
            labels = mark_unlabelled(labels, box.offset[0], paths.labelled_slices)
        if paths.unlabelled is not None:
            if self._unlabelled is None:
                self._unlabelled = io.open_volume(paths.unlabelled)
            labels = labels.astype(np.int64, copy=False)
            labels[read_box(self._unlabelled, box, paths.unlabelled) > 0] = IGNORE_LABEL
        return labels

    def _normalize(self, raw: np.ndarray, raw_array: Any) -> np.ndarray:
        if self.normalization is None:
            self.normalization = measure(raw_array, self.paths.raw).normalization
        return self.normalization(raw)

    @property
    def _labels_path(self) -> Path:
        assert self.paths.labels is not None
        return self.paths.labels


class PatchDataset(_ZarrDataset):
    """Random training patches from a region of a zarr volume.

    Sample ``i`` is drawn with ``np.random.default_rng([seed, i])``, independent of workers
    and processes. Items: ``raw`` float32 (1, Z, Y, X), normalised (about [0, 1]), and
    ``target`` float32 (C, Z, Y, X). With ``paths.labelled_slices`` every patch holds a labelled
    slice and the target is NaN on unlabelled voxels (:class:`mitoseg.train.sparse.SparseTarget`).
    """

    def __init__(
        self,
        paths: VolumePaths,
        region: Box,
        patch_shape: Sequence[int],
        target: Callable[[np.ndarray], np.ndarray],
        augment: Augmenter | None = None,
        seed: int = 0,
        length: int = 64,
        foreground_prob: float = 0.5,
        normalization: Normalization | None = None,
    ) -> None:
        self.paths, self.region = paths, region
        self.normalization = normalization
        self.patch_shape = tuple(int(p) for p in patch_shape)
        check_patch_fits(self.patch_shape, region, paths.raw)
        self.labelled = paths.labelled_slices
        if self._sparse and not isinstance(target, SparseTarget):
            target = SparseTarget(target)
        self.target, self.augment = target, augment
        self.seed, self.length, self.foreground_prob = seed, length, foreground_prob
        self._blocks: list[Box] | None = None

    def __len__(self) -> int:
        return self.length

    def _draw_box(self, rng: np.random.Generator, labels: Any) -> Box:
        region, patch = self.region, self.patch_shape
        if rng.random() < self.foreground_prob and self.foreground_blocks(labels):
            # A random foreground voxel of a random block that holds foreground, at a random
            # place inside the patch: every such patch shows foreground, at one block read.
            block = self._blocks[int(rng.integers(len(self._blocks)))]
            voxels = np.flatnonzero(self._read_labelled(labels, block))
            voxel = np.unravel_index(voxels[rng.integers(len(voxels))], block.shape)
            offset = [
                int(np.clip(o + v - rng.integers(0, p), ro, ro + rs - p))
                for o, v, p, ro, rs in zip(
                    block.offset, voxel, patch, region.offset, region.shape, strict=True
                )
            ]
        else:
            offset = [
                int(o + rng.integers(0, r - p + 1))
                for o, r, p in zip(region.offset, region.shape, patch, strict=True)
            ]
            if self.labelled is not None:
                offset[0] = self._draw_labelled_z(rng)
        return Box(tuple(offset), patch)  # type: ignore[arg-type]

    def _draw_labelled_z(self, rng: np.random.Generator) -> int:
        """A patch z offset in the region whose patch holds a random labelled slice."""
        assert self.labelled is not None
        z0, depth, pz = self.region.offset[0], self.region.shape[0], self.patch_shape[0]
        inside = [z for z in self.labelled if z0 <= z < z0 + depth]
        z = inside[int(rng.integers(len(inside)))]
        return int(rng.integers(max(z0, z - pz + 1), min(z, z0 + depth - pz) + 1))

    def _read_labelled(self, labels: Any, block: Box) -> np.ndarray:
        """The labels of ``block``, unlabelled slices zeroed (foreground is searched there)."""
        data = read_box(labels, block, self._labels_path)
        if self.labelled is None:
            return data
        return keep_labelled(data, block.offset[0], self.labelled)

    def foreground_blocks(self, labels: Any) -> list[Box]:
        """Chunk-sized blocks of the region holding foreground; found once, one block in memory."""
        if self._blocks is None:
            chunks = getattr(labels, "chunks", self.patch_shape)
            starts = [
                range(o, o + s, c)
                for o, s, c in zip(self.region.offset, self.region.shape, chunks, strict=True)
            ]
            stop = self.region.stop
            self._blocks = []
            for start in itertools.product(*starts):
                shape = tuple(min(c, e - b) for b, c, e in zip(start, chunks, stop, strict=True))
                block = Box(start, shape)  # type: ignore[arg-type]
                if np.any(self._read_labelled(labels, block)):
                    self._blocks.append(block)
        return self._blocks

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        raw_array, label_array = self._open()
        rng = np.random.default_rng([self.seed, int(index)])
        box = self._draw_box(rng, label_array)
        raw = self._normalize(read_box(raw_array, box, self.paths.raw), raw_array)
        labels = read_box(label_array, box, self._labels_path)
        labels = self._mark(labels, box)  # -1 on unlabelled voxels, moved by augmentation
        if self.augment is not None:
            raw, labels = self.augment(raw, labels, rng)
        return {
            "raw": torch.from_numpy(np.ascontiguousarray(raw))[None],
            "target": torch.from_numpy(np.ascontiguousarray(self.target(labels))),
        }


class TileDataset(_ZarrDataset):
    """Inference tiles over a region of a raw volume, in z-major order.

    Items: ``raw`` float32 (1, tz, ty, tx), normalised, padded by reflection where the region is
    smaller than the tile; ``box`` int64 (6,): the tile's offset and (clipped) shape in region
    coordinates; and, when labels are given, ``target`` float32 (C, tz, ty, tx) for validation,
    NaN on unlabelled voxels when ``paths.labelled_slices`` is set.
    """

    def __init__(
        self,
        paths: VolumePaths,
        tile_shape: Sequence[int],
        overlap: float = 0.5,
        region: Box | None = None,
        target: Callable[[np.ndarray], np.ndarray] | None = None,
        normalization: Normalization | None = None,
    ) -> None:
        self.paths, self.normalization = paths, normalization
        self.tile_shape = tuple(int(t) for t in tile_shape)
        self.region = region
        if target is not None and self._sparse and not isinstance(target, SparseTarget):
            target = SparseTarget(target)
        self.target = target
        shape = self.region.shape if region is not None else io.open_volume(paths.raw).shape
        self.shape = tuple(int(s) for s in shape)
        self.tiles = tile_grid(
            self.shape, self.tile_shape, overlap_stride(self.tile_shape, overlap)
        )

    def __len__(self) -> int:
        return len(self.tiles)

    def _with_labels(self) -> bool:
        return self.target is not None and self.paths.labels is not None

    def _read(self, array: Any, box: Box, path: Path) -> np.ndarray:
        if self.region is not None:
            box = box.shift(self.region.offset)
        data = read_box(array, box, path)
        if path == self.paths.labels:
            data = self._mark(data, box)
        pad = [(0, t - s) for t, s in zip(self.tile_shape, data.shape, strict=True)]
        if any(p[1] for p in pad):
            data = np.pad(data, pad, mode="reflect" if min(data.shape) > 1 else "edge")
        return data

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        raw_array, label_array = self._open()
        box = self.tiles[index]
        item = {
            "raw": torch.from_numpy(
                self._normalize(self._read(raw_array, box, self.paths.raw), raw_array)
            )[None],
            "box": torch.tensor(box.offset + box.shape, dtype=torch.int64),
        }
        if self.target is not None and label_array is not None:
            labels = self._read(label_array, box, self._labels_path)
            item["target"] = torch.from_numpy(self.target(labels))
        return item


@dataclass(frozen=True)
class EvalSet:
    """A volume (region) predicted at test time: ``val`` (held out of training) or ``test``,
    with its raw statistics and normalisation (None: chosen when predicted)."""

    name: str
    paths: VolumePaths
    region: Box
    raw_intensity: RawIntensity | None = None


class VolumeDataModule(pl.LightningDataModule):
    """Training patches and validation tiles from zarr-backed volumes; the sets evaluated at test
    time (``eval_sets``).

    Validation is either a separate volume (``val``, e.g. MitoEM's official slices 400-499) or,
    without one, the last ``val_fraction`` of the training volume along ``val_axis``, never sampled
    for training. The test volume is only used by ``test``; without labels it is predicted and
    decoded but not scored (e.g. MitoEM's hidden test labels).

    Each raw volume is normalised by its own dtype and range with the rule ``mitoseg-predict``
    uses (:mod:`mitoseg.io.intensity`), so e.g. uint8 training and 12-bit validation data reach
    the network alike; ``raw_intensity`` holds each volume's statistics and normalisation after
    ``setup``, and checkpoints record the training (and validation) volume's.

    Args:
        train: the training volume (:class:`FileVolumes` or :class:`SyntheticVolumes`).
        val: a separate validation volume with labels, or None to split ``train``.
        test: the test volume, or None.
        isotropic: whether voxels are (about) isotropic; False for e.g. 30 x 8 x 8 nm data. The
            configs derive the augmentation and the target's in-plane contours from it.
        target: labels -> target callable (the target config's transform).
        root: folder that relative paths of ``train`` and ``test`` are resolved against.
        cache_dir: where converted and synthetic volumes are written once; None: the user's
            cache folder (:func:`mitoseg.files.cache_dir`).
        patch_shape: training patch (z, y, x).
        samples_per_epoch: patches per training epoch (over all processes).
    """

    def __init__(
        self,
        train: FileVolumes | SyntheticVolumes,
        test: FileVolumes | SyntheticVolumes | None = None,
        val: FileVolumes | SyntheticVolumes | None = None,
        *,
        isotropic: bool = True,
        target: Callable[[np.ndarray], np.ndarray],
        root: str | None = None,
        cache_dir: str | Path | None = None,
        patch_shape: Sequence[int] = (32, 64, 64),
        batch_size: int = 2,
        num_workers: int = 0,
        samples_per_epoch: int = 64,
        val_fraction: float = 0.2,
        val_axis: int = 2,
        foreground_prob: float = 0.5,
        augment: Augmenter | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.train_volumes, self.test_volumes, self.target = train, test, target
        self.val_volumes, self.isotropic = val, isotropic
        self.root = Path(root) if root else None
        self.cache_dir = files.cache_dir() if cache_dir is None else Path(cache_dir)
        self.patch_shape = tuple(int(p) for p in patch_shape)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.samples_per_epoch, self.seed = samples_per_epoch, seed
        self.val_fraction, self.val_axis = val_fraction, val_axis
        self.foreground_prob, self.augment = foreground_prob, augment
        self.eval_sets: list[EvalSet] = []
        self.raw_intensity: dict[str, RawIntensity] = {}

    def prepare_data(self) -> None:
        for volumes in (self.train_volumes, self.val_volumes, self.test_volumes):
            if volumes is not None:
                volumes.prepare(self.cache_dir, self.root)

    def setup(self, stage: str | None = None) -> None:
        self.train_paths = self.train_volumes.prepare(self.cache_dir, self.root)
        if self.train_paths.labels is None:
            raise io.VolumeError(f"training volume {self.train_paths.raw} has no labels")
        self._setup_regions()
        self._setup_intensity()
        check_patch_fits(self.patch_shape, self.train_region, self.train_paths.raw)
        if not has_foreground(self.train_paths.labels, self.train_region):
            raise io.VolumeError(
                f"training labels {self.train_paths.labels} hold no foreground in the training "
                f"region {self.train_region}: there is nothing to learn"
            )
        self._check_sparse()

    def _check_sparse(self) -> None:
        """Refuse sparse labels that leave the training or validation region without a
        labelled slice, or training labelled slices without foreground; a target that cannot
        skip unlabelled voxels (:func:`mitoseg.train.sparse.channel_reach`)."""
        parts = [("training", self.train_paths, self.train_region)]
        parts.append(("validation", self.val_paths, self.val_region))
        for name, paths, region in parts:
            if paths.labelled_slices is None and paths.unlabelled is None:
                continue
            SparseTarget(self.target)  # refuses a target that cannot skip unlabelled voxels
            if paths.labelled_slices is None:
                continue
            z0, z1 = region.offset[0], region.stop[0]
            inside = [z for z in paths.labelled_slices if z0 <= z < z1]
            if not inside:
                raise io.VolumeError(
                    f"labelled_slices {list(paths.labelled_slices)} of {paths.labels}: none lies "
                    f"in the {name} region (z {z0}..{z1 - 1}); label slices there or split "
                    "validation off along y or x (data.val_axis=1 or 2)"
                )
            if name == "training" and not any(
                has_foreground(paths.labels, Box((z, *region.offset[1:]), (1, *region.shape[1:])))
                for z in inside
            ):
                raise io.VolumeError(
                    f"training labels {paths.labels} hold no foreground on the labelled slices "
                    f"{inside} of the training region {region}: there is nothing to learn"
                )

    def _setup_regions(self) -> None:
        shape = io.open_volume(self.train_paths.raw).shape
        if self.val_volumes is None:
            self.train_region, self.val_region = split_axis(
                Box.whole(shape), self.val_axis, self.val_fraction
            )
            self.val_paths = self.train_paths
        else:
            self.val_paths = self.val_volumes.prepare(self.cache_dir, self.root)
            if self.val_paths.labels is None:
                raise io.VolumeError(f"validation volume {self.val_paths.raw} has no labels")
            self.train_region = Box.whole(shape)
            self.val_region = Box.whole(io.open_volume(self.val_paths.raw).shape)
        self.eval_sets = [EvalSet("val", self.val_paths, self.val_region)]
        if self.test_volumes is not None:
            test_paths = self.test_volumes.prepare(self.cache_dir, self.root)
            test_shape = io.open_volume(test_paths.raw).shape
            self.eval_sets.append(EvalSet("test", test_paths, Box.whole(test_shape)))

    def _setup_intensity(self) -> None:
        """Statistics and normalisation of each raw volume (once per volume); warns, with the
        numbers, when the validation or test volume looks unlike the training volume."""
        if "train" not in self.raw_intensity:  # setup runs again for testing
            raw = self.train_paths.raw
            self.raw_intensity["train"] = measure(io.open_volume(raw), raw)
            log.info("training volume %s: %s", raw, self.raw_intensity["train"].describe())
        train = self.raw_intensity["train"]
        for i, eval_set in enumerate(self.eval_sets):
            raw = eval_set.paths.raw
            if raw == self.train_paths.raw:
                self.raw_intensity[eval_set.name] = train
            elif eval_set.name not in self.raw_intensity:
                found = measure(io.open_volume(raw), raw, reference=train)
                self.raw_intensity[eval_set.name] = found
                problem = mismatch(f"{eval_set.name} volume {raw}", found, train, TRAIN_ADVICE)
                if problem:
                    log.warning(problem)
                else:
                    log.info("%s volume %s: %s", eval_set.name, raw, found.describe())
            found = self.raw_intensity[eval_set.name]
            self.eval_sets[i] = dataclasses.replace(eval_set, raw_intensity=found)

    def intensity_record(self) -> dict[str, Any]:
        """What checkpoints record of the raw data trained on: ``{"train": ..., "val": ...}``
        (``val`` only for a separate validation volume), each
        :meth:`mitoseg.io.intensity.RawIntensity.to_dict`."""
        record = {"train": self.raw_intensity["train"].to_dict()}
        if self.val_paths.raw != self.train_paths.raw:
            record["val"] = self.raw_intensity["val"].to_dict()
        return record

    def _loader(
        self, dataset: Dataset, batch_size: int, cls: type[DataLoader] = DataLoader, **kwargs: Any
    ) -> DataLoader:
        return cls(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = PatchDataset(
            self.train_paths,
            self.train_region,
            self.patch_shape,
            self.target,
            self.augment,
            seed=self.seed,
            length=self.samples_per_epoch,
            foreground_prob=self.foreground_prob,
            normalization=self.raw_intensity["train"].normalization,
        )
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = EpochSampler(len(dataset), rank, world)
        return self._loader(dataset, self.batch_size, ResumableLoader, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        dataset = TileDataset(
            self.val_paths,
            self.patch_shape,
            0.0,
            region=self.val_region,
            target=self.target,
            normalization=self.raw_intensity["val"].normalization,
        )
        return self._loader(dataset, self.batch_size)
