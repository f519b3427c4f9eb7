"""Training callbacks: fuse and verify at the end of fit; stop cleanly when the loss diverges."""

from __future__ import annotations

import copy
import logging
import math
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn

from . import __version__
from .artifact import write_fused_artifact
from .checkpoint import MODEL_SPEC_KEY, net_state, read_checkpoint
from .compare import ComparisonReport
from .convert import verify_equivalence
from .device import synchronize
from .ema import EMAWeights  # noqa: F401  (callbacks=ema's target: reparam.callbacks.EMAWeights)
from .errors import UserError
from .models import build_model, fuse_model, fuse_model_with_report

log = logging.getLogger(__name__)

__all__ = [
    "ConsoleProgressBar",
    "BestCheckpoint",
    "ReparameterizeCallback",
    "FusionResult",
    "FiniteLossGuard",
    "SpeedMonitor",
    "EMAWeights",
    "DivergenceError",
    "FINAL_WEIGHTS",
]


FINAL_WEIGHTS = "final weights (end of fit)"


@dataclass(frozen=True)
class FusionResult:
    """What the callback wrote: the fused folder, the weights it holds, and their verification in fp32 and fp64."""

    path: str
    source: str  # a checkpoint path, or FINAL_WEIGHTS
    float32: ComparisonReport
    float64: ComparisonReport


class DivergenceError(UserError):
    """The training loss became NaN or infinite."""


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint for the best ``monitor``, where a later checkpoint that ties with the best on it
    replaces it when its ``tie_break`` metric (the validation loss by default; lower wins) is lower.

    Lightning keeps the first of equal scores. A small validation split ties on accuracy for many epochs (15 images:
    one image is 6.7 points), and the first of them is the least trained: a new user's run shipped that one at 75%
    test accuracy where a later tie scored 100%. Only with ``save_top_k=1`` (the best checkpoint); the comparison
    state (``best_tie_value``) is saved in the checkpoint, so a resumed run breaks ties the same way.
    """

    def __init__(self, *args: Any, tie_break: str | None = "val/loss", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tie_break = tie_break
        self.best_tie_value: float | None = None  # the tie_break metric of the checkpoint kept

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key, so checkpoints written before this class (and after) restore into either
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        better = super().check_monitor_top_k(trainer, current)
        value = trainer.callback_metrics.get(self.tie_break) if self.tie_break else None
        tie_value = float(value) if value is not None else None
        if not better and self.save_top_k == 1 and current is not None and self.best_k_models:
            kept = self.best_k_models[self.kth_best_model_path]
            lower = tie_value is not None and self.best_tie_value is not None and tie_value < self.best_tie_value
            better = trainer.strategy.reduce_boolean_decision(bool(torch.eq(current, kept)) and lower)
        if better:  # the checkpoint about to be kept
            self.best_tie_value = tie_value
        return better

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_tie_value": self.best_tie_value}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_tie_value = state_dict.get("best_tie_value")


def pruned_at_epoch(trainer: L.Trainer) -> int | None:
    """The epoch a search's pruning callback (:class:`reparam.search.TrialPruning`) stopped this run at, if it did."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]  # set by Lightning's callback connector
        epoch = getattr(callback, "pruned_at_epoch", None)
        if epoch is not None:
            return int(epoch)
    return None


