"""Training callbacks: fuse and verify at the end of fit; stop cleanly when the loss diverges."""

from __future__ import annotations

import copy
import platform
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch

from . import __version__
from .artifact import write_fused_artifact
from .checkpoint import net_state, read_checkpoint
from .convert import verify_equivalence
from .errors import UserError
from .models import build_model, fuse_model

__all__ = ["ReparameterizeCallback", "FiniteLossGuard", "DivergenceError", "FINAL_WEIGHTS"]


FINAL_WEIGHTS = "final weights (end of fit)"


class DivergenceError(UserError):
    """The training loss became NaN or infinite."""


class ReparameterizeCallback(L.Callback):
    """At the end of fit (global rank zero only): fuse a copy of the network, verify it, write ``fused/``.

    The LightningModule is never modified, so ``trainer.test(ckpt_path=...)`` still reloads the train
    form. ``source='best'`` fuses the best checkpoint's weights when there is one (the weights that
    ``trainer.test(ckpt_path='best')`` evaluates), else the final weights.

    Verification runs on CPU on up to ``verify_samples`` real validation images, in float32 (what
    users deploy) and float64 (which isolates the algebra from rounding). A failed check raises and
    writes nothing.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        dirname: str = "fused",
        source: str = "best",
        verify_samples: int = 256,
        atol: float | None = None,
        rtol: float | None = None,
    ) -> None:
        if source not in ("best", "last"):
            raise UserError(f"callbacks.reparameterize.source must be 'best' or 'last', got '{source}'")
        self.output_dir, self.dirname, self.source = output_dir, dirname, source
        self.verify_samples, self.atol, self.rtol = verify_samples, atol, rtol
        self.result: dict | None = None

    def _weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[dict, str]:
        ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if self.source == "best" and ckpt and Path(ckpt).is_file():
            return net_state(read_checkpoint(Path(ckpt))), ckpt
        state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.net.state_dict().items()}
        return state, FINAL_WEIGHTS

    def _validation_inputs(self, trainer: L.Trainer) -> torch.Tensor:
        datamodule = trainer.datamodule
        if datamodule is None:
            raise RuntimeError("ReparameterizeCallback needs the trainer to have a datamodule to draw validation images")
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
        spec = dict(pl_module.hparams["net"])
        state, source = self._weights(trainer, pl_module)
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise DivergenceError(f"refusing to write a fused model: weights from {source} hold NaN/inf (first: {bad[0]})")
        train_form = build_model(spec)
        train_form.load_state_dict(state, strict=True)
        train_form.eval()
        inputs = self._validation_inputs(trainer)
        fused = fuse_model(spec, train_form, inputs[:2])  # the blocks' own fusion, or auto_fuse for model=custom
        fp32 = verify_equivalence(train_form, fused, inputs, atol=self.atol, rtol=self.rtol)
        train_form64 = copy.deepcopy(train_form).double()
        fp64 = verify_equivalence(train_form64, fuse_model(spec, train_form64, inputs[:2].double()), inputs.double())

        datamodule = trainer.datamodule
        best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
        config = {
            "model": spec,
            "input": datamodule.deploy_info() if hasattr(datamodule, "deploy_info") else {},
            "data": dict(datamodule.hparams) if datamodule is not None else {},
            "source_checkpoint": source,
            "metrics": {"best_val_acc": float(best) if best is not None else None,
                        "epochs_trained": trainer.current_epoch, "global_step": trainer.global_step},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"reparam": __version__, "torch": torch.__version__, "python": platform.python_version()},
        }
        verification = {"inputs": f"{len(inputs)} validation images", "float32": fp32.to_dict(), "float64": fp64.to_dict()}
        root = Path(self.output_dir or trainer.default_root_dir)
        path = write_fused_artifact(root / self.dirname, fused, config, verification, example_inputs=inputs[:2])
        self.result = {"path": str(path), "source": source, "float32": fp32.to_dict(), "float64": fp64.to_dict()}
        for name, report in (("fp32", fp32), ("fp64", fp64)):
            for key in ("max_abs_diff", "argmax_agreement"):
                value = getattr(report, key)
                for logger in trainer.loggers:
                    logger.log_metrics({f"fusion/{name}_{key}": value}, step=trainer.global_step)


class FiniteLossGuard(L.Callback):
    """Stop with a clear message, naming the step, as soon as the training loss is NaN or infinite.

    All ranks agree through one small all-reduce per check, so DDP runs stop together instead of
    hanging. ``check_every_n_steps`` trades that sync for speed on fast GPU runs.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        self.every = max(int(check_every_n_steps), 1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
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
                "(scheduler.warmup_epochs) or clip gradients (trainer.gradient_clip_val=1.0). No fused model was written."
            )
