"""What ``python train.py`` does, given a composed config: build, fit, fuse, test, summarize."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from .artifact import atomic_write_json, update_fused_metrics
from .callbacks import FINAL_WEIGHTS, ReparameterizeCallback
from .checkpoint import read_checkpoint
from .errors import Preempted, UserError, reraise_as_user_error
from .module import ClassifierModule

__all__ = ["train", "build_components", "instantiate_group", "optimized_metric", "SUMMARY_FILE", "SUMMARY_METRICS"]

SUMMARY_FILE = "summary.json"
# the numbers in a training summary that a sweep may rank by, and which way is better
SUMMARY_METRICS = {"best_val_acc": "max", "test_acc": "max", "fusion_argmax_agreement": "max", "epochs": "max",
                   "fusion_fp32_max_abs_diff": "min", "fusion_fp64_max_abs_diff": "min"}


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Every ``_target_`` node of a config group such as ``logger`` or ``callbacks``, instantiated."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def build_components(cfg: DictConfig) -> tuple[L.LightningDataModule, ClassifierModule, L.Trainer]:
    """Datamodule, module and trainer from a composed train config (no fitting)."""
    with reraise_as_user_error("data config", ValueError, TypeError):
        datamodule = instantiate(cfg.data)
    net = OmegaConf.to_container(cfg.model, resolve=True)
    with reraise_as_user_error("model config", ValueError, TypeError):
        module = ClassifierModule(
            net=net,
            optimizer=instantiate(cfg.optimizer) if cfg.get("optimizer") else None,
            scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
            **OmegaConf.to_container(cfg.module, resolve=True),
        )
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    with reraise_as_user_error("trainer config", ValueError, TypeError):
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


def _resume_path(cfg: DictConfig) -> str | None:
    path = cfg.get("ckpt_path")
    if path is None and cfg.get("auto_resume"):
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if path is None:
        return None
    if not Path(path).is_file():
        raise UserError(f"ckpt_path={path} does not exist; point it at a checkpoint such as <run>/checkpoints/last.ckpt")
    read_checkpoint(Path(path))  # refuses unsafe, corrupt or foreign files with one clear line
    return str(path)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, fuse (through ReparameterizeCallback), test; return a summary of what was produced."""
    _check_optimized_metric(cfg)  # before hours of training, not after
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, module, trainer = build_components(cfg)
    if trainer.loggers:  # the whole resolved config, not only the module's hyperparameters
        config = OmegaConf.to_container(cfg, resolve=True)
        config.pop("hydra", None)
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_path(cfg))
    except SIGTERMException as err:  # a SystemExit with code 0: a scheduler would think the run finished; exit 143
        raise Preempted(
            f"training stopped by SIGTERM at epoch {trainer.current_epoch}, global step {trainer.global_step}; "
            f"no fused model was written. Resume with ckpt_path={Path(cfg.paths.output_dir) / 'checkpoints' / 'last.ckpt'} "
            f"or auto_resume=true hydra.run.dir={cfg.paths.output_dir}"
        ) from err

    checkpoint = trainer.checkpoint_callback
    best_path = getattr(checkpoint, "best_model_path", "") or ""
    summary: dict[str, Any] = {
        "status": "completed",
        "run_dir": str(cfg.paths.output_dir),
        "epochs": trainer.current_epoch,
        "best_val_acc": float(checkpoint.best_model_score) if checkpoint and checkpoint.best_model_score is not None else None,
        "best_checkpoint": best_path or None,
        "last_checkpoint": str(Path(checkpoint.dirpath) / "last.ckpt") if checkpoint and checkpoint.dirpath and (Path(checkpoint.dirpath) / "last.ckpt").is_file() else None,
    }
    fuser = next((c for c in trainer.callbacks if isinstance(c, ReparameterizeCallback)), None)
    if fuser is not None and fuser.result is not None:
        summary["fused_dir"] = fuser.result["path"]
        summary["fusion_fp32_max_abs_diff"] = fuser.result["float32"]["max_abs_diff"]
        summary["fusion_fp64_max_abs_diff"] = fuser.result["float64"]["max_abs_diff"]
        summary["fusion_argmax_agreement"] = fuser.result["float32"]["argmax_agreement"]
    if cfg.get("test"):
        ckpt = "best" if best_path else None  # fast_dev_run saves no checkpoint: test the final weights
        results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        summary["test_acc"] = float(results[0]["test/acc"]) if results else None
        summary["tested_weights"] = tested = best_path or FINAL_WEIGHTS
        if trainer.is_global_zero and fuser is not None and fuser.result and fuser.result["source"] == tested:
            # the fused model holds exactly the weights just tested: record their test accuracy with it
            update_fused_metrics(fuser.result["path"], {"test_acc": summary["test_acc"]})
    if trainer.is_global_zero:
        # what a sweep summary (reparam.sweep) and other tools read back
        atomic_write_json(Path(cfg.paths.output_dir) / SUMMARY_FILE, summary)
    summary["is_global_zero"] = trainer.is_global_zero
    _close_loggers(trainer)
    return summary


def _close_loggers(trainer: L.Trainer) -> None:
    """Lightning leaves a wandb run open (for reuse in the same script): finish it so an offline run is complete
    on disk (``wandb sync`` needs that) and a sweep's next job starts a run of its own."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            logger.experiment.finish()


def _check_optimized_metric(cfg: DictConfig) -> str | None:
    name = cfg.get("optimized_metric")
    if name and name not in SUMMARY_METRICS:
        raise UserError(f"optimized_metric={name} is not a training summary value; choose one of: "
                        f"{', '.join(SUMMARY_METRICS)}")
    return name or None


def optimized_metric(cfg: DictConfig, summary: dict[str, Any]) -> float | None:
    """The summary value named by ``cfg.optimized_metric``, returned to Hydra sweepers (e.g. Optuna)."""
    name = _check_optimized_metric(cfg)
    if name is None:
        return None
    value = summary.get(name)
    return None if value is None else float(value)
