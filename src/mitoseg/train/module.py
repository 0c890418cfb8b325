"""The LightningModule: training and validation steps, test-time prediction, optimisers.

No file I/O here: blocks are written by :class:`mitoseg.predict.writer.BlockWriter`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from mitoseg.hardware import device_of, resolve_channels_last, resolve_precision
from mitoseg.predict.blend import blend_weight
from mitoseg.predict.tiles import BlockBlender, TileProgress

Flips = tuple[int, ...]


class TTA(str, Enum):
    """Test-time augmentation: which flips (and y-x transposes) are averaged."""

    NONE = "none"
    FLIP_YX = "flip_yx"  # 4 variants, safe for anisotropic data
    FLIP = "flip"  # 8 variants
    FLIP_TRANSPOSE = "flip_transpose"  # 16 variants: 8 flips times the y-x transpose

    @classmethod
    def _missing_(cls, value: object) -> TTA:
        raise ValueError(f"tta={value!r} is not one of {', '.join(m.value for m in cls)}")


def tta_variants(mode: TTA | str) -> list[tuple[Flips, bool]]:
    """(flipped dims of an (N, C, Z, Y, X) tensor, transpose y-x) for every variant."""
    mode = TTA(mode)
    spatial = {TTA.NONE: (), TTA.FLIP_YX: (3, 4)}.get(mode, (2, 3, 4))
    flips: list[Flips] = [()]
    for dim in spatial:
        flips += [f + (dim,) for f in flips]
    transposes = (False, True) if mode is TTA.FLIP_TRANSPOSE else (False,)
    return [(f, t) for t in transposes for f in flips]


class WarmupCosine:
    """LR factor of a step: linear warm-up to 1, then cosine decay to ``min_factor`` at
    ``total_steps``. An object, not a closure, so that ``LambdaLR`` keeps ``total_steps`` in its
    state (checkpoints) and :class:`mitoseg.train.callbacks.StepBudget` can set it during a fit."""

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float = 0.01) -> None:
        self.warmup_steps, self.total_steps, self.min_factor = warmup_steps, total_steps, min_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / max(1, self.warmup_steps)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_factor + (1.0 - self.min_factor) * cosine


def warmup_cosine(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, min_factor: float = 0.01
) -> LRScheduler:
    """Linear warm-up to the base LR, then cosine decay to ``min_factor`` of it at total_steps."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_factor))


