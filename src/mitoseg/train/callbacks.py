"""Training callbacks: the config in checkpoints, the schedule fitted to the time budget."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer

from mitoseg.train.data import VolumeDataModule

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
    With a :class:`mitoseg.train.data.VolumeDataModule`, ``config.data.raw_intensity`` records
    how the raw data was normalised and its statistics
    (:meth:`~mitoseg.train.data.VolumeDataModule.intensity_record`), which ``mitoseg-predict``
    compares its input with.
    """

    def __init__(self, config: dict[str, Any], run: dict[str, Any] | None = None) -> None:
        self.config, self.run = config, run
        self.versions = library_versions()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        config, datamodule = self.config, trainer.datamodule
        if isinstance(datamodule, VolumeDataModule) and datamodule.raw_intensity:
            data = {**config.get("data", {}), "raw_intensity": datamodule.intensity_record()}
            config = {**config, "data": data}
        checkpoint[CHECKPOINT_KEY] = {
            "config": config,
            "run": self.run,
            "versions": self.versions,
        }


class StepBudget(pl.Callback):
    """Fit the schedule to the wall-clock budget: the cosine ends as ``trainer.max_time`` runs
    out, on a slow or a fast machine alike.

    At the end of every validation of a fit, the seconds per step since step ``from_step``
    (validations included, so their cost is counted) give the number of steps that fit in
    ``fraction`` of the budget. That number becomes ``trainer.max_steps`` and the ``total_steps``
    of the LR schedule (:class:`mitoseg.train.module.WarmupCosine`), and replaces
    ``trainer.max_steps``
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