class ReparameterizeCallback(L.Callback):
    """At the end of fit (global rank zero only): fuse a copy of the network, verify it, write ``fused/``.

    The LightningModule is never modified, so ``trainer.test(ckpt_path=...)`` still reloads the train
    form. ``source='best'`` fuses the best checkpoint's weights when there is one (the weights that
    ``trainer.test(ckpt_path='best')`` evaluates), else the final weights.

    Verification runs on CPU on up to ``verify_samples`` real validation images in float32 (what
    users deploy), and on the first ``float64_samples`` of them in float64, which isolates the algebra
    from rounding: a wrong kernel shows on any image, and float64 convolutions have no oneDNN kernels
    (256 RepVGG-A0 images at 32x32 took 41 s on one core; 224x224 has 49x the pixels). A failed check
    raises and writes nothing.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        dirname: str = "fused",
        source: str = "best",
        verify_samples: int = 256,
        float64_samples: int = 16,
        atol: float | None = None,
        rtol: float | None = None,
    ) -> None:
        if source not in ("best", "last"):
            raise UserError(f"callbacks.reparameterize.source must be 'best' or 'last', got '{source}'")
        self.output_dir, self.dirname, self.source = output_dir, dirname, source
        if verify_samples < 1 or float64_samples < 1:
            raise UserError(
                "callbacks.reparameterize.verify_samples and float64_samples must be at least 1, got "
                f"{verify_samples} and {float64_samples}"
            )
        self.verify_samples, self.float64_samples, self.atol, self.rtol = verify_samples, float64_samples, atol, rtol
        self.result: FusionResult | None = None

    def _weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[dict, str]:
        ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if self.source == "best" and ckpt and Path(ckpt).is_file():
            return net_state(read_checkpoint(Path(ckpt))), ckpt
        net = pl_module.net
        assert isinstance(net, torch.nn.Module)  # ClassifierModule.net, the network being trained
        state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
        return state, FINAL_WEIGHTS

    def _validation_inputs(self, trainer: L.Trainer) -> torch.Tensor:
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's data connector
        if datamodule is None:
            raise RuntimeError(
                "ReparameterizeCallback needs the trainer to have a datamodule to draw validation images"
            )
        batches, count = [], 0
        for x, _ in datamodule.val_dataloader():
            batches.append(x.detach().to("cpu", torch.float32))
            count += len(x)
            if count >= self.verify_samples:
                break
        return torch.cat(batches)[: self.verify_samples]

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        pruned_at = pruned_at_epoch(trainer)
        if pruned_at is not None:  # a search trial its pruner stopped: no model anyone will deploy
            log.info(f"no fused model: the search's pruner stopped this trial at epoch {pruned_at}")
            return
        spec = dict(pl_module.hparams[MODEL_SPEC_KEY])
        state, source = self._weights(trainer, pl_module)
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise DivergenceError(
                f"refusing to write a fused model: weights from {source} hold NaN/inf (first: {bad[0]})"
            )
        train_form = build_model(spec)
        train_form.load_state_dict(state, strict=True)
        train_form.eval()
        inputs = self._validation_inputs(trainer)
        # the blocks' own fusion, or auto_fuse for model=custom (its report says what it merged and left alone)
        fused, fuse_report = fuse_model_with_report(spec, train_form, inputs[:2])
        if fuse_report is not None:
            log.info(fuse_report.summary())
        # a mismatch names the first block whose own fusion differs (verify_equivalence does)
        fp32 = verify_equivalence(train_form, fused, inputs, atol=self.atol, rtol=self.rtol)
        train_form64 = copy.deepcopy(train_form).double()
        inputs64 = inputs[: self.float64_samples].double()
        fp64 = verify_equivalence(train_form64, fuse_model(spec, train_form64, inputs64[:2]), inputs64)

        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's data connector
        best = getattr(trainer.checkpoint_callback, "best_model_score", None)
        config = {
            "model": spec,
            "input": datamodule.deploy_info() if hasattr(datamodule, "deploy_info") else {},
            "data": dict(datamodule.hparams) if datamodule is not None else {},
            "source_checkpoint": source,
            "metrics": {
                "best_val_acc": float(best) if best is not None else None,
                "epochs_trained": trainer.current_epoch,
                "global_step": trainer.global_step,
            },
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"reparam": __version__, "torch": torch.__version__, "python": platform.python_version()},
        }
        verification = {
            "inputs": f"{len(inputs)} validation images (float64: the first {len(inputs64)})",
            "float32": fp32.to_dict(),
            "float64": fp64.to_dict(),
        }
        if fuse_report is not None:
            verification["auto_fuse"] = fuse_report.to_dict()
        root = Path(self.output_dir or trainer.default_root_dir)
        path = write_fused_artifact(root / self.dirname, fused, config, verification, example_inputs=inputs[:2])
        self.result = FusionResult(str(path), source, fp32, fp64)
        for name, report in (("fp32", fp32), ("fp64", fp64)):
            for key in ("max_abs_diff", "argmax_agreement"):
                value = getattr(report, key)
                for logger in trainer.loggers:
                    logger.log_metrics({f"fusion/{name}_{key}": value}, step=trainer.global_step)


class FiniteLossGuard(L.Callback):
    """Stop with a clear message, naming the step, as soon as the training loss is NaN or infinite.

    All ranks agree through one small all-reduce per check, so DDP runs stop together instead of
    hanging. ``check_every_n_steps`` trades that sync for speed on fast GPU runs.

    A validation loss still finite but ``loss_warning_factor`` times above a uniform guess's (``ln(classes)``) is
    warned about once: a new user's fine-tune reached logits of 1e14 and a validation loss of 6e12 at chance accuracy,
    and nothing said so.
    """

    def __init__(self, check_every_n_steps: int = 1, loss_warning_factor: float = 100.0) -> None:
        self.every = max(int(check_every_n_steps), 1)
        self.loss_warning_factor = float(loss_warning_factor)
        self.warned = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning has put this validation's epoch values in callback_metrics (as ModelCheckpoint reads them)
        val_loss = trainer.callback_metrics.get("val/loss")
        metric = getattr(pl_module, "val_acc", None)
        classes = getattr(metric, "num_classes", None)
        if self.warned or trainer.sanity_checking or val_loss is None or not classes or classes < 2:
            return
        guess = math.log(classes)  # the cross-entropy of predicting every class alike
        loss = float(val_loss)
        if math.isfinite(loss) and loss > self.loss_warning_factor * guess:
            self.warned = True
            if trainer.is_global_zero:
                log.warning(
                    f"the validation loss is {loss:.3g} at epoch {trainer.current_epoch}, {loss / guess:.3g} times a "
                    f"uniform guess's (ln {classes} = {guess:.2f}): training is diverging (the logits are huge); lower "
                    "optimizer.lr, add warm-up (scheduler.warmup_epochs) or clip gradients "
                    "(trainer.gradient_clip_val=1.0)"
                )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx % self.every:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise DivergenceError(
                f"training diverged: the loss became {float(loss.detach().float())} at epoch {trainer.current_epoch}, "
                f"batch {batch_idx} (global step {max(trainer.global_step - 1, 0)}); lower optimizer.lr, add warm-up "
                "(scheduler.warmup_epochs) or clip gradients (trainer.gradient_clip_val=1.0). No fused model was "
                "written."
            )


class SpeedMonitor(L.Callback):
    """Training images/s and epoch time, logged as ``speed/*`` and kept for the run summary.

    The rate is sampled every ``every_n_steps`` training steps of the run, across epoch ends (epochs shorter than
    that were never sampled): one device sync per sample (a sync per step would stop the CPU from queueing work ahead
    of a fast GPU, the very thing being measured). The training clock runs from the first batch of an epoch (or after
    a validation) to the next validation or the epoch's end, so validation and checkpointing count in the epoch time,
    not in the training rates. Counts are global: the per-process batch times the world size.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every = max(int(every_n_steps), 1)
        self.train_images = 0
        self.train_time_s = 0.0
        self.time_to_best_s: float | None = None
        self._fit_start = self._epoch_start = self._segment_start = 0.0
        self._running = False
        self._epoch_images = 0
        self._epoch_train_time = 0.0
        # the sample window: its images, its training time in segments already stopped, and where the running
        # segment's share of it began (the segment's start, or the last sample in it)
        self._steps = self._window_images = 0
        self._window_time = self._window_mark = 0.0
        self._best_path: str | None = None
        self._last_epoch_end: float | None = None

    @property
    def train_images_per_s(self) -> float | None:
        return self.train_images / self.train_time_s if self.train_time_s > 0 else None

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        synchronize(pl_module.device)  # the clock must not run ahead of the queued GPU work
        return time.perf_counter()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self._steps = self._window_images = 0
        self._window_time = 0.0
        # a resumed run's best so far is not this run's: its time to best counts from the resume
        self._best_path = getattr(trainer.checkpoint_callback, "best_model_path", None) or None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the checkpoint callbacks run after this one (Lightning puts them last): the previous epoch's is saved now
        self._note_best(trainer)
        self._epoch_start = time.perf_counter()
        self._running, self._epoch_images, self._epoch_train_time = False, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:  # noqa: ANN001
        if not self._running:  # the first batch of the epoch, or the first after a validation
            self._segment_start = self._window_mark = self._now(pl_module)
            self._running = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001
        images = len(batch[0]) * trainer.world_size  # from the shape: no sync
        self._window_images += images
        self._epoch_images += images
        self._steps += 1
        if self._steps % self.every == 0:
            now = self._now(pl_module)
            window_time = self._window_time + (now - self._window_mark)
            if window_time > 0:
                self._log(trainer, {"speed/images_per_s": self._window_images / window_time})
            self._window_images, self._window_time, self._window_mark = 0, 0.0, now

    def _stop_clock(self, pl_module: L.LightningModule) -> None:
        if self._running:
            now = self._now(pl_module)
            self._epoch_train_time += now - self._segment_start
            self._window_time += now - self._window_mark
            self._running = False

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a validation inside fit (trainer.training is already False here: Lightning switched to validating)
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._stop_clock(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_clock(pl_module)
        now = time.perf_counter()
        self.train_images += self._epoch_images
        self.train_time_s += self._epoch_train_time
        rate = self._epoch_images / self._epoch_train_time if self._epoch_train_time > 0 else 0.0
        self._log(trainer, {"speed/epoch_time_s": now - self._epoch_start, "speed/epoch_images_per_s": rate})
        self._last_epoch_end = now

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._note_best(trainer)  # the last epoch's checkpoint

    def _note_best(self, trainer: L.Trainer) -> None:
        """When the best checkpoint changed since the last look, it is the last ended epoch's: the time to best is
        that epoch's end (looked at from the next epoch's start, once the checkpoint callbacks saved)."""
        best = getattr(trainer.checkpoint_callback, "best_model_path", None) or None
        if best and best != self._best_path:
            self._best_path = best
            if self._last_epoch_end is not None:  # else restored from a checkpoint after fit start: not this run's
                self.time_to_best_s = self._last_epoch_end - self._fit_start

    @staticmethod
    def _log(trainer: L.Trainer, metrics: dict[str, float]) -> None:
        # the epoch too, as Lightning adds it to self.log's rows: an epoch's last row shares its step with the next
        # epoch's first, and a resumed run keeps the rows of the epochs its checkpoint completed by their epoch
        row = {**metrics, "epoch": trainer.current_epoch}  # an int, as in Lightning's rows
        for logger in trainer.loggers:  # floats, straight to the loggers: nothing for Lightning to reduce or sync
            logger.log_metrics(row, step=trainer.global_step)


class ConsoleProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, closed where a run stops on Ctrl-C or SIGTERM: left open, tqdm printed it again at
    interpreter exit, after the error line and a stopped sweep's table."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        for stage in ("train", "val", "test", "predict"):
            try:
                bar = getattr(self, f"{stage}_progress_bar")
            except TypeError:  # Lightning raises this for a bar not made yet
                continue
            if not bar.disable:
                bar.close()
