"""The finite-loss guard's warning for a validation loss that is finite but far above a uniform guess's."""

import logging
import math
from types import SimpleNamespace

import torch
from torchmetrics.classification import MulticlassAccuracy

from reparam.callbacks import FiniteLossGuard


def _validated(guard: FiniteLossGuard, loss: float, epoch: int = 0, sanity: bool = False) -> None:
    trainer = SimpleNamespace(
        callback_metrics={"val/loss": torch.tensor(loss)},
        current_epoch=epoch,
        sanity_checking=sanity,
        is_global_zero=True,
    )
    guard.on_validation_end(trainer, SimpleNamespace(val_acc=MulticlassAccuracy(3)))  # type: ignore[arg-type]


def test_a_diverging_but_finite_validation_loss_is_warned_about_once(caplog) -> None:
    """A user's fine-tune reached logits of 1e14 (validation loss 6.1e12, chance accuracy) without a word."""
    guard = FiniteLossGuard()
    with caplog.at_level(logging.WARNING, logger="reparam.callbacks"):
        _validated(guard, 2.5)  # an early epoch's loss: above ln 3, far below 100 x
        _validated(guard, 6.1e12, sanity=True)  # the sanity check's untrained weights: not a verdict
        assert caplog.records == []
        _validated(guard, 6.1e12, epoch=1)
        _validated(guard, 7e12, epoch=2)
    (record,) = caplog.records
    assert record.getMessage() == (
        f"the validation loss is 6.1e+12 at epoch 1, {6.1e12 / math.log(3):.3g} times a uniform guess's (ln 3 = 1.10): "
        "training is diverging (the logits are huge); lower optimizer.lr, add warm-up (scheduler.warmup_epochs) or "
        "clip gradients (trainer.gradient_clip_val=1.0)"
    )
