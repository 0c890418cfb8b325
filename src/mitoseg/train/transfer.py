"""Start a network from another's weights (fine-tuning, ``mitoseg-train init=...``).

Every tensor whose name and shape fit is copied. A layer (module) with a tensor whose shape does
not fit keeps its fresh initialisation as a whole, and is listed: typically the output
convolution when the target has another number of channels (semantic's 1, BC's 2). Names that
exist on one side only mean another architecture, which is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

SAME = "init= needs the same network (only the layers whose shape depends on the target may differ)"


class TransferError(ValueError):
    """Weights that do not fit a network (another architecture); the message names the source."""


@dataclass
class TransferReport:
    """What :func:`transfer_weights` did.

    Attributes:
        source: where the weights came from (a checkpoint path or ``pretrained:<name>``).
        copied: names of the tensors copied.
        reinitialised: one entry per layer left at its fresh initialisation:
            ``{"layer": name, "tensors": {tensor: {"source": shape, "here": shape}}}``.
    """

    source: str
    copied: list[str] = field(default_factory=list)
    reinitialised: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints and ``metrics.json`` (the copied tensors as a count)."""
        return {
            "source": self.source,
            "copied_tensors": len(self.copied),
            "reinitialised": [layer["layer"] for layer in self.reinitialised],
            "reinitialised_shapes": self.reinitialised,
        }

    def describe(self) -> str:
        """One line for the log."""
        if not self.reinitialised:
            return f"init from {self.source}: all {len(self.copied)} tensors copied"
        layers = "; ".join(
            f"{layer['layer']} ({_shapes(layer['tensors'])})" for layer in self.reinitialised
        )
        return (
            f"init from {self.source}: {len(self.copied)} tensors copied; "
            f"{len(self.reinitialised)} layer(s) reinitialised as their shapes do not fit: {layers}"
        )


def _shapes(tensors: dict[str, dict[str, list[int]]]) -> str:
    return ", ".join(f"{k} {v['source']} there, {v['here']} here" for k, v in tensors.items())


def _layer(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def transfer_weights(
    net: nn.Module,
    weights: dict[str, torch.Tensor],
    source: str,
    differences: list[str] | None = None,
) -> TransferReport:
    """Copy ``weights`` into ``net`` where names and shapes fit; see the module docstring.

    Args:
        net: the freshly initialised network; changed in place.
        weights: a state dict (names -> tensors) of a network of the same architecture.
        source: where ``weights`` came from, for messages and the report.
        differences: how the source's network config differs from ``net``'s apart from the
            number of output channels (e.g. ``"model.widths=[4, 8] there, [8, 16] here"``).
            With any, a shape that does not fit is another architecture, not another target.

    Raises:
        TransferError: a tensor name exists on one side only, or shapes do not fit and the
            network configs differ in more than the output channels (another architecture).
    """
    own = net.state_dict()
    missing, unexpected = sorted(own.keys() - weights.keys()), sorted(weights.keys() - own.keys())
    unfit = sorted(k for k in own.keys() & weights.keys() if own[k].shape != weights[k].shape)
    why = f" ({'; '.join(differences)})" if differences else ""
    if missing or unexpected:
        raise TransferError(
            f"another network than this run's{why}: {len(missing)} tensor(s) of this network "
            f"are not there {missing[:3]}, {len(unexpected)} there are unknown here "
            f"{unexpected[:3]}; {SAME}"
        )
    if unfit and differences:
        shapes = ", ".join(
            f"{k} {list(weights[k].shape)} there, {list(own[k].shape)} here" for k in unfit[:3]
        )
        raise TransferError(
            f"another network than this run's{why}: {len(unfit)} tensor(s) of other shapes "
            f"({shapes}); {SAME}"
        )
    layers = sorted({_layer(k) for k in unfit})
    report = TransferReport(source)
    state = {}
    for name, tensor in own.items():
        layer = _layer(name)
        if layer in layers:
            state[name] = tensor
            continue
        state[name] = weights[name].to(dtype=tensor.dtype)
        report.copied.append(name)
    for layer in layers:
        tensors = {
            k: {"source": list(weights[k].shape), "here": list(own[k].shape)}
            for k in own
            if _layer(k) == layer
        }
        report.reinitialised.append({"layer": layer, "tensors": tensors})
    net.load_state_dict(state, strict=True)
    return report
