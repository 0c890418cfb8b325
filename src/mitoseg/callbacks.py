"""Thin Lightning glue: config in checkpoints; tile-predict, stitch, decode and score at test."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from mitoseg import io
from mitoseg.data import boxes_from_batch
from mitoseg.evaluate import best_threshold, evaluate_thresholds
from mitoseg.geometry import BoxView
from mitoseg.postprocess import BinarizeMedian, decode_slabwise
from mitoseg.report import jsonable_scores, mask_output, write_json_atomic
from mitoseg.stitch import Stitcher

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "mitoseg"


class ConfigInCheckpoint(pl.Callback):
    """Store the resolved model / target / predict config in every checkpoint.

    ``mitoseg-predict ckpt=...`` rebuilds the network from it and needs nothing else.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = {"config": self.config}


def create_probs(path: Path, channels: int, shape: tuple[int, ...], dtype: str) -> Any:
    """A new (C, Z, Y, X) probability zarr at ``path`` (replacing what is there)."""
    chunks = (channels, min(32, shape[0]), min(256, shape[1]), min(256, shape[2]))
    attrs = {
        "axes": ["c", *io.AXES],
        "kind": "probabilities",
        "scale": 255 if dtype == "uint8" else 1,
    }
    return io.create_volume(
        path, (channels, *shape), dtype, chunks=chunks, attrs=attrs, overwrite=True
    )


class TilePredictionWriter(pl.Callback):
    """Stitch the tile probabilities of ``test_step`` / ``predict_step`` into zarr, one per loader.

    Each output is written under a temporary name and renamed when complete.

    Args:
        outputs: one zarr path per data loader.
        channels: probability channels.
        tile_shape: full tile (z, y, x).
        dtype: ``uint8`` (p x 255) or ``float16`` / ``float32``.
        blend: ``gaussian`` or ``constant``.
    """

    def __init__(
        self,
        outputs: list[Path],
        channels: int,
        tile_shape: tuple[int, int, int],
        dtype: str = "uint8",
        blend: str = "gaussian",
    ) -> None:
        self.outputs = [Path(p) for p in outputs]
        self.channels, self.tile_shape, self.dtype, self.blend = channels, tile_shape, dtype, blend
        self._stitchers: list[Stitcher] = []

    def _tmp(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.partial")

    def start(self, trainer: pl.Trainer) -> None:
        loaders = trainer.test_dataloaders if trainer.testing else trainer.predict_dataloaders
        loaders = loaders if isinstance(loaders, list) else [loaders]
        self._stitchers = []
        for path, loader in zip(self.outputs, loaders, strict=True):
            out = create_probs(self._tmp(path), self.channels, loader.dataset.shape, self.dtype)
            self._stitchers.append(Stitcher(out, self.tile_shape, self.blend))

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start(trainer)

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start(trainer)

    def aggregate(self, outputs: dict[str, Any], dataloader_idx: int) -> None:
        probs = outputs["probs"].float().cpu().numpy()
        self._stitchers[dataloader_idx].aggregate(probs, boxes_from_batch(outputs["box"].cpu()))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # type: ignore[no-untyped-def]
        self.aggregate(outputs, dataloader_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # type: ignore[no-untyped-def]
        self.aggregate(outputs, dataloader_idx)

    def finish(self) -> None:
        for stitcher, path in zip(self._stitchers, self.outputs, strict=True):
            stitcher.finalize()
            if path.exists():
                shutil.rmtree(path)
            self._tmp(path).rename(path)
        self._stitchers = []

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finish()


class TestEvaluation(TilePredictionWriter):
    """At ``trainer.test``: predict the validation part and the test volume, pick the threshold
    on validation, score the test volume at every threshold and write ``metrics.json`` and the
    test mask.

    Args:
        output_dir: where ``val_probs.zarr``, ``test_probs.zarr``, ``test_mask.zarr`` and
            ``metrics.json`` go.
        thresholds: probabilities to score.
        postprocess: the semantic decoder; its threshold is replaced by the selected one.
        select_metric: validation score that picks the threshold.
    """

    def __init__(
        self,
        output_dir: str,
        channels: int,
        tile_shape: tuple[int, int, int],
        thresholds: list[float],
        postprocess: BinarizeMedian,
        dtype: str = "uint8",
        blend: str = "gaussian",
        select_metric: str = "fg_iou",
    ) -> None:
        super().__init__([], channels, tuple(tile_shape), dtype, blend)  # type: ignore[arg-type]
        self.output_dir = Path(output_dir)
        self.thresholds, self.postprocess = list(thresholds), postprocess
        self.select_metric = select_metric
        self.metrics: dict[str, Any] = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sets = [s.name for s in trainer.datamodule.eval_sets]
        self.outputs = [self.output_dir / f"{name}_probs.zarr" for name in self.sets]
        self.start(trainer)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finish()
        sets = trainer.datamodule.eval_sets
        scores = {}
        for eval_set, path in zip(sets, self.outputs, strict=True):
            labels = BoxView(io.open_volume(eval_set.paths.labels), eval_set.region)
            scores[eval_set.name] = evaluate_thresholds(
                io.open_volume(path), labels, self.thresholds, self.postprocess.median_size
            )
        selected = best_threshold(scores["val"], self.select_metric)
        self.metrics = {
            "selected_threshold": selected,
            "selected_on": f"val/{self.select_metric}",
            "median_size": self.postprocess.median_size,
            **{name: jsonable_scores(s) for name, s in scores.items()},
        }
        final = scores.get("test", scores["val"])[selected]
        self.metrics["final"] = {"set": "test" if "test" in scores else "val", **final}
        write_json_atomic(self.output_dir / "metrics.json", self.metrics)
        self._write_mask(selected)
        self._write_val_labels(sets[0])
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {f"test/{k}": v for k, v in final.items()}, trainer.global_step
            )
        log.info("metrics written to %s", self.output_dir / "metrics.json")

    def _write_mask(self, threshold: float) -> None:
        name = "test" if "test" in self.sets else "val"
        probs = io.open_volume(self.output_dir / f"{name}_probs.zarr")
        decoder = BinarizeMedian(threshold, self.postprocess.median_size)
        with mask_output(self.output_dir / f"{name}_mask.zarr", probs, threshold) as out:
            for _ in decode_slabwise(decoder, probs, out):
                pass

    def _write_val_labels(self, eval_set: Any) -> None:
        """The validation part's labels beside ``val_probs.zarr``, for later threshold sweeps."""
        labels = io.open_volume(eval_set.paths.labels)
        path = self.output_dir / "val_labels.zarr"
        io.write_volume(path, labels[eval_set.region.slices], chunks=labels.chunks, overwrite=True)
