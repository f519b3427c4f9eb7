"""Pure tensor algebra for structural reparameterization.

Every function here takes and returns tensors; none touches module state. They follow the style of
``torch.nn.utils.fusion``: small, one formula each, written in the docstring.

Precision: the formulas are evaluated in at least float64 and returned in the dtype and on the
device of the weight they were given. Callers that sum several branches (the blocks' branches) pass
float64 tensors in and cast once at the very end, so rounding happens a single time. The exceptions are
the elementwise steps ``scale_kernel``, ``pad_kernel`` and ``sum_branches``: they compute in the dtype
they are given, because the linear_add block also runs them in every training step, in the training
dtype (fusing passes float64 as above).

Nothing here detaches: the functions are differentiable, so a regularizer or quantization-aware
training can use a block's equivalent kernel as part of the graph.

A "branch" is a ``(kernel, bias)`` pair meaning ``conv2d(x, kernel, padding=d*(k//2)) + bias``: every
kernel of one block is centred on the same output pixel, so branches add.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "bn_statistics",
    "fold_bn",
    "pad_kernel",
    "identity_kernel",
    "avgpool_kernel",
    "regroup_kernel",
    "scale_kernel",
    "compose_1x1_kxk",
    "compose_kxk_1x1",
    "sum_branches",
]

Branch = tuple[torch.Tensor, torch.Tensor]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """The tensor in float64, or wider if it already is (complex, say)."""
    return t.to(torch.promote_types(t.dtype, torch.float64))


def bn_statistics(
    bn: nn.Module,
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None, torch.Tensor | None]:
    """(running_mean, running_var, eps, gamma, beta) of any BatchNorm, SyncBatchNorm included.

    ``gamma`` and ``beta`` are ``None`` for ``affine=False``. Raises ``ValueError`` when the BN
    keeps no running statistics (``track_running_stats=False``): eval-mode BN is then not a fixed
    affine map, so there is nothing exact to fold.
    """
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f"expected a BatchNorm module, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"{type(bn).__name__}({bn.num_features}) has no running statistics "
            "(track_running_stats=False); build it with track_running_stats=True to fuse it"
        )
    return bn.running_mean, bn.running_var, float(bn.eps), bn.weight, bn.bias


def fold_bn(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    gamma: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
) -> Branch:
    """Fold an eval-mode BatchNorm into the conv that precedes it.

    With ``sigma = sqrt(running_var + eps)`` and per output channel ``o``::

        W'[o] = W[o] * gamma[o] / sigma[o]
        b'[o] = beta[o] + (b[o] - running_mean[o]) * gamma[o] / sigma[o]

    ``b = 0`` when the conv has no bias; ``gamma = 1, beta = 0`` for ``affine=False``.
    Returns ``(W', b')`` in the dtype and on the device of ``weight``.
    """
    w = _wide(weight)
    mean = _wide(running_mean).to(w.device)
    var = _wide(running_var).to(w.device)
    b = torch.zeros_like(mean) if bias is None else _wide(bias).to(w.device)
    g = torch.ones_like(mean) if gamma is None else _wide(gamma).to(w.device)
    beta_ = torch.zeros_like(mean) if beta is None else _wide(beta).to(w.device)

    scale = g / torch.sqrt(var + eps)
    folded_w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    folded_b = beta_ + (b - mean) * scale
    return folded_w.to(weight.dtype), folded_b.to(weight.dtype)


def pad_kernel(kernel: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Centre a smaller odd kernel (square or not: 1x1, 1xk, kx1, ...) inside a ``size`` kernel of zeros.

    A ``jh x jw`` conv with padding ``(d*(jh//2), d*(jw//2))`` equals a ``kh x kw`` conv with padding
    ``(d*(kh//2), d*(kw//2))`` whose kernel is the small one zero-padded by ``(k - j) / 2`` on each side
    (same stride, same dilation ``d``). That is how ACNet's 1xk and kx1 branches join a k x k one.
    """
    th, tw = (size, size) if isinstance(size, int) else size
    kh, kw = kernel.shape[-2:]
    if kh > th or kw > tw:
        raise ValueError(f"kernel {kh}x{kw} does not fit in {th}x{tw}")
    if (th - kh) % 2 or (tw - kw) % 2:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in {th}x{tw}: sizes differ by an odd number")
    ph, pw = (th - kh) // 2, (tw - kw) // 2
    return torch.nn.functional.pad(kernel, (pw, pw, ph, ph))


