"""The test-time evaluation of ``mitoseg-train``: predict the validation part and the test
volume with the blockwise predictor, choose the decoder's parameters on validation, decode and
score the test volume once.

Prediction is the one of ``mitoseg-predict`` (:class:`mitoseg.predict.writer.BlockWriter`): under
DDP every rank predicts its own blocks, memory follows the block, and the probabilities equal
``mitoseg-predict``'s with the same checkpoint and settings. Decoding and scoring run on global
rank 0 with :func:`mitoseg.decode.run.run_decoder` / :func:`~mitoseg.decode.run.sweep`, in memory
or blockwise (``evaluate.blockwise``), as ``mitoseg-segment`` does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from mitoseg import io
from mitoseg.decode.base import Decoder, OutputKind, params
from mitoseg.decode.run import BlockwiseOptions, best, dask_session, output_name, run_decoder, sweep
from mitoseg.files import write_json_atomic
from mitoseg.geometry import Box
from mitoseg.hardware import compute_record
from mitoseg.predict.blocks import BlockPlan, block_loader
from mitoseg.predict.writer import BlockWriter, PredictJob, prepare_output

log = logging.getLogger(__name__)


class TestEvaluation(BlockWriter):
    """Predict every evaluated set (``val``, and ``test`` when there is one) into
    ``{set}_probs.zarr``, then (:meth:`evaluate`) sweep the decoder on validation, decode the final
    set with the best parameters and write ``metrics.json``.

    Args:
        output_dir: where ``{set}_probs.zarr``, ``{set}_labels.zarr``, the decoded output and
            ``metrics.json`` go.
        channels: names of the probability channels (the target's).
        postprocess: the target's decoder; swept parameters replace its values.
        sweep: {decoder parameter: values} tried on validation (every combination).
        select_metric: validation score that picks the combination (e.g. fg_iou, ap75).
        tile_shape, overlap, blend, dtype, tta: the prediction settings (the checkpoint's
            ``predict`` section, which ``mitoseg-predict`` uses too).
        block_shape, chunk_shape: blocks of prediction work and chunks of the outputs (z, y, x).
        blockwise: None or ``{enabled: false, ...}`` to decode in memory, else the options of
            :class:`mitoseg.decode.run.BlockwiseOptions`.
        num_workers: data-loader workers reading blocks.
        progress: show the prediction's progress bar.
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        output_dir: str,
        channels: Sequence[str],
        postprocess: Decoder,
        sweep: Mapping[str, Sequence[Any]],
        select_metric: str = "fg_iou",
        tile_shape: Sequence[int] = (32, 64, 64),
        overlap: float = 0.5,
        blend: str = "gaussian",
        dtype: str = "uint8",
        tta: str = "none",
        block_shape: Sequence[int] = (64, 256, 256),
        chunk_shape: Sequence[int] = (32, 256, 256),
        blockwise: Mapping[str, Any] | None = None,
        num_workers: int = 0,
        progress: bool = True,
    ) -> None:
        super().__init__([], progress)
        self.output_dir = Path(output_dir)
        self.channels = tuple(channels)
        self.postprocess = postprocess
        self.grid = {str(k): list(v) for k, v in sweep.items()}
        self.select_metric = select_metric
        self.settings = {
            "tile_shape": tuple(int(t) for t in tile_shape),
            "overlap": float(overlap),
            "blend": str(blend),
            "dtype": str(dtype),
            "tta": str(tta),
            "block_shape": tuple(int(b) for b in block_shape),
            "chunk_shape": tuple(int(c) for c in chunk_shape),
        }
        self.blockwise = BlockwiseOptions.from_dict(blockwise)
        self.num_workers = num_workers
        self.metrics: dict[str, Any] = {}

    def loaders(
        self, trainer: pl.Trainer, eval_sets: Sequence[Any], checkpoint: str
    ) -> list[DataLoader]:
        """This rank's blocks of every set, after global rank 0 has created the outputs.

        Args:
            trainer: the trainer that will run ``test`` (its ranks and barrier).
            eval_sets: :class:`mitoseg.train.data.EvalSet` of the data module, val first.
            checkpoint: the checkpoint tested (recorded in each output's journal).
        """
        # what mitoseg-predict records too: the trainer's precision and the module's layout
        compute = compute_record(
            trainer.precision,
            getattr(trainer.lightning_module, "channels_last", False),
            trainer.strategy.root_device,
        )
        self.jobs = [self._job(s, checkpoint, compute) for s in eval_sets]
        if trainer.global_rank == 0:
            for job in self.jobs:
                prepare_output(job, overwrite=True)
        trainer.strategy.barrier("mitoseg-test-outputs")
        rank, world = trainer.global_rank, trainer.world_size
        return [
            block_loader(job.plan, job.sampler(rank, world), self.num_workers) for job in self.jobs
        ]

    def _job(self, eval_set: Any, checkpoint: str, compute: dict[str, Any] | None) -> PredictJob:
        region: Box = eval_set.region
        intensity = eval_set.raw_intensity
        raw = io.open_volume(eval_set.paths.raw)
        plan = BlockPlan(
            raw=str(Path(eval_set.paths.raw).resolve()),
            shape=region.shape,
            channels=self.channels,
            checkpoint=checkpoint,
            offset=region.offset,
            # as mitoseg-predict would normalise this volume (chosen by the data module)
            normalization=intensity.normalization if intensity is not None else None,
            **self.settings,
        )
        voxel_size = raw.attrs.get("voxel_size_nm")
        voxel_size = None if voxel_size is None else tuple(float(v) for v in voxel_size)
        output = self.output_dir / f"{eval_set.name}_probs.zarr"
        return PredictJob(plan, output, voxel_size, intensity, compute)

    def evaluate(
        self, eval_sets: Sequence[Any], checkpoint: str | None, logger: Any = None, step: int = 0
    ) -> dict[str, Any]:
        """Sweep on validation, decode and score the final set, write ``metrics.json``.

        Call on global rank 0 once the probabilities are written. Returns the metrics.
        """
        sets = {s.name: s for s in eval_sets}
        if sets["val"].paths.labels is None:
            raise io.VolumeError("the validation volume needs labels to select the decoder")
        probs = {name: self.output_dir / f"{name}_probs.zarr" for name in sets}
        labels = {name: self._labels(s) for name, s in sets.items() if s.paths.labels is not None}
        final_set = "test" if "test" in sets else "val"
        with dask_session(self.blockwise) as client:
            options = {"blockwise": self.blockwise, "client": client, "work_dir": self.output_dir}
            val_rows = sweep(self.postprocess, self.grid, probs["val"], labels["val"], **options)
            decoder = self._choose(val_rows)
            if final_set == "test" and "test" in labels and decoder.kind is OutputKind.MASK:
                # Cheap for masks: the whole table on test, for comparison with papers.
                self.metrics["test"] = sweep(
                    decoder, self.grid, probs["test"], labels["test"], **options
                )
            output = self.output_dir / f"{final_set}_{output_name(decoder)}.zarr"
            result = run_decoder(
                decoder, probs[final_set], output, labels.get(final_set), **options
            )
        scores = result.scores
        self.metrics["final"] = {"set": final_set, **params(decoder), **(scores or {})}
        self.metrics["checkpoint"] = Path(checkpoint).name if checkpoint else None
        if self.blockwise is not None:
            self.metrics["blockwise"] = result.summary
        write_json_atomic(self.output_dir / "metrics.json", self.metrics)
        if logger is not None and scores:
            logger.log_metrics({f"{final_set}/{k}": float(v) for k, v in scores.items()}, step)
        log.info("metrics written to %s", self.output_dir / "metrics.json")
        return self.metrics

    def _choose(self, val_rows: list[dict[str, Any]]) -> Any:
        """The decoder with the best validation row's parameters; starts ``self.metrics``."""
        chosen = best(val_rows, self.select_metric)
        decoder = dataclasses.replace(self.postprocess, **{k: chosen[k] for k in self.grid})  # type: ignore[type-var]
        self.metrics = {
            "decoder": type(decoder).__name__,
            "selected": params(decoder),
            "selected_on": f"val/{self.select_metric}",
            "swept": list(self.grid),
            "val": val_rows,
        }
        return decoder

    def _labels(self, eval_set: Any) -> Path:
        """The zarr of a set's labels: ``val_labels.zarr`` beside the probabilities (written for
        sweeps later, and the validation part is a region of its volume), else the set's own
        labels (the test volume is whole)."""
        whole = Box.whole(io.open_volume(eval_set.paths.labels).shape)
        if eval_set.name != "val" and eval_set.region == whole:
            return Path(eval_set.paths.labels)
        return self._write_labels(eval_set)

    def _write_labels(self, eval_set: Any) -> Path:
        """A set's labels beside its probabilities (``val_labels.zarr``), for scoring here and
        for threshold sweeps later; copied chunk row by chunk row."""
        labels = io.open_volume(eval_set.paths.labels)
        path = self.output_dir / f"{eval_set.name}_labels.zarr"
        box = eval_set.region
        kept = ("axes", "voxel_size_nm", "binary")
        attrs = {"kind": "labels"} | {k: v for k, v in labels.attrs.asdict().items() if k in kept}
        with io.atomic_dir(path, overwrite=True) as tmp:
            out = io.create_volume(tmp, box.shape, labels.dtype, chunks=labels.chunks, attrs=attrs)
            step = int(out.chunks[0])
            for z in range(0, box.shape[0], step):
                view = Box(
                    (box.offset[0] + z, *box.offset[1:]),
                    (min(step, box.shape[0] - z), *box.shape[1:]),
                )
                out[z : z + step] = labels[view.slices]
        return path
