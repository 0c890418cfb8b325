"""StepBudget: the cosine schedule ends as trainer.max_time runs out, whatever the step speed.

Time is a fake clock that the training and validation steps advance, so the step count that fits
in the budget is known exactly.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mitoseg.train.callbacks import ConfigInCheckpoint, StepBudget
from mitoseg.train.module import WarmupCosine, warmup_cosine

STEP_S, VALIDATION_S = 1.0, 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tiny(pl.LightningModule):
    """A linear model whose steps advance ``clock`` by STEP_S and each validation by
    VALIDATION_S."""

    def __init__(self, clock: Clock, scheduler: bool = True, step_s: float = STEP_S) -> None:
        super().__init__()
        self.clock, self.scheduler, self.step_s = clock, scheduler, step_s
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.clock.now += self.step_s
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.clock.now += VALIDATION_S

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
        if not self.scheduler:
            return optimizer
        schedule = warmup_cosine(optimizer, warmup_steps=5, total_steps=100)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.rand(50, 2)), batch_size=1)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)  # StepBudget's and Lightning's Timer's clock
    return fake


def trainer(tmp_path: Path, *callbacks: pl.Callback, max_time: dict | None) -> pl.Trainer:  # type: ignore[type-arg]
    return pl.Trainer(
        accelerator="cpu", max_steps=100, max_time=max_time, val_check_interval=50,
        callbacks=list(callbacks), logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )  # fmt: skip


def first_estimate(budget_s: float, fraction: float, step_s: float = STEP_S) -> int:
    """The estimate at the first validation (step 50): steps 20-50 and one validation timed, 50
    steps and one validation spent."""
    per_step = (30 * step_s + VALIDATION_S) / 30
    return 50 + int((fraction * budget_s - 50 * step_s - VALIDATION_S) / per_step)


def fit_with_budget(
    tmp_path: Path, clock: Clock, budget_s: float, *callbacks: pl.Callback, **module_kw
) -> tuple[pl.Trainer, StepBudget, float]:
    """Fit Tiny under a StepBudget(fraction=0.9); the trainer, the callback, the seconds spent."""
    budget = StepBudget(fraction=0.9, from_step=20)
    fit = trainer(tmp_path, budget, *callbacks, max_time={"seconds": budget_s})
    start = clock.now
    fit.fit(Tiny(clock, **module_kw), loader(), loader())
    return fit, budget, clock.now - start


def test_the_schedule_ends_when_the_budget_is_nearly_spent(tmp_path: Path, clock: Clock) -> None:
    run = {"trainer": {"max_steps": 100}, "module": {"scheduler": {"total_steps": 100}}}
    stored = ConfigInCheckpoint({}, run=run)
    fit, budget, seconds = fit_with_budget(tmp_path, clock, 1000, stored)
    steps = budget.max_steps
    assert fit.global_step == steps  # ended by max_steps, not by max_time
    # 1.2 s per step with validations: 0.9 of the budget is 750 steps; the estimate starts low
    # (50 + (900 - 60) / (40 / 30) = 680) and is revised up as the timing covers more steps.
    assert budget.decision["revisions"][0] == [50, first_estimate(1000, 0.9)] == [50, 680]
    assert 700 < steps <= 750 and 0.85 * 1000 < seconds <= 0.9 * 1000 + VALIDATION_S
    (schedule,) = fit.lr_scheduler_configs[0].scheduler.lr_lambdas
    assert isinstance(schedule, WarmupCosine) and schedule.total_steps == steps
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)  # the cosine's end
    assert run["trainer"]["max_steps"] == run["module"]["scheduler"]["total_steps"] == steps
    assert run["step_budget"]["max_steps"] == steps
    assert run["step_budget"]["measured_steps"][0] == 20


def test_a_slower_machine_gets_fewer_steps(tmp_path: Path, clock: Clock) -> None:
    fit, budget, seconds = fit_with_budget(tmp_path, clock, 1000, step_s=2.0)
    assert budget.decision["revisions"][0] == [50, first_estimate(1000, 0.9, step_s=2.0)]
    assert fit.global_step == budget.max_steps < 450  # 2.2 s per step: 409 steps in 900 s
    assert 0.85 * 1000 < seconds <= 0.9 * 1000 + VALIDATION_S


def test_a_machine_that_slows_down_still_ends_the_schedule_in_time(
    tmp_path: Path, clock: Clock
) -> None:
    class SlowDown(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:  # type: ignore[no-untyped-def]
            if trainer.global_step == 200:
                pl_module.step_s = 1.5

    fit, budget, seconds = fit_with_budget(tmp_path, clock, 1000, SlowDown())
    first = budget.decision["revisions"][0][1]
    assert fit.global_step == budget.max_steps < first  # revised down, ended by max_steps
    assert seconds <= 1000


def test_a_resumed_run_goes_on_from_the_decision(tmp_path: Path, clock: Clock) -> None:
    class StopAt(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:  # type: ignore[no-untyped-def]
            if trainer.global_step == 120:
                trainer.should_stop = True

    first = trainer(tmp_path, StepBudget(fraction=0.9), StopAt(), max_time={"seconds": 1000})
    first.fit(Tiny(clock), loader(), loader())
    assert first.global_step == 120
    path = tmp_path / "interrupted.ckpt"
    first.save_checkpoint(path)

    clock.now += 5000  # a resumed run is timed from the elapsed time stored in the checkpoint
    fresh = StepBudget(fraction=0.9)
    second = trainer(tmp_path, fresh, max_time={"seconds": 1000})
    # past the config's max_steps (100): without the restored decision it would stop at once
    second.fit(Tiny(clock), loader(), loader(), ckpt_path=path, weights_only=False)
    assert fresh.decision["revisions"][:2] == [[50, 680], [100, 724]]
    assert second.global_step == fresh.max_steps > 700
    (schedule,) = second.lr_scheduler_configs[0].scheduler.lr_lambdas
    assert schedule.total_steps == fresh.max_steps


def test_without_max_time_it_names_the_missing_key(tmp_path: Path, clock: Clock) -> None:
    with pytest.raises(ValueError, match="trainer.max_time"):
        trainer(tmp_path, StepBudget(), max_time=None).fit(Tiny(clock), loader(), loader())


def test_without_a_schedule_to_set_it_names_the_key(tmp_path: Path, clock: Clock) -> None:
    fit = trainer(tmp_path, StepBudget(), max_time={"seconds": 100})
    with pytest.raises(ValueError, match="module.scheduler"):
        fit.fit(Tiny(clock, scheduler=False), loader(), loader())


def test_the_fraction_must_be_a_share() -> None:
    with pytest.raises(ValueError, match="fraction"):
        StepBudget(fraction=1.5)


def test_warmup_cosine_keeps_total_steps_in_its_state() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(optimizer, warmup_steps=5, total_steps=100)
    schedule.lr_lambdas[0].total_steps = 700
    restored = warmup_cosine(optimizer, warmup_steps=5, total_steps=100)
    restored.load_state_dict(schedule.state_dict())
    assert restored.lr_lambdas[0].total_steps == 700
