"""The LightningModule: a classifier around any network ``build_model`` can rebuild."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from .models import build_model

__all__ = ["ClassifierModule", "parameter_groups"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def parameter_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    """Weight decay on conv/linear weights only when ``no_decay_bn_bias`` (BN gammas/betas and biases,
    i.e. every parameter with fewer than 2 dims, get none, as in the RepVGG recipe)."""
    if not no_decay_bn_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ClassifierModule(L.LightningModule):
    """Cross-entropy classification with torchmetrics accuracy.

    Hyperparameters saved in checkpoints are primitives only (``net`` is a plain dict), so a
    checkpoint loads with ``torch.load(weights_only=True)``; the optimizer and scheduler factories are
    not saved (Hydra's config in the run directory records them).
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        no_decay_bn_bias: bool = True,
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        net = dict(net)
        self.save_hyperparameters({"net": net, "label_smoothing": label_smoothing,
                                   "no_decay_bn_bias": no_decay_bn_bias, "channels_last": channels_last,
                                   "compile": compile, "compile_backend": compile_backend})
        self.net = build_model(net)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        num_classes = int(net["num_classes"])
        # micro-averaged top-1: the fraction of images classified correctly
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile(backend=compile_backend)  # in place: state_dict keys stay free of '_orig_mod.'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _step(self, batch, metric: MulticlassAccuracy, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        metric(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=on_step, sync_dist=not on_step,
                 batch_size=len(y))
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, self.train_acc, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, self.val_acc, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, self.test_acc, "test")

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise RuntimeError("ClassifierModule was built without an optimizer factory; it can evaluate, not train")
        # the factory is a functools.partial (Hydra's _partial_); its weight decay goes to the decay group
        weight_decay = float(getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0))
        groups = parameter_groups(self.net, weight_decay, self.hparams.no_decay_bn_bias)
        optimizer = self.optimizer_factory(params=groups)
        if self.scheduler_factory is None:
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        scheduler = self.scheduler_factory(optimizer, total_steps=total, steps_per_epoch=max(total // epochs, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
