"""Thin Lightning glue: config in checkpoints; tile-predict, stitch, decode and score at test."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer

from mitoseg import io
from mitoseg.analyze.report import write_json_atomic
from mitoseg.decode import run as decode
from mitoseg.geometry import Box, BoxView
from mitoseg.predict.blend import Stitcher
from mitoseg.predict.tiles import boxes_from_batch

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "mitoseg"


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries a trained result depends on."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("mitoseg", "torch", "pytorch-lightning", "monai", "numpy", "zarr"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


class ConfigInCheckpoint(pl.Callback):
    """Store the resolved config in every checkpoint.

    ``config`` (model / target / predict / postprocess / evaluate) is what
    ``mitoseg-predict ckpt=...`` rebuilds the network and its defaults from; ``run`` is the whole
    resolved training config (data, augmentation, optimiser, schedule, trainer, seed), stored
    with the library versions so that the result can be traced and re-run from the file alone.
    """

    def __init__(self, config: dict[str, Any], run: dict[str, Any] | None = None) -> None:
        self.config, self.run = config, run
        self.versions = library_versions()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "config": self.config,
            "run": self.run,
            "versions": self.versions,
        }


class StepBudget(pl.Callback):
    """Fit the schedule to the wall-clock budget: the cosine ends as ``trainer.max_time`` runs
    out, on a slow or a fast machine alike.

    At the end of every validation of a fit, the seconds per step since step ``from_step``
    (validations included, so their cost is counted) give the number of steps that fit in
    ``fraction`` of the budget. That number becomes ``trainer.max_steps`` and the ``total_steps``
    of the LR schedule (:class:`mitoseg.train.module.WarmupCosine`), and replaces ``trainer.max_steps``
    in the run config stored in checkpoints. The first estimate, after a few minutes, is revised
    at each later validation from all the steps timed so far, so that a machine whose speed
    drifts (a shared host) still ends the cosine inside the budget; each revision moves the rest
    of the cosine a little. The number is computed on global rank 0 and broadcast, logged, and kept
    in checkpoints with its revisions; a resumed run goes on from it, and ``trainer.max_steps=N
    ~callbacks.step_budget`` re-runs the same number of steps on any machine.

    Args:
        fraction: share of ``trainer.max_time`` to fill; the rest is the margin for the last
            validation and checkpoint, and for a misjudged speed.
        from_step: first step of the timing (the steps before it pay one-off start-up costs).
    """

    def __init__(self, fraction: float = 0.95, from_step: int = 20) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"callbacks.step_budget.fraction must be in (0, 1], got {fraction}")
        self.fraction, self.from_step = fraction, from_step
        self.decision: dict[str, Any] = {}  # max_steps, the timing behind it, its revisions
        self._start: tuple[int, float] | None = None

    @property
    def max_steps(self) -> int | None:
        """The fitted step count; None before the first estimate."""
        return self.decision.get("max_steps")

    def _timer(self, trainer: pl.Trainer) -> Timer:
        timers = [c for c in trainer.callbacks if isinstance(c, Timer)]  # type: ignore[attr-defined]
        if not timers or timers[0].time_remaining() is None:
            raise ValueError(
                "callbacks.step_budget fits the schedule to trainer.max_time, which is not set: "
                "pass e.g. trainer.max_time=00:01:00:00, or remove it with ~callbacks.step_budget"
            )
        return timers[0]

    def _schedules(self, trainer: pl.Trainer) -> list[Any]:
        found = [
            fn
            for config in trainer.lr_scheduler_configs
            for fn in getattr(config.scheduler, "lr_lambdas", [])
            if hasattr(fn, "total_steps")
        ]
        if not found:
            raise ValueError(
                "callbacks.step_budget sets the LR schedule's total_steps, but module.scheduler "
                "has none: use mitoseg.train.module.warmup_cosine, or remove it with "
                "~callbacks.step_budget"
            )
        return found

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._timer(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._schedules(trainer)
        if self.max_steps is not None:  # resumed after the decision
            self._apply(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if self._start is None and trainer.global_step >= self.from_step:
            self._start = (trainer.global_step, time.monotonic())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._start is None:
            return
        step, now = trainer.global_step, time.monotonic()
        if step <= self._start[0]:
            return
        timer = self._timer(trainer)
        elapsed, budget = timer.time_elapsed(), timer.time_elapsed() + timer.time_remaining()
        seconds_per_step = (now - self._start[1]) / (step - self._start[0])
        steps = step + int((self.fraction * budget - elapsed) / seconds_per_step)
        steps = int(trainer.strategy.broadcast(max(step + 1, steps), src=0))
        revisions = self.decision.get("revisions", [])
        self.decision = {
            "max_steps": steps,
            "seconds_per_step": round(seconds_per_step, 4),
            "measured_steps": [self._start[0], step],
            "budget_seconds": round(budget, 1),
            "fraction": self.fraction,
            "revisions": [*revisions, [step, steps]],  # [at step, max_steps]
        }
        self._apply(trainer)
        log.info(
            "step budget: %d steps fit %.0f%% of %.1f minutes at %.3f s per step (steps %d-%d, "
            "validation included); the same step count anywhere: trainer.max_steps=%d "
            "~callbacks.step_budget",
            steps, 100 * self.fraction, budget / 60, seconds_per_step, self._start[0], step, steps,
        )  # fmt: skip

    def _apply(self, trainer: pl.Trainer) -> None:
        assert self.max_steps is not None
        trainer.fit_loop.epoch_loop.max_steps = self.max_steps
        for schedule in self._schedules(trainer):
            schedule.total_steps = self.max_steps
        for c in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(c, ConfigInCheckpoint) and c.run is not None:
                c.run.setdefault("trainer", {})["max_steps"] = self.max_steps
                scheduler = c.run.get("module", {}).get("scheduler") or {}
                if "total_steps" in scheduler:
                    scheduler["total_steps"] = self.max_steps
                c.run["step_budget"] = self.decision

    def state_dict(self) -> dict[str, Any]:
        return {"decision": self.decision}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.decision = state_dict.get("decision", {})

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning checks max_steps before on_train_start: a resumed run that is past the
        # config's max_steps would stop at once, so the decision is applied as it is restored.
        self.load_state_dict(checkpoint.get("callbacks", {}).get(self.state_key, {}))
        if self.max_steps is not None:
            trainer.fit_loop.epoch_loop.max_steps = self.max_steps


def create_probs(
    path: Path,
    channels: Sequence[str],
    shape: tuple[int, ...],
    dtype: str,
    voxel_size_nm: Sequence[float] | None = None,
    chunks: Sequence[int] = (32, 256, 256),
) -> Any:
    """A new (C, Z, Y, X) probability zarr at ``path`` (replacing what is there), chunked
    (C, ``chunks``) clipped to the volume."""
    n = len(channels)
    chunks = (n, *(min(int(c), int(s)) for c, s in zip(chunks, shape, strict=True)))
    attrs: dict[str, Any] = {
        "axes": ["c", *io.AXES],
        "kind": "probabilities",
        "channels": list(channels),
        "scale": 255 if dtype == "uint8" else 1,
    }
    if voxel_size_nm is not None:
        attrs["voxel_size_nm"] = [float(v) for v in voxel_size_nm]
    return io.create_volume(path, (n, *shape), dtype, chunks=chunks, attrs=attrs, overwrite=True)


class TilePredictionWriter(pl.Callback):
    """Stitch the tile probabilities of ``test_step`` / ``predict_step`` into zarr, one per loader.

    Each output is written under a temporary name and renamed when complete.

    Args:
        outputs: one zarr path per data loader.
        channels: names of the probability channels (the target's).
        tile_shape: full tile (z, y, x).
        dtype: ``uint8`` (p x 255) or ``float16`` / ``float32``.
        blend: ``gaussian`` or ``constant``.
    """

    def __init__(
        self,
        outputs: list[Path],
        channels: Sequence[str],
        tile_shape: tuple[int, int, int],
        dtype: str = "uint8",
        blend: str = "gaussian",
    ) -> None:
        self.outputs = [Path(p) for p in outputs]
        self.channels = list(channels)
        self.tile_shape, self.dtype, self.blend = tile_shape, dtype, blend
        self._stitchers: list[Stitcher] = []

    def _tmp(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.partial")

    def start(self, trainer: pl.Trainer) -> None:
        loaders = trainer.test_dataloaders if trainer.testing else trainer.predict_dataloaders
        loaders = loaders if isinstance(loaders, list) else [loaders]
        self._stitchers = []
        for path, loader in zip(self.outputs, loaders, strict=True):
            voxel_size = io.open_volume(loader.dataset.paths.raw).attrs.get("voxel_size_nm")
            out = create_probs(
                self._tmp(path), self.channels, loader.dataset.shape, self.dtype, voxel_size
            )
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
            io.finalize_volume(self._tmp(path))  # the pyramid, before the output appears
            if path.exists():
                shutil.rmtree(path)
            self._tmp(path).rename(path)
        self._stitchers = []

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finish()


class TestEvaluation(TilePredictionWriter):
    """At ``trainer.test``: predict the validation part and the test volume, sweep the decoder's
    parameters on validation, pick the best, decode the test volume with it, and write
    ``metrics.json`` and the decoded test output (``test_mask.zarr`` or ``test_instances.zarr``).

    Args:
        output_dir: where ``{val,test}_probs.zarr``, the decoded output and ``metrics.json`` go.
        channels: names of the probability channels (the target's).
        tile_shape: full tile (z, y, x).
        postprocess: the target's decoder; swept parameters replace its values.
        sweep: {decoder parameter: values} tried on validation (every combination).
        select_metric: validation score that picks the combination (e.g. fg_iou, ap75).
        blockwise: None, or options of :func:`mitoseg.decode.blockwise.decode_blockwise` to decode and
            score block by block, for volumes larger than memory: ``block_shape``, ``halo``
            and ``dask`` ({``address``, ``workers``}, see :func:`~mitoseg.decode.blockwise.dask_client`).
    """

    def __init__(
        self,
        output_dir: str,
        channels: Sequence[str],
        tile_shape: tuple[int, int, int],
        postprocess: Any,
        sweep: Mapping[str, Sequence[Any]],
        dtype: str = "uint8",
        blend: str = "gaussian",
        select_metric: str = "fg_iou",
        blockwise: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__([], channels, tuple(tile_shape), dtype, blend)  # type: ignore[arg-type]
        self.blockwise = dict(blockwise) if blockwise else None
        self.output_dir = Path(output_dir)
        self.postprocess = postprocess
        self.grid = {str(k): list(v) for k, v in sweep.items()}
        self.select_metric = select_metric
        self.metrics: dict[str, Any] = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sets = [s.name for s in trainer.datamodule.eval_sets]
        self.outputs = [self.output_dir / f"{name}_probs.zarr" for name in self.sets]
        self.start(trainer)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finish()
        sets = {s.name: s for s in trainer.datamodule.eval_sets}
        probs = {name: io.open_volume(self.output_dir / f"{name}_probs.zarr") for name in sets}
        labels = {
            name: BoxView(io.open_volume(s.paths.labels), s.region)
            for name, s in sets.items()
            if s.paths.labels is not None
        }
        if "val" not in labels:
            raise io.VolumeError("the validation volume needs labels to select the decoder")
        if self.blockwise is not None:
            scores, decoder, final_set = self._evaluate_blockwise(sets)
        else:
            scores, decoder, final_set = self._evaluate(sets, probs, labels)
        self.metrics["final"] = {"set": final_set, **decode.params(decoder), **(scores or {})}
        self.metrics["checkpoint"] = Path(trainer.ckpt_path).name if trainer.ckpt_path else None
        write_json_atomic(self.output_dir / "metrics.json", self.metrics)
        if self.blockwise is None:
            self._write_labels(sets["val"])
        if trainer.logger is not None and scores:
            trainer.logger.log_metrics(
                {f"{final_set}/{k}": float(v) for k, v in scores.items()}, trainer.global_step
            )
        log.info("metrics written to %s", self.output_dir / "metrics.json")

    def _choose(self, val_rows: list[dict[str, Any]]) -> Any:
        """The decoder with the best validation row's parameters; starts ``self.metrics``."""
        chosen = decode.best(val_rows, self.select_metric)
        decoder = dataclasses.replace(self.postprocess, **{k: chosen[k] for k in self.grid})
        self.metrics = {
            "decoder": type(decoder).__name__,
            "selected": decode.params(decoder),
            "selected_on": f"val/{self.select_metric}",
            "swept": list(self.grid),
            "val": val_rows,
        }
        return decoder

    def _evaluate(
        self, sets: Mapping[str, Any], probs: Mapping[str, Any], labels: Mapping[str, Any]
    ) -> tuple[dict[str, float] | None, Any, str]:
        """Sweep on validation, decode and score the final set, in memory."""
        val_rows = decode.sweep(self.postprocess, self.grid, probs["val"], labels["val"])
        final_set = "test" if "test" in sets else "val"
        decoder = self._choose(val_rows)
        if final_set == "test" and "test" in labels and decode.is_semantic(decoder):
            # Cheap for masks: the whole threshold table on test, for comparison with papers.
            self.metrics["test"] = decode.sweep(decoder, self.grid, probs["test"], labels["test"])
        name = decode.output_name(decoder)
        scores = decode.decode_and_score(
            decoder,
            probs[final_set],
            labels.get(final_set),
            self.output_dir / f"{final_set}_{name}.zarr",
        )
        return scores, decoder, final_set

    def _evaluate_blockwise(
        self, sets: Mapping[str, Any]
    ) -> tuple[dict[str, float] | None, Any, str]:
        """As :meth:`_evaluate`, block by block on Dask; reads the labels from zarr copies."""
        from mitoseg.decode.blockwise import dask_client, decode_blockwise, sweep_blockwise

        options = dict(self.blockwise or {})
        dask = options.pop("dask", {}) or {}
        probs = {name: self.output_dir / f"{name}_probs.zarr" for name in sets}
        labels = {
            name: self._write_labels(s) for name, s in sets.items() if s.paths.labels is not None
        }
        final_set = "test" if "test" in sets else "val"
        with dask_client(dask.get("address"), int(dask.get("workers", 0))) as client:
            options |= {"client": client, "work_dir": self.output_dir, "progress": False}
            val_rows = sweep_blockwise(
                self.postprocess, self.grid, probs["val"], labels["val"], **options
            )
            decoder = self._choose(val_rows)
            output = self.output_dir / f"{final_set}_{decode.output_name(decoder)}.zarr"
            result = decode_blockwise(
                decoder, probs[final_set], output, labels.get(final_set), **options
            )
        self.metrics["blockwise"] = result.summary
        return result.scores, decoder, final_set

    def _write_labels(self, eval_set: Any) -> Path:
        """A set's labels beside its probabilities (``val_labels.zarr``), for threshold sweeps
        later and blockwise scoring; copied chunk row by chunk row."""
        labels = io.open_volume(eval_set.paths.labels)
        path = self.output_dir / f"{eval_set.name}_labels.zarr"
        box = eval_set.region
        attrs = {k: v for k, v in labels.attrs.asdict().items() if k in ("axes", "voxel_size_nm")}
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
