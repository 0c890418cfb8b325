"""What the napari widget runs, without Qt: load a model, predict a volume block by block,
decode it, measure the objects (torch; napari is not imported).

Every step is mitoseg's own: the checkpoint loading of ``mitoseg-predict`` (or a pretrained
model of :mod:`mitoseg.pretrained`, when that registry is installed), the one blockwise
predictor (:class:`mitoseg.predict.blocks.BlockDataset` items blended by
``SegmentationModule.predict_step``), the decoders of :mod:`mitoseg.decode` and the table of
:func:`mitoseg.analyze.measure.measure_objects`. The widget runs :func:`segment_steps` in a
napari worker thread: it yields after every block, so the progress bar moves and a cancel takes
effect between blocks.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from mitoseg import io
from mitoseg.analyze.measure import measure_objects
from mitoseg.cli.common import build_net, load_checkpoint, trained_intensity
from mitoseg.decode.base import Decoder, OutputKind, check_channels, with_voxel_size
from mitoseg.decode.masks import BinarizeMedian
from mitoseg.io.intensity import measure, mismatch
from mitoseg.predict.blocks import BlockDataset, BlockPlan
from mitoseg.predict.tiles import to_storage
from mitoseg.train.module import SegmentationModule

log = logging.getLogger(__name__)

# (z, y, x) voxels predicted per step: the unit of progress and of cancelling
DEFAULT_BLOCK = (32, 256, 256)


@dataclass(frozen=True)
class Progress:
    """A step of :func:`segment_steps`: ``done`` of ``total`` blocks, or a named stage; while a
    block is predicted, ``tiles`` = (tiles done, tiles to run) of that block."""

    done: int
    total: int
    stage: str = "predicting"
    tiles: tuple[int, int] | None = None


class Cancelled(Exception):
    """Raised by a tile callback to stop a prediction inside a block."""


TileCallback = Callable[[Progress], None]


@dataclass
class LoadedModel:
    """A network ready to predict, with what its checkpoint stores.

    Attributes:
        source: the checkpoint path or ``pretrained:<name>``.
        config: the checkpoint's stored config (model, target, postprocess, predict, data).
        module: the network in a ``SegmentationModule`` (eval mode, CPU or the given device).
        decoder: the decoder the checkpoint was tested with (``postprocess``); a plain
            threshold for a checkpoint without one.
    """

    source: str
    config: DictConfig
    module: SegmentationModule
    decoder: Decoder

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.config.target.channels)

    @property
    def voxel_size_nm(self) -> tuple[float, float, float] | None:
        """The training data's voxel size, when the checkpoint records it."""
        value = self.config.get("data", {}).get("voxel_size_nm")
        return None if value is None else tuple(float(v) for v in value)  # type: ignore[return-value]

    def decoders(self) -> dict[str, Decoder]:
        """The outputs this model can give: ``instances`` (its instance decoder) and ``mask``
        (its mask decoder, or a threshold of channel 0 when that is the foreground)."""
        found: dict[str, Decoder] = {}
        if self.decoder.kind is OutputKind.INSTANCES:
            found["instances"] = self.decoder
            if self.channels[0] == "foreground":
                found["mask"] = BinarizeMedian()
        else:
            found["mask"] = self.decoder
        return found


def pretrained_names() -> list[str]:
    """Names of the installed pretrained models; empty when the registry is not installed."""
    try:
        from mitoseg import pretrained
    except ImportError:
        return []
    try:
        return sorted(pretrained.available())
    except (OSError, ValueError) as error:
        log.warning("cannot list the pretrained models: %s", error)
        return []


def _load(ref: str) -> tuple[DictConfig, dict[str, torch.Tensor], str]:
    """A pretrained model's name or a checkpoint path -> stored config, weights, source."""
    try:
        from mitoseg.cli.pretrained import load_model
    except ImportError:  # no registry: checkpoints only
        stored, weights = load_checkpoint(ref)
        return stored, weights, str(ref)
    return load_model(str(ref))


