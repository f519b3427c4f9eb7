"""Shared test helpers: non-trivial BN statistics and tiny model specs."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

TINY_SPEC = {"variant": None, "widths": [4, 8, 8, 16, 16], "depths": [1, 2, 1, 2, 1], "num_classes": 10}


@torch.no_grad()
def randomize_bn(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BN random running mean/var and gamma/beta, so folding is actually exercised."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            n = m.num_features
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            if m.affine:
                m.weight.copy_(torch.randn(n, generator=g) * 0.5 + 1)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model
