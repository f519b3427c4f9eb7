"""The dataset registry: each source says what it reads and how its splits come to be.

A source (one class, registered by name like the blocks and the deploy targets) states its class names, how to read
its train / val / test splits, its native image size, its default validation split, its normalization and which
``data.*`` options it reads. :class:`reparam.data.ImageDataModule` does the rest (held-out validation, transforms,
loaders, the recorded preprocessing) for every source alike. Adding a dataset is one class here and one file in
``configs/data/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from ..errors import UserError

__all__ = [
    "DATASETS",
    "ArraySplit",
    "DatasetSource",
    "FileSplit",
    "SourceSplits",
    "register_dataset",
    "COMMON_OPTIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "dataset_source",
    "refuse_unread_options",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# options every source reads (batching, loaders, the split and the flip): never refused
COMMON_OPTIONS = frozenset(
    {
        "dataset",
        "num_classes",
        "batch_size",
        "eval_batch_size",
        "val_size",
        "split_seed",
        "augment",
        "hflip",
        "erase_prob",
        "pipeline",
        "num_workers",
        "pin_memory",
        "persistent_workers",
    }
)


class ArraySplit(NamedTuple):
    """Images held in memory: uint8 ``(N, H, W, 3)`` and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def subset(self, index: np.ndarray) -> ArraySplit:
        return ArraySplit(self.images[index], self.labels[index])


class FileSplit(NamedTuple):
    """Images left on disk, read by DataLoader workers: one path per image and int64 labels."""

    paths: tuple[str, ...]
    labels: np.ndarray

    def subset(self, index: np.ndarray) -> FileSplit:
        return FileSplit(tuple(self.paths[i] for i in index), self.labels[index])


@dataclass
class SourceSplits:
    """What a source read: ``val`` / ``test`` None where the source has no such split (the datamodule then holds
    validation out of ``train`` with ``data.val_size``, and tests on the validation split)."""

    train: ArraySplit | FileSplit
    classes: list[str]
    val: ArraySplit | FileSplit | None = None
    test: ArraySplit | FileSplit | None = None
    skipped: tuple[str, ...] = ()  # files left out as unreadable (data.skip_bad_images=true)


class DatasetSource:
    """One dataset. Subclasses set the class attributes and implement :meth:`read`.

    ``options``: the ``data.*`` options this source reads beyond :data:`COMMON_OPTIONS`; any other one set on the
    command line is an error (``data.data_dir`` with ``data=digits`` would otherwise be silently ignored).
    ``native_size``: ``(H, W)`` of every image, or None when images come in any size (``data.image_size`` decides).
    ``normalization``: ``"train_split"`` (mean/std measured on the training split) or ``"imagenet"``.
    """

    name: ClassVar[str] = ""
    options: ClassVar[frozenset[str]] = frozenset()
    native_size: ClassVar[tuple[int, int] | None] = None
    default_val_size: ClassVar[int | float] = 0.1
    normalization: ClassVar[str] = "train_split"
    in_memory: ClassVar[bool] = True  # the fast pipeline holds the whole dataset on the device
    fixed_num_classes: ClassVar[int | None] = None  # the class count when the dataset fixes it (CIFAR-10: 10)
    # why there is no test split, when :meth:`read` may return none (said beside the test accuracy)
    no_test_split: ClassVar[str] = "has no test split"

    def __init__(self, **options: Any) -> None:
        self.opts = options

    def prepare(self) -> None:
        """Download, where the source can (``prepare_data``: one process)."""

    def read(self) -> SourceSplits:
        raise NotImplementedError

    def num_classes(self) -> int | None:
        """The class count without reading the images (None: only :meth:`read` knows)."""
        return self.fixed_num_classes

    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the model's input: the native size, else ``data.image_size`` (square; 224 when unset)."""
        if self.native_size is not None:
            return self.native_size
        if "image_size" not in self.options:
            raise UserError(
                f"dataset '{self.name}' has images of any size (native_size = None) but does not read "
                "data.image_size: add 'image_size' to its options, or override input_size()"
            )
        size = int(self.opts.get("image_size") or 224)
        return (size, size)

    @classmethod
    def example_data(cls, root: Path) -> dict[str, Any]:
        """Write a few images of this dataset, in its real format, under ``root`` and return the ``data.*`` settings
        that read them: the experiment tests run every experiment on it under ``fast_dev_run``
        (``tests/integration/test_configs.py``), so a new dataset is tested without a line of test code."""
        raise NotImplementedError(
            f"dataset '{cls.name}' has no example_data(root): write a few images in its format there and return "
            "the data.* settings that read them, so the experiment tests can run experiments that use it"
        )


DATASETS: dict[str, type[DatasetSource]] = {}


def register_dataset(name: str) -> Callable[[type[DatasetSource]], type[DatasetSource]]:
    def add(cls: type[DatasetSource]) -> type[DatasetSource]:
        if name in DATASETS:
            raise ValueError(f"dataset '{name}' is already registered")
        cls.name = name
        DATASETS[name] = cls
        return cls

    return add


def dataset_source(name: str) -> type[DatasetSource]:
    if name not in DATASETS:
        raise UserError(
            f"unknown dataset '{name}'; choose one of {', '.join(sorted(DATASETS))} "
            "(train.py: data=<name>; deploy.py: data.dataset=<name>)"
        )
    return DATASETS[name]


def refuse_unread_options(source: type[DatasetSource], given: dict) -> None:
    """A ``data.*`` option set (not None/False) that ``source`` does not read is a user error, not ignored."""
    unread = sorted(
        k
        for k, v in given.items()
        if k not in COMMON_OPTIONS and k not in source.options and v is not None and v is not False
    )
    if unread:
        hint = (
            " (your own images: data=imagefolder data.data_dir=<folder with train/<class>/...>)"
            if "data_dir" in unread
            else ""
        )
        raise UserError(
            f"data={source.name} does not read data.{', data.'.join(unread)}; remove "
            f"{'it' if len(unread) == 1 else 'them'}{hint}"
        )
