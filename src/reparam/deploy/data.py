"""The test data a deploy run evaluates on: the training run's data config, the command line's values on top, checked
against what the model records (dataset kind, class names) and preprocessed by the recorded rule."""

from __future__ import annotations

from typing import Any

from ..data import ImageDataModule
from ..data.registry import COMMON_OPTIONS, DATASETS, dataset_source
from ..errors import UserError, reraise_as_user_error
from ..preprocess import Preprocessing
from .load import Loaded

__all__ = ["deploy_datamodule", "accuracy_warning", "ACCURACY_GAP"]

# settings that mean the same for any dataset; the others (val_size, split_seed, augmentation) were chosen for the
# training run's own dataset, and are dropped when the command line names another one
PORTABLE = {"data_dir", "download", "eval_batch_size", "num_workers", "pipeline", "pin_memory", "persistent_workers"}
# a test accuracy this far (a fraction) below the one recorded at training is flagged
ACCURACY_GAP = 0.05


def deploy_datamodule(loaded: Loaded, overrides: dict[str, Any]) -> ImageDataModule:
    """The datamodule, set up for testing with the recorded preprocessing; the data's identity (dataset kind, class
    count and names) is checked against the model's before anything is evaluated."""
    accepted = ImageDataModule.config_arguments(loaded.data.get("dataset"))  # its dataset's own options included
    params = {k: v for k, v in loaded.data.items() if k in accepted}
    given = {k: v for k, v in overrides.items() if v is not None}
    recorded = _recorded_input(loaded)
    trained_on = (recorded.dataset if recorded else "") or params.get("dataset")
    if trained_on and given.get("dataset") not in (None, trained_on):
        raise UserError(
            f"{loaded.source} was trained on data={trained_on}, not data.dataset={given['dataset']}; "
            "deploy evaluates a model on the data it was trained on: drop data.dataset, or deploy a model "
            f"trained on {given['dataset']}"
        )
    if given.get("dataset") not in (None, params.get("dataset")):
        params = {k: v for k, v in params.items() if k in PORTABLE}
    if "dataset" in params or "dataset" in given:  # a recorded option the dataset does not read (older runs): dropped
        source = dataset_source(given["dataset"] if "dataset" in given else params["dataset"])
        params = {k: v for k, v in params.items() if k in COMMON_OPTIONS or k in source.options}
    params.update(given)
    params.pop("num_classes", None)  # compared with the model's below, with its own message
    if "dataset" not in params:
        raise UserError(
            f"{loaded.source} records no data config; pass data.dataset={_dataset_names()} "
            "(and data.data_dir=/path/to/data)"
        )
    known = dataset_source(params["dataset"]).fixed_num_classes
    if known is not None:  # known before reading a single file
        _check_classes(loaded, params["dataset"], known)
    with reraise_as_user_error("data", ValueError, TypeError):
        dm = ImageDataModule(**params)
    dm.setup("test")
    _check_classes(loaded, dm.hparams["dataset"], dm.num_classes)
    if recorded is not None:
        if recorded.classes and tuple(dm.classes) != tuple(recorded.classes):
            raise UserError(_other_classes(loaded, recorded, dm))
        dm.use_recorded_preprocessing(recorded)
    return dm


def _recorded_input(loaded: Loaded) -> Preprocessing | None:
    if not loaded.input_info:
        return None
    try:
        return Preprocessing.from_record(loaded.input_info)
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(
            f"{loaded.source}: the recorded input (fused/config.json 'input') is unreadable ({err})"
        ) from err


def _other_classes(loaded: Loaded, recorded: Preprocessing, dm: ImageDataModule) -> str:
    ours, theirs = list(recorded.classes), dm.classes
    differ = next(
        (
            f"class {i} is '{a}' here but '{b}' in the model"
            for i, (a, b) in enumerate(zip(theirs, ours, strict=False))
            if a != b
        ),
        f"{len(theirs)} classes here, {len(ours)} in the model",
    )
    where = f" (data.data_dir={dm.hparams['data_dir']})" if dm.hparams.get("data_dir") else ""
    return (
        f"the test data{where} has other class names than {loaded.source} was trained on ({differ}); "
        "point data.data_dir at a folder with the model's class folders, or deploy the model trained on this data"
    )


def _check_classes(loaded: Loaded, dataset: str, num_classes: int) -> None:
    model_classes = loaded.spec.get("num_classes")
    if model_classes != num_classes:
        raise UserError(
            f"{loaded.source} is a {model_classes}-class model but {dataset} has {num_classes} classes; pass the "
            f"checkpoint that was trained on it, or data.dataset={_dataset_names()}"
        )


def _dataset_names() -> str:
    return "|".join(sorted(DATASETS))


def accuracy_warning(accuracy: float, recorded: float | None) -> str | None:
    """A line when the test accuracy is far below the one recorded at training, with the likely causes."""
    if recorded is None or accuracy >= recorded - ACCURACY_GAP:
        return None
    return (
        f"test accuracy {100 * accuracy:.2f}% is {100 * (recorded - accuracy):.1f} points below the "
        f"{100 * recorded:.2f}% recorded at training: the test images are likely not the data the model was "
        "trained on (another folder or split, other images under the same class names); the recorded "
        "preprocessing was used"
    )
