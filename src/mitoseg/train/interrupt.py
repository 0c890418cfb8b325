"""Stop training on SIGTERM / SIGINT after the current batch, saving ``last.ckpt`` to resume from.

``mitoseg-train`` fits inside :func:`mitoseg.signals.deferred`: a signal sets a flag (and, for
SIGTERM, Lightning's ``trainer.received_sigterm``), so training stops where the state is whole.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mitoseg import signals

log = logging.getLogger(__name__)


class StopOnSignal(pl.Callback):
    """Raise :class:`mitoseg.signals.Interrupted` after a training or validation batch once a
    signal arrived; when fitting stops that way (or by Lightning's own SIGTERM stop), save the
    state at that point to ``last_checkpoint`` (``checkpoints/last.ckpt``, which ``ckpt=last``
    resumes from).

    The check runs in ``on_train_batch_end``, the point where ``ModelCheckpoint`` saves every n
    steps, so the saved state resumes as exactly as those checkpoints do.

    Args:
        last_checkpoint: where to save; nothing is saved before the first optimiser step.
    """

    def __init__(self, last_checkpoint: str | Path) -> None:
        self.last_checkpoint = Path(last_checkpoint)
        self.saved: Path | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        signals.check()

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        signals.check()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        clean = isinstance(exception, SIGTERMException) or (
            isinstance(exception, signals.Interrupted) and exception.clean
        )
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if clean and fitting and trainer.global_step > 0:
            trainer.save_checkpoint(self.last_checkpoint, weights_only=False)  # the whole state
            self.saved = self.last_checkpoint
            log.info("interrupted at step %d: saved %s", trainer.global_step, self.saved)
