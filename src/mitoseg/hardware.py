"""What this machine computes fastest: ``precision=auto`` and ``channels_last=auto`` resolved.

``auto`` picks bf16 mixed precision where the processor has bf16 arithmetic: an x86 CPU with
AVX512-BF16 or AMX (its ``/proc/cpuinfo`` flags ``avx512_bf16`` / ``amx_bf16``), or a GPU with
native bf16 (``torch.cuda.is_bf16_supported(including_emulation=False)``, Ampere and later).
Elsewhere it keeps fp32: oneDNN emulates bf16 on other AVX512 CPUs, slower than fp32. On a CPU
with bf16 the forward and backward passes run about 1.2-1.9x faster (BENCHMARKS.md), and the
Lucchi++ validation foreground IoU stays within 0.002 of fp32 (``benchmarks/bf16_accuracy.py``).

``auto`` picks the channels-last 3D memory layout on x86 CPUs with oneDNN and AVX2 or better (its
convolutions are faster there: 1.17-1.56x per training step, BENCHMARKS.md) and on GPUs in bf16
(tensor cores read channels-last); elsewhere the default layout.

A value given by the user (``trainer.precision=32-true``, ``module.channels_last=false``) is
always kept as given.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 CPUs that compute in bf16 natively
# Lightning's older spellings, as trainer.precision reports them
LEGACY_PRECISION = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}
FAST_LAYOUT_CAPABILITIES = ("AVX2", "AVX512", "AMX")  # torch.backends.cpu.get_cpu_capability()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux); empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def device_of(accelerator: str) -> str:
    """The device type (``cpu``, ``cuda``, ``mps``) that Lightning's ``accelerator`` means here;
    ``auto`` as Lightning chooses it: a CUDA GPU, else Apple's MPS, else the CPU."""
    accelerator = str(accelerator).lower()
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator in ("cpu", "mps"):
        return accelerator
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def _bf16_reason(device: str, flags: frozenset[str]) -> str | None:
    """Why bf16 is fast on ``device`` here, or None when it is not."""
    if device == "cuda":
        if not torch.cuda.is_available():
            return None
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4 counts native support only
            native = torch.cuda.is_bf16_supported()
        return f"GPU {torch.cuda.get_device_name()} computes in bf16" if native else None
    if device == "cpu":
        found = [f for f in BF16_FLAGS if f in flags]
        return f"this CPU has {' and '.join(found)} (/proc/cpuinfo)" if found else None
    return None


def resolve_precision(
    requested: Any, device: str, flags: frozenset[str] | None = None
) -> tuple[str, str]:
    """Lightning's ``precision`` for ``requested`` on ``device``, and why.

    Args:
        requested: ``auto``, or any Lightning precision (``32-true``, ``bf16-mixed``, ...),
            which is kept as given.
        device: ``cpu``, ``cuda`` or ``mps``.
        flags: the CPU's flags; None reads them (:func:`cpu_flags`).
    """
    if str(requested) != AUTO:
        return LEGACY_PRECISION.get(str(requested), str(requested)), "given"
    reason = _bf16_reason(device, cpu_flags() if flags is None else flags)
    if reason is not None:
        return "bf16-mixed", f"auto: {reason}"
    where = "this CPU has no avx512_bf16 / amx_bf16" if device == "cpu" else f"{device}"
    return "32-true", f"auto: no fast bf16 ({where})"


def resolve_channels_last(
    requested: Any, device: str, precision: str = "32-true", capability: str | None = None
) -> tuple[bool, str]:
    """Whether to use the channels-last 3D layout for ``requested`` on ``device``, and why.

    Args:
        requested: ``auto``, or a bool (kept as given).
        device: ``cpu``, ``cuda`` or ``mps``.
        precision: the resolved precision (on a GPU, channels-last pays in 16-bit only).
        capability: the CPU's vector capability; None asks torch
            (``torch.backends.cpu.get_cpu_capability()``).
    """
    if str(requested).lower() != AUTO:
        if isinstance(requested, str) and requested.lower() not in ("true", "false"):
            raise ValueError(f"channels_last={requested!r}: use true, false or auto")
        value = requested if isinstance(requested, bool) else requested.lower() == "true"
        return bool(value), "given"
    if device == "cuda":
        half = precision.startswith(("bf16", "16"))
        return half, f"auto: GPU in {'16-bit (tensor cores)' if half else 'fp32'}"
    if device != "cpu":
        return False, f"auto: {device}"
    capability = capability or torch.backends.cpu.get_cpu_capability()
    fast = (
        torch.backends.mkldnn.is_available()
        and platform.machine().lower() in ("x86_64", "amd64")
        and capability in FAST_LAYOUT_CAPABILITIES
    )
    return fast, f"auto: {platform.machine()} CPU, {capability}, oneDNN " + (
        "convolutions are faster channels-last" if fast else "not used"
    )


@dataclass(frozen=True)
class Compute:
    """The resolved numeric precision and memory layout of a run, and why each was chosen."""

    device: str
    precision: str
    channels_last: bool
    precision_why: str = "given"
    channels_last_why: str = "given"

    def record(self) -> dict[str, Any]:
        """What outputs store (``attrs["compute"]`` of a probability zarr)."""
        return {
            "device": self.device,
            "precision": self.precision,
            "channels_last": self.channels_last,
        }

    def describe(self) -> str:
        return (
            f"precision {self.precision} ({self.precision_why}); channels-last "
            f"{'on' if self.channels_last else 'off'} ({self.channels_last_why}) on {self.device}"
        )


def resolve_compute(
    precision: Any,
    channels_last: Any,
    accelerator: str = AUTO,
    flags: frozenset[str] | None = None,
) -> Compute:
    """``precision`` and ``channels_last`` (each ``auto`` or a given value) resolved for the
    device that ``accelerator`` means here; logs the choice and why."""
    device = device_of(accelerator)
    chosen, why = resolve_precision(precision, device, flags)
    layout, layout_why = resolve_channels_last(channels_last, device, chosen)
    compute = Compute(device, chosen, layout, why, layout_why)
    log.info("compute: %s", compute.describe())
    return compute


def compute_record(precision: Any, channels_last: bool, device: Any) -> dict[str, Any]:
    """:meth:`Compute.record` of a running trainer (``trainer.precision``, the module's layout,
    ``trainer.strategy.root_device``)."""
    kind = device.type if isinstance(device, torch.device) else str(device)
    return Compute(kind, str(precision), bool(channels_last)).record()
