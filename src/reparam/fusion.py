"""Pure tensor algebra for structural reparameterization.

Every function here takes and returns tensors; none touches module state. They follow the style of
``torch.nn.utils.fusion``: small, one formula each, written in the docstring.

Precision: the formulas are evaluated in at least float64 and returned in the dtype and on the
device of the weight they were given. Callers that sum several branches (``RepVGGBlock``) pass
float64 tensors in and cast once at the very end, so rounding happens a single time.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "bn_statistics",
    "fold_bn",
    "pad_kernel",
    "identity_kernel",
    "sum_branches",
]

Branch = tuple[torch.Tensor, torch.Tensor]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """The tensor in float64, or wider if it already is (complex, say)."""
    return t.to(torch.promote_types(t.dtype, torch.float64))


def bn_statistics(
    bn: _BatchNorm,
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


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Centre a smaller odd kernel inside a ``size x size`` kernel of zeros.

    A ``j x j`` conv with padding ``j//2`` equals a ``k x k`` conv with padding ``k//2`` whose kernel
    is the ``j x j`` one zero-padded by ``(k - j) / 2`` on each side (same stride, same dilation).
    """
    kh, kw = kernel.shape[-2:]
    if kh > size or kw > size:
        raise ValueError(f"kernel {kh}x{kw} does not fit in {size}x{size}")
    if (size - kh) % 2 or (size - kw) % 2:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in {size}x{size}: sizes differ by an odd number")
    ph, pw = (size - kh) // 2, (size - kw) // 2
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
