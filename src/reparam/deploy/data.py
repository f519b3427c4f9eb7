"""The test data a deploy run evaluates on: the training run's data config, the command line's values on top."""

from __future__ import annotations

import inspect
from typing import Any

from ..data import ImageDataModule
from ..data.sources import CIFAR
from ..errors import UserError, reraise_as_user_error
from .load import Loaded

__all__ = ["deploy_datamodule"]

# settings that mean the same for any dataset; the others (val_size, split_seed, augmentation) were chosen for the
# training run's own dataset, and are dropped when the command line names another one
PORTABLE = {"data_dir", "download", "eval_batch_size", "num_workers", "pipeline", "pin_memory", "persistent_workers"}


def deploy_datamodule(loaded: Loaded, overrides: dict[str, Any]) -> ImageDataModule:
    """The datamodule, set up for testing; a model/data class-count mismatch is the first thing checked."""
    accepted = inspect.signature(ImageDataModule).parameters
    params = {k: v for k, v in loaded.data.items() if k in accepted}
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("dataset") not in (None, params.get("dataset")):
        params = {k: v for k, v in params.items() if k in PORTABLE}
    params.update(given)
    params.pop("num_classes", None)  # compared with the model's below, with its own message
    if "dataset" not in params:
        raise UserError(f"{loaded.source} records no data config; pass data.dataset=cifar10|cifar100|digits "
                        "(and data.data_dir=/path/to/data for CIFAR)")
    if params["dataset"] in CIFAR:  # known before reading a single file
        _check_classes(loaded, params["dataset"], CIFAR[params["dataset"]].num_classes)
    with reraise_as_user_error("data", ValueError, TypeError):
        dm = ImageDataModule(**params)
    dm.setup("test")
    _check_classes(loaded, dm.hparams.dataset, dm.num_classes)
    return dm


def _check_classes(loaded: Loaded, dataset: str, num_classes: int) -> None:
    model_classes = loaded.spec.get("num_classes")
    if model_classes != num_classes:
        raise UserError(
            f"{loaded.source} is a {model_classes}-class model but {dataset} has {num_classes} classes; pass the "
            "checkpoint that was trained on it, or data.dataset=cifar10|cifar100|digits"
        )
