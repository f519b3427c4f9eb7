"""Data: CIFAR-10/100 (own safe pickle reader), the embedded digits demo, standard and fast pipelines."""

from .datamodule import ArrayDataset, ImageDataModule
from .fast import TensorBatchLoader, random_crop_flip, random_erase
from .sources import CIFAR, ImageArrays, download_cifar, load_digits32, load_source, read_cifar

__all__ = [
    "CIFAR",
    "ArrayDataset",
    "ImageArrays",
    "ImageDataModule",
    "TensorBatchLoader",
    "download_cifar",
    "load_digits32",
    "load_source",
    "random_crop_flip",
    "random_erase",
    "read_cifar",
]
