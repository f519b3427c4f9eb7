"""The branch types of multi-branch blocks.

Each branch is an ``nn.Module`` whose ``kernel_and_bias()`` returns its eval-mode function as one
``(kernel, bias)`` pair in float64, centred at the branch's own kernel size (1x1, 1xk, k x k, ...):
``branch(x) == conv2d(x, kernel, bias, stride, padding=d*(kernel//2), dilation=d, groups)``.
Nothing is detached, so the equivalent kernel is differentiable. The block pads and sums them.

The scaled branches (``ScaledConv``, ``ScaledIdentity``) are linear_add's: a per-output-channel scale and no
norm of their own. Their ``kernel_and_bias(dtype)`` also gives the kernel in the training dtype, which the
block merges into one conv in every training step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import Branch, avgpool_kernel, bn_statistics, compose_1x1_kxk, fold_bn, identity_kernel, scale_kernel

__all__ = [
    "ConvBN",
    "IdentityBranch",
    "BNAndPad",
    "OneByOneKxK",
    "AvgPoolBranch",
    "ScaledConv",
    "ScaledIdentity",
    "NormFactory",
    "fold_norm",
    "FusableBranch",
    "ScaledBranch",
]

NormFactory = Callable[[int], nn.Module]


class FusableBranch(Protocol):
    """What a block needs of each branch: its linear map as ``(kernel, bias)`` in float64."""

    def kernel_and_bias(self) -> Branch: ...


class ScaledBranch(Protocol):
    """A linear_add branch: its ``(kernel, bias)`` in the dtype asked for (differentiable in the scales)."""

    def kernel_and_bias(self, dtype: torch.dtype = torch.float64) -> Branch: ...


def _stats_device(norm: nn.Module | None) -> torch.device | None:
    """Where a norm's running statistics live (None: no statistics; build on the default device)."""
    mean = getattr(norm, "running_mean", None)
    return mean.device if isinstance(mean, torch.Tensor) else None


def fold_norm(kernel: torch.Tensor, bias: torch.Tensor | None, norm: nn.Module | None) -> Branch:
    """``(kernel, bias)`` followed by ``norm`` (a BN, or ``None``), in float64; a missing bias is zero."""
    kernel = kernel.double()
    if norm is None:
        return kernel, bias.double() if bias is not None else kernel.new_zeros(kernel.shape[0])
    return fold_bn(kernel, None if bias is None else bias.double(), *bn_statistics(norm))


