"""Where the volumes of a run come from: files in any format ``mitoseg-convert`` reads (converted
once into a cache folder) or the package's synthetic generator (numpy only).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mitoseg import io
from mitoseg.datasets.synthetic import make_volume
from mitoseg.geometry import Box
from mitoseg.io.checks import check_labels, check_raw, has_foreground
from mitoseg.io.label_values import LabelSelection
from mitoseg.io.sources import is_zarr, read_voxel_size
from mitoseg.io.voxels import warn_if_not_stated

log = logging.getLogger(__name__)

MAX_LABEL = 2**64 - 1  # above every label value


@dataclass(frozen=True)
class VolumePaths:
    """Zarr arrays of one volume: raw (Z, Y, X) and optional labels (Z, Y, X); with
    ``labelled_slices`` only those z slices of the labels are labelled, and ``unlabelled`` (a
    uint8 (Z, Y, X) mask, 1 = unlabelled) marks unlabelled voxels (see
    :mod:`mitoseg.train.sparse`); None: all labelled."""

    raw: Path
    labels: Path | None = None
    labelled_slices: tuple[int, ...] | None = None
    unlabelled: Path | None = None


class FileVolumes:
    """A raw volume and optional labels on disk, in any format ``mitoseg-convert`` reads.

    Relative paths are resolved against the data module's ``root``. ``raw_z_range`` /
    ``labels_z_range`` ([start, stop) slices) select part of a source, e.g. slices 0-399 of the
    MitoEM ``im`` folder for training and 400-499 for validation. Labels stored as class codes
    take ``label_values`` (``191``, ``"191,200-210"``), anti-aliased masks ``label_threshold``
    (values above it are foreground): the labels are then that mask (see
    :func:`mitoseg.io.convert`); without them such labels are refused. ``voxel_size_nm`` (z, y, x)
    overrides the voxel size the raw file states; None keeps the file's (see
    :func:`mitoseg.io.convert`), which may be none. ``label_components``: the labels are a mask
    (e.g. Lucchi++) whose 3D connected components (26-connected) are the instances, numbered
    once into ``cache_dir``; instance targets and instance scores need ids, not one mask value.
    ``labelled_slices``: the z indices (of the volume as read, after ``labels_z_range``) of the
    only labelled slices, e.g. ``[0, 7, 14]``; the other slices are unlabelled (neither
    foreground nor background: training and validation skip them). None: every slice labelled.
    ``ignore_label``: the label value that marks unlabelled voxels in the label file (e.g. 255 in
    an 8-bit label image with 0 background and 1 mitochondria); its mask is converted once into
    ``cache_dir``. Without ``label_values`` / ``label_threshold`` the other non-zero values are
    the foreground mask (``label_components`` numbers its objects).
    """

    def __init__(
        self,
        raw: str,
        labels: str | None = None,
        raw_dataset: str | None = None,
        labels_dataset: str | None = None,
        voxel_size_nm: Sequence[float] | None = None,
        raw_z_range: Sequence[int] | None = None,
        labels_z_range: Sequence[int] | None = None,
        label_values: int | str | Sequence[int | str] | None = None,
        label_threshold: float | None = None,
        label_components: bool = False,
        labelled_slices: Sequence[int] | None = None,
        ignore_label: int | None = None,
    ) -> None:
        self.raw, self.labels = raw, labels
        where = f"labelled_slices of {labels}"
        self.labelled_slices = check_labelled_slices(
            None if labelled_slices is None else list(labelled_slices), where=where
        )
        self.label_components = bool(label_components)
        self.raw_dataset, self.labels_dataset = raw_dataset, labels_dataset
        self.voxel_size_nm = _voxel_size(voxel_size_nm)
        self.raw_z_range = _z_range(raw_z_range, "raw_z_range")
        self.labels_z_range = _z_range(labels_z_range, "labels_z_range")
        self._checked: set[Path] = set()  # prepare runs in prepare_data and again in setup
        # Class codes / anti-aliased masks -> a mask; checked here, applied by io.convert.
        self.label_selection = LabelSelection.from_options(label_values, label_threshold)
        self.ignore_label = _ignore_label(ignore_label, self.label_selection, labels)

    def prepare(self, cache_dir: Path, root: Path | None = None) -> VolumePaths:
        raw = self._zarr(
            self.raw, self.raw_dataset, cache_dir, root, labels=False, z_range=self.raw_z_range
        )
        self._check(raw, check_raw)
        if self.labels is None:
            return VolumePaths(raw)
        labels = self.prepare_labels(cache_dir, root)
        raw_shape, label_shape = io.open_volume(raw).shape, io.open_volume(labels).shape
        if raw_shape != label_shape:
            raise io.VolumeError(
                f"raw {self.raw} has shape {raw_shape} but labels {self.labels} have {label_shape}"
            )
        try:
            labelled = check_labelled_slices(
                self.labelled_slices, label_shape[0], f"labelled_slices of {self.labels}"
            )
        except ValueError as err:
            raise io.VolumeError(str(err)) from err
        unlabelled = None
        if self.ignore_label is not None:
            unlabelled = self._labels_zarr(cache_dir, root, _values(self.ignore_label))
            if not has_foreground(unlabelled, Box.whole(label_shape)):
                log.warning("labels %s hold no voxel of ignore_label=%d: all are labelled",
                            self.labels, self.ignore_label)  # fmt: skip
        return VolumePaths(raw, labels, labelled, unlabelled)

    def prepare_labels(self, cache_dir: Path, root: Path | None = None) -> Path:
        """The labels alone as a checked zarr: converted into ``cache_dir`` (``label_values`` /
        ``label_threshold`` applied) unless already a zarr with nothing to select."""
        if self.labels is None:
            raise io.VolumeError(f"no labels given for {self.raw}")
        selection = self.label_selection
        if selection is None and self.ignore_label is not None:  # every other non-zero value
            ignore = self.ignore_label
            selection = _values(
                f"1-{MAX_LABEL}" if ignore == 1 else f"1-{ignore - 1},{ignore + 1}-{MAX_LABEL}"
            )
        labels = self._labels_zarr(cache_dir, root, selection)
        self._check(labels, check_labels)
        return _components(labels, cache_dir) if self.label_components else labels

    def _labels_zarr(
        self, cache_dir: Path, root: Path | None, selection: LabelSelection | None
    ) -> Path:
        return self._zarr(
            self.labels,  # type: ignore[arg-type]
            self.labels_dataset,
            cache_dir,
            root,
            labels=True,
            z_range=self.labels_z_range,
            selection=selection,
        )

    def raw_path(self, root: Path | None = None) -> Path:
        """The raw source, resolved against ``root``."""
        path = Path(self.raw).expanduser()
        if root is not None and not path.is_absolute():
            path = Path(root).expanduser() / path
        return path

    def voxel_size(self, root: Path | None = None) -> tuple[float, float, float] | None:
        """``voxel_size_nm`` when given, else the one the raw file states completely, else None
        (reads metadata only)."""
        if self.voxel_size_nm is not None:
            return self.voxel_size_nm  # type: ignore[return-value]
        path = self.raw_path(root)
        if not path.exists():
            raise io.VolumeError(f"input volume not found: {path}")
        stated = read_voxel_size(path, self.raw_dataset)
        return None if stated is None else stated.complete

    def _check(self, path: Path, check: Callable[[Path], None]) -> None:
        if path not in self._checked:
            check(path)
            self._checked.add(path)

    def _zarr(
        self,
        src: str,
        dataset: str | None,
        cache_dir: Path,
        root: Path | None,
        labels: bool,
        z_range: tuple[int, int] | None,
        selection: LabelSelection | None = None,
    ) -> Path:
        """``src`` as a zarr: itself, or converted once into ``cache_dir`` (labels with
        ``selection``: the values kept as the mask)."""
        path = Path(src).expanduser()
        if root is not None and not path.is_absolute():
            path = Path(root).expanduser() / path
        chosen = selection.attrs() if labels and selection else {}
        if is_zarr(path) and z_range is None and not chosen:
            if self.voxel_size_nm is not None and not labels:
                warn_if_not_stated(self.voxel_size_nm, read_voxel_size(path, dataset), path, log)
            return path
        if not path.exists():
            raise io.VolumeError(f"input volume not found: {path}")
        stat = path.stat()
        key = (
            f"{path.resolve()}|{dataset}|{stat.st_size}|{stat.st_mtime_ns}|{labels}|{z_range}"
            f"|{self.voxel_size_nm}"
        )
        key += f"|{chosen}" if chosen else ""
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        dst = Path(cache_dir) / f"{path.stem}-{digest}.zarr"
        if not is_zarr(dst):
            log.info("converting %s -> %s", path, dst)
            io.convert(
                path,
                dst,
                labels=labels,
                dataset=dataset,
                voxel_size_nm=self.voxel_size_nm,
                z_range=z_range,
                **chosen,
            )
        return dst


def _values(spec: int | str) -> LabelSelection:
    selection = LabelSelection.from_options(spec, None)
    assert selection is not None
    return selection


def _ignore_label(
    value: int | None, selection: LabelSelection | None, labels: str | None
) -> int | None:
    """The ``ignore_label`` checked: a positive integer that the label selection does not pick.

    Raises:
        ValueError: another value; the message names it and the labels.
    """
    if value is None:
        return None
    where = f"ignore_label of {labels}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"{where} must be a positive label value, e.g. 255, got {value!r} (0 is background; "
            "label images hold no negative values)"
        )
    if selection is not None and selection.apply(np.array([value]))[0]:
        raise ValueError(
            f"{where}: {value} is also selected as foreground ({selection.describe()})"
        )
    return int(value)


def _components(labels: Path, cache_dir: Path) -> Path:
    """The 26-connected components of the mask ``labels`` as uint32 instance ids (1..N in raster
    order), computed block by block once into ``cache_dir``."""
    key = f"{labels.resolve()}|{labels.stat().st_mtime_ns}|components26"
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    dst = Path(cache_dir) / f"{labels.stem}-components-{digest}.zarr"
    if not is_zarr(dst):
        from mitoseg.decode.blockwise.labels import connected_components

        n = connected_components(labels, dst, connectivity=26, progress=False)
        log.info("%s: %d connected components (26-connected) as instances -> %s", labels, n, dst)
    return dst


def _voxel_size(value: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


def _z_range(value: Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if len(value) != 2 or not 0 <= int(value[0]) < int(value[1]):
        raise ValueError(f"{name} must be [start, stop) with 0 <= start < stop, got {list(value)}")
    return int(value[0]), int(value[1])


def check_labelled_slices(
    slices: Sequence[int] | None, depth: int | None = None, where: str = "labelled_slices"
) -> tuple[int, ...] | None:
    """The labelled z indices, sorted, or None (every slice labelled).

    Args:
        slices: z indices (YAML list), or None.
        depth: the volume's number of z slices, to check the range; None skips that check.
        where: what the message names, e.g. ``data.train.labelled_slices of labels.tif``.

    Raises:
        ValueError: an empty list (nothing labelled), a non-integer, a repeated index, or an
            index outside [0, depth).
    """
    if slices is None:
        return None
    if isinstance(slices, (str, bytes)) or not isinstance(slices, Sequence):
        raise ValueError(f"{where} must be a list of z indices, e.g. [0, 7, 14], got {slices!r}")
    if not slices:
        raise ValueError(
            f"{where} is empty: nothing is labelled; list the labelled z slices, e.g. [0, 7, "
            "14], or leave it null when every slice is labelled"
        )
    if not all(isinstance(z, (int, np.integer)) and not isinstance(z, bool) for z in slices):
        raise ValueError(f"{where} must hold integer z indices, got {list(slices)}")
    values = [int(z) for z in slices]
    repeated = sorted({z for z in values if values.count(z) > 1})
    if repeated:
        raise ValueError(f"{where} lists z {repeated} more than once")
    outside = [z for z in values if z < 0 or (depth is not None and z >= depth)]
    if outside:
        limit = f"0..{depth - 1}" if depth is not None else ">= 0"
        raise ValueError(
            f"{where}: z {outside} outside the volume's slices ({limit}, {depth} slices)"
        )
    return tuple(sorted(values))


class SyntheticVolumes:
    """A synthetic EM volume with known instances
    (:func:`mitoseg.datasets.synthetic.make_volume`)."""

    def __init__(
        self,
        shape: Sequence[int] = (64, 192, 192),
        seed: int = 0,
        voxel_size_nm: Sequence[float] = (5.0, 5.0, 5.0),
        touching_pairs: int = 2,
        necked_chains: int = 0,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.seed = int(seed)
        self.voxel_size_nm = tuple(float(v) for v in voxel_size_nm)
        self.touching_pairs, self.necked_chains = int(touching_pairs), int(necked_chains)

    def prepare(self, cache_dir: Path, root: Path | None = None) -> VolumePaths:
        name = (
            "x".join(map(str, self.shape))
            + f"-seed{self.seed}-vs"
            + "x".join(f"{v:g}" for v in self.voxel_size_nm)
        )
        if (self.touching_pairs, self.necked_chains) != (2, 0):
            name += f"-pairs{self.touching_pairs}-chains{self.necked_chains}"
        folder = Path(cache_dir) / f"synthetic-{name}"
        paths = VolumePaths(folder / "raw.zarr", folder / "labels.zarr")
        if not (is_zarr(paths.raw) and is_zarr(paths.labels)):
            extra = {"necked_chains": self.necked_chains} if self.necked_chains else {}
            raw, labels = make_volume(
                self.shape,
                seed=self.seed,
                voxel_size_nm=self.voxel_size_nm,
                touching_pairs=self.touching_pairs,
                **extra,
            )
            attrs = {"axes": list(io.AXES), "voxel_size_nm": list(self.voxel_size_nm)}
            io.write_volume(paths.labels, labels, attrs={**attrs, "kind": "labels"}, overwrite=True)
            io.write_volume(paths.raw, raw, attrs={**attrs, "kind": "raw"}, overwrite=True)
        return paths
