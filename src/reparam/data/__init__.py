"""Data: a registry of datasets (CIFAR-10/100 with an own safe pickle reader, the embedded digits demo, image
folders of any size), one datamodule, standard and fast pipelines."""

from .datamodule import ArrayDataset, ImageDataModule
from .fast import TensorBatchLoader, random_crop_flip, random_erase
from .imagefolder import BadImageError, ImageFolderSource, load_image
from .registry import DATASETS, ArraySplit, DatasetSource, FileSplit, SourceSplits, register_dataset
from .sources import CIFAR, ImageArrays, download_cifar, load_digits32, load_source, read_cifar

__all__ = [
    "DATASETS",
    "ArraySplit",
    "FileSplit",
    "SourceSplits",
    "BadImageError",
    "DatasetSource",
    "ImageFolderSource",
    "load_image",
    "register_dataset",
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