def load_model(ref: str | Path, device: str | None = None) -> LoadedModel:
    """Load a pretrained model (by name) or a checkpoint written by ``mitoseg-train``, onto
    ``device`` (None: the GPU when there is one, else the CPU).

    Raises:
        mitoseg.cli.common.CheckpointError: no such file or name, or weights that do not fit.
    """
    stored, weights, source = _load(str(ref))
    net = build_net(stored, weights, source)
    settings = stored.predict
    module = SegmentationModule(
        net,
        tta=settings.tta,
        channels=tuple(stored.target.channels),
        tile_batch=int(settings.batch_size),
        blend=str(settings.blend),
    )
    module.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    postprocess = stored.get("postprocess")
    decoder = instantiate(postprocess) if postprocess is not None else BinarizeMedian()
    return LoadedModel(source, stored, module, decoder)


def make_plan(
    model: LoadedModel, raw_path: Path, block_shape: Sequence[int] = DEFAULT_BLOCK
) -> tuple[BlockPlan, list[str]]:
    """The blockwise job for the volume at ``raw_path``, and warnings on its intensities (the
    same checks as ``mitoseg-predict``)."""
    raw = io.open_volume(raw_path)
    if raw.ndim != 3:
        raise io.VolumeError(f"{raw_path}: expected a (Z, Y, X) volume, got shape {raw.shape}")
    trained = trained_intensity(model.config)
    found = measure(raw, raw_path, reference=trained)
    problem = mismatch("the image", found, trained)
    settings = model.config.predict
    shape = tuple(int(s) for s in raw.shape)
    block = tuple(min(int(b), s) for b, s in zip(block_shape, shape, strict=True))
    plan = BlockPlan(
        raw=str(raw_path),
        shape=shape,  # type: ignore[arg-type]
        channels=model.channels,
        dtype=str(settings.dtype),
        block_shape=block,  # type: ignore[arg-type]
        tile_shape=tuple(int(t) for t in settings.tile_shape),  # type: ignore[arg-type]
        overlap=float(settings.overlap),
        blend=str(settings.blend),
        tta=str(settings.tta),
        checkpoint=model.source,
        chunk_shape=block,  # type: ignore[arg-type]
        normalization=found.normalization,
    )
    return plan, [problem] if problem else []


def _report_tiles(on_tiles: TileCallback, index: int, total: int, done: int, tiles: int) -> None:
    on_tiles(Progress(index, total, "predicting", (done, tiles)))


def predict_steps(
    model: LoadedModel, plan: BlockPlan, on_tiles: TileCallback | None = None
) -> Generator[Progress, None, np.ndarray]:
    """Predict ``plan``'s volume block by block, in this process; yields after each block and
    calls ``on_tiles`` after each batch of tiles inside one (which may raise :class:`Cancelled`
    to stop there).

    Returns (the generator's value):
        (C, Z, Y, X) probabilities in the plan's dtype (uint8: p x 255, else float in [0, 1]);
        memory C x (1 or 4) bytes per voxel, plus one block's tiles.
    """
    dataset = BlockDataset(plan)
    probs = np.zeros((len(plan.channels), *plan.shape), dtype=np.dtype(plan.dtype))
    blocks = plan.blocks()
    yield Progress(0, len(blocks))
    module = model.module
    try:
        for index, box in enumerate(blocks):
            if on_tiles is not None:  # the predictor's per-block tile report (issue 21.6)
                module.tile_progress = functools.partial(
                    _report_tiles, on_tiles, index, len(blocks)
                )
            item = dataset[index]
            item["raw"] = item["raw"].to(module.device)
            with torch.no_grad():
                block = module.predict_step(item, index)["probs"]
            probs[(slice(None), *box.slices)] = to_storage(block, plan.dtype).cpu().numpy()
            yield Progress(index + 1, len(blocks))
    finally:
        module.tile_progress = None
    return probs