class ConvBN(nn.Module):
    """``BN(conv(x))``, or ``conv(x)`` (with a bias unless ``bias=False``) when ``norm_layer`` is ``None``.

    ``kernel_size`` and ``padding`` may be pairs, for ACNet's 1xk and kx1 branches.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int = 1,
        groups: int = 1,
        norm_layer: NormFactory | None = nn.BatchNorm2d,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        bias = norm_layer is None if bias is None else bias
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias)
        self.bn = norm_layer(out_channels) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.bn(x) if self.bn is not None else x

    def kernel_and_bias(self) -> Branch:
        return fold_norm(self.conv.weight, self.conv.bias, self.bn)


class IdentityBranch(nn.Module):
    """``BN(x)``, or ``x`` when ``norm_layer`` is ``None``: a 1x1 grouped conv with an identity kernel."""

    def __init__(self, channels: int, groups: int = 1, norm_layer: NormFactory | None = nn.BatchNorm2d) -> None:
        super().__init__()
        self.channels, self.groups = channels, groups
        self.bn = norm_layer(channels) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) if self.bn is not None else x

    def kernel_and_bias(self) -> Branch:
        kernel = identity_kernel(self.channels, 1, self.groups, dtype=torch.float64, device=_stats_device(self.bn))
        return fold_norm(kernel, None, self.bn)


class BNAndPad(nn.Module):
    """BN, then pad the border by ``padding`` with what the BN gives for a zero input (DBB's layer).

    A 1x1 conv followed by this and an unpadded k x k conv is exactly one padded k x k conv: the fused
    conv pads its input with zeros, and the 1x1 stage maps a zero pixel to ``BN(0)``. In eval mode it
    is written ``BN(pad(x))``, which is the same thing and traceable (``reparam.auto_fuse`` reads it).
    """

    def __init__(self, channels: int, padding: int, norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.padding = padding
        self.bn = norm_layer(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = [self.padding] * 4
        if not self.training or self.padding == 0:
            return self.bn(F.pad(x, pad))
        out = self.bn(x)  # batch statistics from the real pixels only, as in DBB
        mean, var, eps, gamma, beta = bn_statistics(self.bn)
        value = -mean / torch.sqrt(var + eps)
        if gamma is not None and beta is not None:  # affine BN: both or neither
            value = value * gamma + beta
        value = value.detach().reshape(1, -1, 1, 1)
        return F.pad(out - value, pad) + value


class OneByOneKxK(nn.Module):
    """DBB's 1x1 -> k x k branch: ``BN(conv_kxk(BNAndPad(conv_1x1(x))))``, both convs grouped alike."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        norm_layer: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.groups = groups
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, groups=groups, bias=False)
        self.pad = BNAndPad(mid_channels, kernel_size // 2, norm_layer)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, kernel_size, stride, 0, groups=groups, bias=False)
        self.bn = norm_layer(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv2(self.pad(self.conv1(x))))

    def kernel_and_bias(self) -> Branch:
        first = fold_norm(self.conv1.weight, None, self.pad.bn)
        return fold_norm(*compose_1x1_kxk(*first, self.conv2.weight.double(), None, self.groups), self.bn)


class AvgPoolBranch(nn.Module):
    """DBB's pooling branch: ``BN(avgpool_kxk(x'))``, ``x' = BNAndPad(conv_1x1(x))`` unless the block is
    depthwise with ``in_channels == out_channels`` (then the input is pooled directly, zero-padded;
    ``count_include_pad=True`` either way)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        norm_layer: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.channels, self.kernel_size, self.groups = out_channels, kernel_size, groups
        # depthwise (one channel per group, in == out): pool the input itself; otherwise map it to out_channels first
        pointwise = not groups == in_channels == out_channels
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=False) if pointwise else None
        self.pad = BNAndPad(out_channels, kernel_size // 2, norm_layer) if pointwise else None
        self.pool = nn.AvgPool2d(kernel_size, stride, 0 if pointwise else kernel_size // 2)
        self.bn = norm_layer(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv1 is not None and self.pad is not None:
            x = self.pad(self.conv1(x))
        return self.bn(self.pool(x))

    def kernel_and_bias(self) -> Branch:
        device = _stats_device(self.bn)
        pool = avgpool_kernel(self.channels, self.kernel_size, self.groups, dtype=torch.float64, device=device)
        if self.conv1 is None or self.pad is None:
            return fold_norm(pool, None, self.bn)
        first = fold_norm(self.conv1.weight, None, self.pad.bn)
        return fold_norm(*compose_1x1_kxk(*first, pool, None, self.groups), self.bn)


class _Scaled(nn.Module):
    """A per-output-channel scale ``s`` (shape ``(channels,)``, so no weight decay in reparam's parameter groups):
    a parameter when ``trainable``, else a buffer (RepOptimizer's constant scales). The state_dict key is ``scale``
    either way, so weights move between the two modes."""

    def __init__(self, channels: int, scale_init: float, trainable: bool) -> None:
        super().__init__()
        scale = torch.full((channels,), float(scale_init))
        if trainable:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    def _scaled(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale.reshape(1, -1, 1, 1)

    def _kernel_and_bias(self, kernel: torch.Tensor) -> Branch:
        scaled = scale_kernel(kernel, self.scale.to(kernel.dtype))
        return scaled, scaled.new_zeros(scaled.shape[0])


class ScaledConv(_Scaled):
    """``s * conv(x)``: a bias-free conv whose output channels are scaled by ``s`` (a linear_add branch).

    ``kernel_size`` and ``padding`` may be pairs (1xk, kx1 branches).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int = 1,
        groups: int = 1,
        scale_init: float = 1.0,
        trainable: bool = True,
    ) -> None:
        super().__init__(out_channels, scale_init, trainable)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._scaled(self.conv(x))

    def kernel_and_bias(self, dtype: torch.dtype = torch.float64) -> Branch:
        """``(s * K, 0)`` in ``dtype``: float64 for fusing, the training dtype for the per-step merge."""
        return self._kernel_and_bias(self.conv.weight.to(dtype))


class ScaledIdentity(_Scaled):
    """``s * x``: the identity with a per-channel scale (a linear_add branch; a 1x1 grouped identity kernel)."""

    def __init__(self, channels: int, groups: int = 1, scale_init: float = 1.0, trainable: bool = True) -> None:
        super().__init__(channels, scale_init, trainable)
        self.channels, self.groups = channels, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._scaled(x)

    def kernel_and_bias(self, dtype: torch.dtype = torch.float64) -> Branch:
        """``(s * I, 0)`` in ``dtype``, ``I`` the 1x1 grouped identity kernel, built on the scale's device."""
        return self._kernel_and_bias(
            identity_kernel(self.channels, 1, self.groups, dtype=dtype, device=self.scale.device)
        )
