"""The LightningModule: a classifier around any network ``build_model`` can rebuild."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from .checkpoint import MODEL_SPEC_KEY
from .device import device_of, place
from .metrics import MeanLoss, TrainingStats
from .models import build_model, input_size

__all__ = ["ClassifierModule", "parameter_groups", "COMPILE_MODES", "RUN_OVERRIDES_KEY"]

RUN_OVERRIDES_KEY = "run_overrides"  # the checkpoint entry holding the overrides of the command that trained it

# torch.compile modes; reduce-overhead and max-autotune record CUDA graphs on a GPU
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

Batch = tuple[torch.Tensor, torch.Tensor]  # images, labels
Network = Callable[[torch.Tensor], torch.Tensor]  # the module, or what torch.compile made of it
OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def parameter_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    """Weight decay on conv/linear weights only when ``no_decay_bn_bias`` (BN gammas/betas and biases,
    i.e. every parameter with fewer than 2 dims, get none, as in the RepVGG recipe)."""
    if not no_decay_bn_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ClassifierModule(L.LightningModule):
    """Cross-entropy classification with torchmetrics accuracy.

    ``model_spec`` is the network's description (the ``model`` config, completed: :func:`reparam.models.build_model`
    builds it as ``self.net``). Hyperparameters saved in checkpoints are primitives only (the spec is a plain dict,
    under ``model_spec``; checkpoints from before the rename hold it under ``net``, see
    :func:`reparam.checkpoint.model_spec_of`), so a checkpoint loads with ``torch.load(weights_only=True)``; the
    optimizer and scheduler factories are not saved (Hydra's config in the run directory records them).

    ``compile=True`` compiles the inner network for the training step only (``compile_mode="reduce-overhead"``:
    CUDA graphs on a GPU); evaluation runs the same weights eagerly, so validation and test batches of any size
    never recompile. The compiled module is not a registered child: checkpoint keys stay plain.
    ``step_metrics_in_progress_bar=False`` keeps the per-step loss out of the progress bar, whose every update
    reads it back from the GPU (a host sync per step that stops the CPU from running ahead).

    The training step adds as little as it can to the network's own work: the epoch's loss and accuracy are summed on
    the device (:class:`~reparam.metrics.TrainingStats`) and logged once per epoch, and the step loss is logged only
    on the steps whose values Lightning writes to the loggers (docs/gpu.md, "The template's own cost per step").
    """

    _train_net: Network | None  # set with object.__setattr__: not a registered child

    def __init__(
        self,
        model_spec: Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        no_decay_bn_bias: bool = True,
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
        compile_mode: str | None = None,
        step_metrics_in_progress_bar: bool = True,
    ) -> None:
        super().__init__()
        model_spec = dict(model_spec)
        if compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"module.compile_mode={compile_mode} is not a torch.compile mode; choose one of "
                f"{', '.join(str(m) for m in COMPILE_MODES)}"
            )
        self.save_hyperparameters(
            {
                MODEL_SPEC_KEY: model_spec,
                "label_smoothing": label_smoothing,
                "no_decay_bn_bias": no_decay_bn_bias,
                "channels_last": channels_last,
                "compile": compile,
                "compile_backend": compile_backend,
                "compile_mode": compile_mode,
                "step_metrics_in_progress_bar": step_metrics_in_progress_bar,
            }
        )
        self.net = build_model(model_spec)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        num_classes = int(model_spec["num_classes"])
        # micro-averaged top-1: the fraction of images classified correctly
        # training: loss and accuracy summed on the device per step, computed and logged once per epoch
        self.train_stats = TrainingStats()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # each image once across processes (Lightning's sync_dist truncates the mean image count: MeanLoss)
        self.val_loss = MeanLoss()
        self.test_loss = MeanLoss()
        if channels_last:
            self.net = place(self.net, device_of(self.net), channels_last=True)
        # one image: Lightning's model summary shows layer shapes and FLOPs from it (run eagerly, in eval mode)
        self.example_input_array = torch.zeros(1, *input_size(model_spec))
        # the training step's network; not a registered child, so state_dict keys stay free of '_orig_mod.'
        object.__setattr__(self, "_train_net", None)
        # the command line's overrides (train.py sets them): saved in every checkpoint, so a resume that builds
        # another network can say which settings built this one, even where .hydra/ was overwritten since
        self.run_overrides: list[str] | None = None

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams["channels_last"] else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._layout(x))

    def training_net(self) -> Network:
        """The network the training step calls: compiled once (lazily, on first use) when ``compile`` is set."""
        if self._train_net is None:
            net: Network = self.net
            if self.hparams["compile"]:
                # static shapes (training batches are all full: drop_last); recompiling per shape would re-record
                net = torch.compile(
                    self.net, backend=self.hparams["compile_backend"], mode=self.hparams["compile_mode"], dynamic=False
                )
            object.__setattr__(self, "_train_net", net)
            return net
        return self._train_net

    def _writes_step_metrics(self) -> bool:
        """Whether Lightning hands this training step's logged values to the loggers (every
        ``trainer.log_every_n_steps`` steps, once a stop is requested, every step of a fast_dev_run): ``self.log``
        costs Python work every call, so the step loss is logged on those steps only."""
        trainer = self._trainer
        if trainer is None:
            return True
        # Lightning's rule (its private _LoggerConnector.should_update_logs), from public trainer attributes;
        # Trainer.__init__ sets fast_dev_run and log_every_n_steps without declaring them
        every = int(getattr(trainer, "log_every_n_steps", 0))
        return bool(getattr(trainer, "fast_dev_run", False)) or (
            every > 0 and (trainer.should_stop or (trainer.global_step + 1) % every == 0)
        )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.hparams["compile"]:
            # a new iteration for CUDA graph trees: the previous step's graph outputs may be overwritten from here
            torch.compiler.cudagraph_mark_step_begin()
        logits = self.training_net()(self._layout(x))
        loss = self.criterion(logits, y)
        self.train_stats.update(logits, y, loss)  # on the device; before the next replay reuses the logits' memory
        if self._writes_step_metrics():
            # the step value unsynchronized (no collective per step under DDP)
            self.log(
                "train/loss_step",
                loss,
                on_step=True,
                on_epoch=False,
                batch_size=len(y),
                prog_bar=self.hparams["step_metrics_in_progress_bar"],
            )
        return loss

    def on_train_epoch_end(self) -> None:
        if self.train_stats.update_count == 0:  # no training batch this epoch
            return
        stats = self.train_stats.compute()  # once per epoch; summed across processes by torchmetrics
        # already global: sync_dist only averages identical values (and keeps Lightning's DDP warning away)
        self.log("train/loss_epoch", stats.loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/acc", stats.acc, on_step=False, on_epoch=True, sync_dist=True, prog_bar=True)
        self.train_stats.reset()

    def _eval_step(self, batch: Batch, metric: MulticlassAccuracy, loss: MeanLoss, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        metric.update(logits, y)
        loss.update(self.criterion(logits, y), len(y))
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        # how many images the accuracy is over (batch limits included; under DDP each image once: EvalShard): one
        # image is 1/n of it; filled on the device (a Python number would be copied there, which waits for the GPU,
        # every batch)
        images = y.new_full((), len(y), dtype=torch.float32)
        self.log(
            f"{stage}/images", images, on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True, batch_size=len(y)
        )
        return logits

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        # the logits: callbacks=ema scores them next to the raw weights' (on_validation_batch_end's outputs)
        return self._eval_step(batch, self.val_acc, self.val_loss, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_acc, self.test_loss, "test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_overrides is not None:
            checkpoint[RUN_OVERRIDES_KEY] = list(self.run_overrides)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        if self.optimizer_factory is None:
            raise RuntimeError("ClassifierModule was built without an optimizer factory; it can evaluate, not train")
        # the factory is a functools.partial (Hydra's _partial_); its weight decay goes to the decay group
        weight_decay = float(getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0))
        groups = parameter_groups(self.net, weight_decay, self.hparams["no_decay_bn_bias"])
        optimizer = self.optimizer_factory(params=groups)
        if self.scheduler_factory is None:
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        scheduler = self.scheduler_factory(optimizer, total_steps=total, steps_per_epoch=max(total // epochs, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
