"""The training epoch's loss and accuracy, accumulated on the device at the cost of a few tiny kernels per step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchmetrics import Metric

__all__ = ["EpochStats", "MeanLoss", "TrainingStats"]


@dataclass  # not frozen: torchmetrics maps over the result (squeezing scalars), which a frozen dataclass refuses
class EpochStats:
    """Mean loss (weighted by batch size) and top-1 accuracy over every sample seen, across processes."""

    loss: torch.Tensor
    acc: torch.Tensor


class TrainingStats(Metric):
    """Sum of losses, correct predictions and samples, summed across processes when computed.

    One ``update`` is three in-place additions on the device: no host sync and none of the input checking and
    formatting of ``MulticlassAccuracy``/``MeanMetric`` (over a millisecond per step on a CPU, more than a small
    network's whole step). The accuracy is micro-averaged top-1 (the fraction of samples whose arg-max logit is the
    label), as ``MulticlassAccuracy(average="micro")`` computes it.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("loss_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    # the states add_state registered, as tensors (Metric's __getattr__ would say Tensor | Module)
    loss_sum: torch.Tensor
    correct: torch.Tensor
    total: torch.Tensor

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        n = target.numel()
        self.loss_sum += loss.detach() * n  # the batch mean times its size: the epoch mean weights batches by size
        self.correct += (logits.detach().argmax(dim=-1) == target).sum()
        self.total += n

    def compute(self) -> EpochStats:
        total = self.total.clamp(min=1)
        return EpochStats(loss=self.loss_sum / total, acc=self.correct / total)


class MeanLoss(Metric):
    """Mean of batch losses weighted by batch size, over every image of every process.

    Lightning's ``self.log(..., sync_dist=True)`` divides the processes' mean loss sum by their mean image count,
    averaged as an integer: with shares of 21 and 20 images (:class:`~reparam.data.datamodule.EvalShard`) that is
    20, and the recorded loss was 41/40 of the true mean (Lightning 2.6; Lightning-AI/pytorch-lightning#21859).
    Summing losses and counts across processes weights each image once. A NaN stays NaN.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("loss_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    loss_sum: torch.Tensor
    total: torch.Tensor

    def update(self, loss: torch.Tensor, n: int) -> None:
        self.loss_sum += loss.detach().double() * n  # the batch mean times its size
        self.total += n

    def compute(self) -> torch.Tensor:
        return (self.loss_sum / self.total.clamp(min=1)).float()