def identity_kernel(
    channels: int,
    kernel_size: int,
    groups: int = 1,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``k x k`` grouped-conv kernel that maps ``x`` to ``x`` (stride 1, padding ``k//2``).

    Shape ``(C, C/g, k, k)``; ``K[i, i mod (C/g), k//2, k//2] = 1``, zeros elsewhere. Output channel
    ``i`` sits in group ``i // (C/g)`` and sees that group's inputs; input ``i`` is the
    ``i mod (C/g)``-th of them. Built directly in ``dtype`` on ``device``.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"identity needs an odd kernel_size, got {kernel_size}")
    if channels % groups:
        raise ValueError(f"groups={groups} does not divide channels={channels}")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kernel_size, kernel_size, dtype=dtype, device=device)
    out = torch.arange(channels, device=device)
    kernel[out, out % per_group, kernel_size // 2, kernel_size // 2] = 1
    return kernel


def avgpool_kernel(
    channels: int,
    kernel_size: int,
    groups: int = 1,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``AvgPool2d(k, stride, padding, count_include_pad=True)`` as a grouped ``k x k`` conv kernel.

    Shape ``(C, C/g, k, k)``; ``K[i, i mod (C/g), :, :] = 1 / k^2``, zeros elsewhere: each channel is
    averaged with itself only, zero padding counted in the divisor as ``count_include_pad`` does.
    """
    identity = identity_kernel(channels, 1, groups, dtype=dtype, device=device)
    return identity.repeat(1, 1, kernel_size, kernel_size) / kernel_size**2


def regroup_kernel(kernel: torch.Tensor, groups: int, new_groups: int) -> torch.Tensor:
    """A ``groups``-grouped kernel as the same conv with ``new_groups`` groups (``new_groups`` divides ``groups``).

    Shape ``(O, C/g, kh, kw) -> (O, C/g', kh, kw)``. Output ``o`` lies in old group ``q = o // (O/g)``;
    in the coarser grouping its old inputs sit at offset ``(q mod (g/g')) * C/g`` and the rest are
    zeros (block-diagonal embedding). Used to add a depthwise identity to a dense conv, say.
    """
    if groups == new_groups:
        return kernel
    if groups % new_groups:
        raise ValueError(f"cannot regroup from {groups} to {new_groups} groups: {new_groups} must divide {groups}")
    out_ch, in_per_group = kernel.shape[:2]
    ratio = groups // new_groups
    regrouped = kernel.new_zeros(out_ch, in_per_group * ratio, *kernel.shape[2:])
    old_group = torch.arange(out_ch, device=kernel.device) // (out_ch // groups)
    offset = (old_group % ratio) * in_per_group
    cols = offset[:, None] + torch.arange(in_per_group, device=kernel.device)[None, :]
    rows = torch.arange(out_ch, device=kernel.device)[:, None].expand_as(cols)
    return regrouped.index_put((rows, cols), kernel)


def scale_kernel(kernel: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A conv followed by a per-output-channel scale ``s`` (shape ``(O,)``) is one conv::

        K'[o] = s[o] * K[o]          so that  s * conv(x, K) = conv(x, K')

    Computed in the dtype the two tensors promote to (no widening): the linear_add block calls it in
    every training step in the training dtype, and with float64 tensors when it fuses.
    """
    if scale.dim() != 1 or scale.shape[0] != kernel.shape[0]:
        raise ValueError(f"scale must have one entry per output channel ({kernel.shape[0]}), got {tuple(scale.shape)}")
    return kernel * scale.reshape(-1, *([1] * (kernel.dim() - 1)))


def compose_1x1_kxk(
    first_kernel: torch.Tensor,
    first_bias: torch.Tensor | None,
    second_kernel: torch.Tensor,
    second_bias: torch.Tensor | None,
    groups: int = 1,
) -> Branch:
    """A 1x1 conv ``(K1, b1)`` followed by a ``k x k`` conv ``(K2, b2)``, both with ``groups``, as one conv.

    Per group, with ``m`` over the intermediate channels::

        K[o, c, :, :] = sum_m K2[o, m, :, :] * K1[m, c]
        b[o]          = b2[o] + sum_{m, i, j} K2[o, m, i, j] * b1[m]

    Exact when the ``k x k`` conv sees ``b1`` where it pads (DBB's BN-and-pad layer), or pads nothing,
    or ``b1 = 0``: the fused conv then pads the input with zeros as usual. The 1x1 must have stride 1;
    the result has the second conv's stride and dilation.
    """
    k1, k2 = _wide(first_kernel), _wide(second_kernel)
    mid, in_per_group = k1.shape[:2]
    out_ch, mid_per_group, kh, kw = k2.shape
    if k1.shape[2:] != (1, 1):
        raise ValueError(f"first conv must be 1x1, got {tuple(k1.shape[2:])}")
    if mid_per_group * groups != mid:
        raise ValueError(
            f"channel mismatch: first conv has {mid} outputs, second takes {mid_per_group} x {groups} groups"
        )
    a = k1.reshape(groups, mid // groups, in_per_group)
    b = k2.reshape(groups, out_ch // groups, mid_per_group, kh, kw)
    kernel = torch.einsum("gomhw,gmc->gochw", b, a).reshape(out_ch, in_per_group, kh, kw)
    bias = torch.zeros(out_ch, dtype=kernel.dtype, device=kernel.device)
    if first_bias is not None:
        bias = bias + torch.einsum("gomhw,gm->go", b, _wide(first_bias).reshape(groups, -1)).reshape(out_ch)
    if second_bias is not None:
        bias = bias + _wide(second_bias)
    return kernel, bias


def compose_kxk_1x1(
    first_kernel: torch.Tensor,
    first_bias: torch.Tensor | None,
    second_kernel: torch.Tensor,
    second_bias: torch.Tensor | None,
    groups: int = 1,
) -> Branch:
    """A ``k x k`` conv ``(K1, b1)`` followed by a 1x1 conv ``(K2, b2)`` (stride 1, no padding), as one conv.

    Per group::

        K[o, c, :, :] = sum_m K2[o, m] * K1[m, c, :, :]
        b[o]          = b2[o] + sum_m K2[o, m] * b1[m]

    Always exact: a 1x1 conv without padding mixes channels pixel by pixel. The result has the first
    conv's stride, padding and dilation.
    """
    k1, k2 = _wide(first_kernel), _wide(second_kernel)
    mid, in_per_group, kh, kw = k1.shape
    out_ch, mid_per_group = k2.shape[:2]
    if k2.shape[2:] != (1, 1):
        raise ValueError(f"second conv must be 1x1, got {tuple(k2.shape[2:])}")
    if mid_per_group * groups != mid:
        raise ValueError(
            f"channel mismatch: first conv has {mid} outputs, second takes {mid_per_group} x {groups} groups"
        )
    a = k1.reshape(groups, mid // groups, in_per_group, kh, kw)
    b = k2.reshape(groups, out_ch // groups, mid_per_group)
    kernel = torch.einsum("gom,gmchw->gochw", b, a).reshape(out_ch, in_per_group, kh, kw)
    bias = torch.zeros(out_ch, dtype=kernel.dtype, device=kernel.device)
    if first_bias is not None:
        bias = bias + torch.einsum("gom,gm->go", b, _wide(first_bias).reshape(groups, -1)).reshape(out_ch)
    if second_bias is not None:
        bias = bias + _wide(second_bias)
    return kernel, bias


def sum_branches(branches: Iterable[Branch]) -> Branch:
    """Parallel linear branches with equal kernel shapes are one conv: ``K = sum K_i, b = sum b_i``."""
    branches = list(branches)
    if not branches:
        raise ValueError("nothing to sum: no branches")
    shape = branches[0][0].shape
    for kernel, _ in branches[1:]:
        if kernel.shape != shape:
            raise ValueError(f"branch kernels differ in shape: {tuple(shape)} vs {tuple(kernel.shape)}")
    kernel = torch.stack([k for k, _ in branches]).sum(0)
    bias = torch.stack([b for _, b in branches]).sum(0)
    return kernel, bias