def confusion_counts(logits: torch.Tensor, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per channel (tp, fp, fn, tn) of sigmoid(logits) > threshold against target > 0.5.

    Args:
        logits: (N, C, Z, Y, X).
        target: (N, C, Z, Y, X) in [0, 1]; NaN voxels (undefined) are not counted.

    Returns:
        float64 (C, 4).
    """
    pred = torch.sigmoid(logits.float()) > threshold
    truth = target > 0.5
    defined = ~torch.isnan(target)
    dims = (0, 2, 3, 4)
    tp = (pred & truth).sum(dims)
    fp = (pred & ~truth & defined).sum(dims)
    fn = (~pred & truth).sum(dims)
    tn = (~pred & ~truth & defined).sum(dims)
    return torch.stack([tp, fp, fn, tn], dim=1).double()


class SegmentationModule(pl.LightningModule):
    """Trains a network on (raw, target) patches; predicts probabilities of tiles.

    Args:
        net: maps float32 (N, 1, Z, Y, X) to logits (N, C, Z, Y, X).
        loss: (logits, target) -> scalar; needed for training and validation only.
        optimizer: partial optimiser, called with the parameters; needed for training only.
        scheduler: partial LR scheduler, called with the optimiser; stepped every step.
        tta: test-time augmentation for ``test_step`` and ``predict_step``.
        channels_last: use the channels-last 3D memory format (faster on x86 CPUs and on GPUs
            in bf16); ``"auto"``: where this machine's CPU or GPU is faster with it
            (:func:`mitoseg.hardware.resolve_channels_last`; the CLIs resolve it first).
        val_threshold: probability threshold of the validation scores.
        channels: names of the output channels (the target's); validation logs the IoU of each
            at ``val_threshold`` as ``val/iou_<name>`` and their mean as ``val/iou``.
        tile_batch: tiles per forward pass when ``predict_step`` gets a whole block.
        blend: tile weighting of blockwise prediction, ``gaussian`` or ``constant``.
        compile: compile the network's forward in place with ``torch.compile`` (``nn.Module.
            compile``: parameter names and checkpoints are unchanged). The first steps and every
            new input shape pay the compilation; inductor on CPU needs a C++ compiler.

    Attributes:
        tile_progress: called with (tiles done, tiles to run) of the block ``predict_step`` is
            blending (set by :class:`mitoseg.predict.writer.BlockWriter` to show it); None.
    """

    tile_progress: TileProgress | None = None

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module | None = None,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[[Optimizer], LRScheduler] | None = None,
        tta: TTA | str = TTA.NONE,
        channels_last: bool | str = False,
        val_threshold: float = 0.5,
        channels: Sequence[str] = ("foreground",),
        tile_batch: int = 1,
        blend: str = "gaussian",
        compile: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(channels_last, str):
            device = device_of("auto")
            precision = resolve_precision("auto", device)[0]
            channels_last = resolve_channels_last(channels_last, device, precision)[0]
        if channels_last:
            net = net.to(memory_format=torch.channels_last_3d)
        if compile:
            net.compile()
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.tta = TTA(tta)
        self.channels_last = channels_last
        self.val_threshold = val_threshold
        self.channels = tuple(channels)
        self.tile_batch, self.blend = tile_batch, blend
        self._blender: BlockBlender | None = None
        self._val_counts = torch.zeros(len(self.channels), 4, dtype=torch.float64)
        self._val_losses: list[float] = []
        self._panel: dict[str, torch.Tensor] | None = None

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            raw = raw.contiguous(memory_format=torch.channels_last_3d)
        return self.net(raw)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["raw"]), batch["target"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["raw"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(
            len(self.channels), 4, dtype=torch.float64, device=self.device
        )
        self._val_losses, self._panel = [], None

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["raw"])
        self._val_losses.append(float(self.loss(logits, batch["target"])))
        self._val_counts += confusion_counts(logits, batch["target"], self.val_threshold)
        self._keep_panel(batch, logits)

    def _keep_panel(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
        """Keep the validation slice with the most foreground seen so far for the image panel."""
        per_slice = batch["target"][:, 0].nan_to_num(0.0).flatten(2).sum(-1)  # (N, Z)
        best = int(per_slice.argmax())
        sample, z = divmod(best, per_slice.shape[1])
        score = float(per_slice.flatten()[best])
        if self._panel is not None and score <= float(self._panel["score"]):
            return
        self._panel = {
            "score": torch.tensor(score),
            "raw": batch["raw"][sample, 0, z],
            "target": batch["target"][sample, 0, z].float().nan_to_num(0.0),
            "probs": torch.sigmoid(logits[sample, 0, z].float()),
        }

    def on_validation_epoch_end(self) -> None:
        counts = self.trainer.strategy.reduce(self._val_counts, reduce_op="sum")
        ious = []
        for name, (tp, fp, fn, _) in zip(self.channels, counts.tolist(), strict=True):
            ious.append(tp / (tp + fp + fn) if tp + fp + fn else 1.0)
            self.log(f"val/iou_{name}", ious[-1], sync_dist=True)  # equal on every rank
        loss = torch.tensor(
            sum(self._val_losses) / max(1, len(self._val_losses)), device=self.device
        )
        self.log("val/loss", loss, sync_dist=True)
        self.log("val/iou", sum(ious) / len(ious), prog_bar=True, sync_dist=True)
        self._log_panel()

    def _log_panel(self) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if self._panel is None or not hasattr(experiment, "add_image"):
            return
        row = torch.cat([self._panel[k].clamp(0, 1) for k in ("raw", "target", "probs")], dim=1)
        experiment.add_image("val/raw_target_probs", row[None].cpu(), self.global_step)

    @torch.no_grad()
    def predict_probs(self, raw: torch.Tensor) -> torch.Tensor:
        """Probabilities float32 (N, C, Z, Y, X) in [0, 1], averaged over the TTA variants."""
        total = None
        variants = tta_variants(self.tta)
        for flips, transpose in variants:
            x = raw.flip(flips) if flips else raw
            if transpose:
                x = x.transpose(3, 4)
            probs = self(x).float().sigmoid_()
            if transpose:
                probs = probs.transpose(3, 4)
            probs = probs.flip(flips) if flips else probs
            total = probs if total is None else total.add_(probs)
        assert total is not None
        return total.div_(len(variants)) if len(variants) > 1 else total

    def on_test_epoch_start(self) -> None:
        self._start_pass()

    def on_predict_epoch_start(self) -> None:
        self._start_pass()

    def _start_pass(self) -> None:
        """A new pass over the blocks: the blender's sums for later blocks of the last one
        (weights may have changed since) are dropped."""
        if self._blender is not None:
            self._blender.reset()

    def test_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> Any:
        return self.predict_step(batch, batch_idx, dataloader_idx)

    def predict_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> Any:
        """A block (see :class:`mitoseg.predict.blocks.BlockDataset`) -> its blended
        probabilities and index; an empty work item -> its index alone."""
        if "tiles" not in batch:  # an empty work item (see predict.blocks.BlockSampler)
            return {"index": batch["index"]}
        return {"probs": self._predict_block(batch), "index": batch["index"]}

    def _predict_block(self, batch: dict[str, Any]) -> torch.Tensor:
        """A whole block (see :class:`mitoseg.predict.blocks.BlockDataset`): its tiles, blended."""
        tile_shape = tuple(int(s) for s in batch["tile_shape"])
        if self._blender is None or tuple(self._blender.weight.shape) != tile_shape:
            weight = torch.from_numpy(blend_weight(tile_shape, self.blend)).to(self.device)
            self._blender = BlockBlender(weight, self.tile_batch)
        self._blender.progress = self.tile_progress
        return self._blender(self.predict_probs, batch)

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("SegmentationModule needs an optimizer to train")
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