def decode(
    probs: np.ndarray, decoder: Decoder, voxel_size_nm: Sequence[float] | None
) -> np.ndarray:
    """Decode (C, Z, Y, X) probabilities (uint8 p x 255 or float) with ``decoder``: uint8
    {0, 1} mask or uint32 instance ids (Z, Y, X). Sizes in nm^3 use ``voxel_size_nm``.

    Raises:
        mitoseg.io.VolumeError: the channels do not fit the decoder, or sizes in nm^3 and no
            voxel size.
    """
    check_channels(decoder, probs, "the probabilities")
    decoder = with_voxel_size(decoder, voxel_size_nm, "the image")
    out = decoder(probs)
    return out.astype(np.uint8) if decoder.kind is OutputKind.MASK else out.astype(np.uint32)


def object_table(
    segmentation: np.ndarray, kind: OutputKind, voxel_size_nm: Sequence[float]
) -> dict[str, np.ndarray]:
    """One row per object (:func:`mitoseg.analyze.measure.measure_objects`): the instances, or
    the 26-connected components of a mask (as ``mitoseg-measure --components``)."""
    labels = segmentation
    if kind is OutputKind.MASK:
        labels = cc3d.connected_components(segmentation > 0, connectivity=26).astype(np.uint32)
    return measure_objects(labels, voxel_size_nm)


def threshold_fields(decoder: Decoder) -> dict[str, float]:
    """The decoder's thresholds (fields named ``*threshold`` holding a number): what the widget
    lets a user change without rerunning the network."""
    return {
        f.name: float(getattr(decoder, f.name))
        for f in dataclasses.fields(decoder)  # type: ignore[arg-type]
        if f.name.endswith("threshold") and isinstance(getattr(decoder, f.name), int | float)
    }


@dataclass
class Segmentation:
    """The result of a run: probabilities, the decoded volume, its kind and the object table."""

    probs: np.ndarray
    segmentation: np.ndarray
    kind: OutputKind
    table: dict[str, np.ndarray]
    warnings: list[str]


def decode_steps(
    probs: np.ndarray,
    decoder: Decoder,
    voxel_size_nm: Sequence[float],
    warnings: Sequence[str] = (),
) -> Generator[Progress, None, Segmentation]:
    """Decode saved probabilities and measure the objects (two steps, no network)."""
    yield Progress(0, 2, "decoding")
    segmentation = decode(probs, decoder, voxel_size_nm)
    yield Progress(1, 2, "measuring")
    table = object_table(segmentation, decoder.kind, voxel_size_nm)
    yield Progress(2, 2, "measuring")
    return Segmentation(probs, segmentation, decoder.kind, table, list(warnings))


def segment_steps(
    model: LoadedModel,
    raw_path: Path,
    decoder: Decoder,
    voxel_size_nm: Sequence[float],
    block_shape: Sequence[int] = DEFAULT_BLOCK,
    on_tiles: TileCallback | None = None,
) -> Generator[Progress, None, Segmentation]:
    """Predict the volume at ``raw_path`` blockwise, decode it with ``decoder`` and measure
    the objects; yields :class:`Progress` after each block and stage (``on_tiles``: see
    :func:`predict_steps`)."""
    plan, warnings = make_plan(model, raw_path, block_shape)
    probs = yield from predict_steps(model, plan, on_tiles)
    return (yield from decode_steps(probs, decoder, voxel_size_nm, warnings))


def write_raw(path: Path, data: Any, voxel_size_nm: Sequence[float]) -> Path:
    """A napari image's (Z, Y, X) data as a raw volume the predictor reads (a copy).

    Raises:
        mitoseg.io.VolumeError: the data is not 3D.
    """
    array = np.asarray(data)
    if array.ndim != 3:
        raise io.VolumeError(
            f"the image layer has shape {array.shape}: mitoseg segments (Z, Y, X) volumes "
            "(one channel, one time point)"
        )
    attrs = {"axes": list(io.AXES), "kind": "raw", "voxel_size_nm": list(voxel_size_nm)}
    io.write_volume(path, array, attrs=attrs)
    return path
