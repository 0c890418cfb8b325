"""Residual 3D U-Net with optional squeeze-excitation, for (an)isotropic EM volumes.

Plain ``nn.Module``: no Lightning, no config. Each level has its own kernel and pooling size, so an
anisotropic net uses in-plane ``(1, 3, 3)`` kernels and ``(1, 2, 2)`` pooling at the top levels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

Size3 = int | Sequence[int]


def _triple(value: Size3) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    values = tuple(int(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"expected an int or 3 values (z, y, x), got {value!r}")
    return values  # type: ignore[return-value]


def _per_level(
    value: Size3 | Sequence[Size3], levels: int, name: str
) -> list[tuple[int, int, int]]:
    """Expand ``3``, ``[1, 3, 3]`` or ``[[1, 3, 3], 3, 3]`` to one (z, y, x) triple per level."""
    if isinstance(value, int):
        return [_triple(value)] * levels
    items = list(value)
    if len(items) == 3 and all(isinstance(v, int) for v in items):
        return [_triple(items)] * levels
    if len(items) != levels:
        raise ValueError(f"{name}: expected one entry per level ({levels}), got {len(items)}")
    return [_triple(v) for v in items]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"norm must be 'batch', 'instance' or 'group', got {kind!r}")


def _activation(kind: str) -> nn.Module:
    activations = {"elu": nn.ELU, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}
    if kind not in activations:
        raise ValueError(f"activation must be one of {sorted(activations)}, got {kind!r}")
    return activations[kind]()


class SqueezeExcitation3d(nn.Module):
    """Channel attention: global average pool, bottleneck MLP, sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            nn.Conv3d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class ResidualBlock3d(nn.Module):
    """conv-norm-act-conv-norm (+ SE) plus a (projected) identity, then the activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int],
        *,
        norm: str,
        activation: str,
        padding_mode: str,
        se: bool,
    ) -> None:
        super().__init__()
        padding = tuple(k // 2 for k in kernel_size)
        conv = dict(kernel_size=kernel_size, padding=padding, padding_mode=padding_mode, bias=False)
        self.body = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, **conv),
            _norm(norm, out_channels),
            _activation(activation),
            nn.Conv3d(out_channels, out_channels, **conv),
            _norm(norm, out_channels),
            SqueezeExcitation3d(out_channels) if se else nn.Identity(),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, bias=False), _norm(norm, out_channels)
            )
        )
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class ResidualUNet3D(nn.Module):
    """Residual U-Net for 3D volumes.

    Args:
        in_channels: channels of the input (1 for EM).
        out_channels: channels of the logits, one per target channel.
        widths: feature channels per level, top to bottom; its length is the depth.
        kernel_sizes: an int, one (z, y, x) triple, or one entry per level.
        pool_sizes: down-sampling between level i and i+1: an int, a triple or one entry per
            level transition (``len(widths) - 1`` entries).
        se: add squeeze-excitation to every block.
        norm: ``batch``, ``instance`` or ``group``.
        activation: ``elu``, ``relu``, ``leaky_relu`` or ``gelu``.
        padding_mode: padding of the convolutions (``replicate`` avoids dark borders).
        stem_stride: 1 (default) runs the top level at full resolution. 2 or a triple puts a
            strided convolution before the top level and a transposed one after it, so that
            every level works on a coarser grid (about 4x cheaper for 2); the output keeps the
            input's shape.

    Input float32 (N, in_channels, Z, Y, X); each of Z, Y, X divisible by the product of the
    pool sizes along that axis. Output: logits float32 (N, out_channels, Z, Y, X).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128),
        kernel_sizes: Size3 | Sequence[Size3] = 3,
        pool_sizes: Size3 | Sequence[Size3] = 2,
        se: bool = True,
        norm: str = "batch",
        activation: str = "elu",
        padding_mode: str = "replicate",
        stem_stride: Size3 = 1,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError(f"widths needs at least 2 levels, got {widths}")
        kernels = _per_level(kernel_sizes, len(widths), "kernel_sizes")
        self.pool_sizes = _per_level(pool_sizes, len(widths) - 1, "pool_sizes")
        self.stem_stride = _triple(stem_stride)
        if min(self.stem_stride) < 1:
            raise ValueError(f"stem_stride must be >= 1 per axis, got {stem_stride!r}")
        self.stem: nn.Module = nn.Identity()
        self.unstem: nn.Module = nn.Identity()
        if self.stem_stride != (1, 1, 1):
            stride = dict(kernel_size=self.stem_stride, stride=self.stem_stride, bias=False)
            self.stem = nn.Sequential(
                nn.Conv3d(in_channels, widths[0], **stride),
                _norm(norm, widths[0]),
                _activation(activation),
            )
            self.unstem = nn.Sequential(
                nn.ConvTranspose3d(widths[0], widths[0], **stride),
                _norm(norm, widths[0]),
                _activation(activation),
            )
            in_channels = widths[0]
        block = dict(norm=norm, activation=activation, padding_mode=padding_mode, se=se)
        self.encoders = nn.ModuleList()
        for level, width in enumerate(widths):
            in_ch = in_channels if level == 0 else widths[level - 1]
            self.encoders.append(ResidualBlock3d(in_ch, width, kernels[level], **block))
        self.reducers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(len(widths) - 2, -1, -1):
            self.reducers.append(nn.Conv3d(widths[level + 1], widths[level], 1))
            self.decoders.append(
                ResidualBlock3d(2 * widths[level], widths[level], kernels[level], **block)
            )
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Input sizes along (z, y, x) must be multiples of this."""
        total = list(self.stem_stride)
        for pool in self.pool_sizes:
            total = [t * p for t, p in zip(total, pool, strict=True)]
        return (total[0], total[1], total[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        if any(s % d for s, d in zip(spatial, self.divisor, strict=True)):
            raise ValueError(
                f"input shape (z, y, x) {spatial} must be divisible by {self.divisor} "
                "(the product of stem_stride and pool_sizes); change the patch or tile shape"
            )
        x = self.stem(x)
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = F.max_pool3d(x, self.pool_sizes[level - 1])
            x = encoder(x)
            skips.append(x)
        skips.pop()
        for reducer, decoder in zip(self.reducers, self.decoders, strict=True):
            skip = skips.pop()
            x = F.interpolate(reducer(x), size=skip.shape[2:], mode="trilinear")
            x = decoder(torch.cat([x, skip], dim=1))
        return self.head(self.unstem(x))
