"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_cosine", "constant"]


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1.0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up from ~0 to the base LR over ``warmup_epochs``, then cosine decay to
    ``min_lr_ratio * base_lr`` at ``total_steps``."""
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    decay = max(total_steps - warmup, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min((step - warmup) / decay, 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int) -> LambdaLR:
    """No schedule: the base LR throughout."""
    return LambdaLR(optimizer, lambda step: 1.0)
