"""In-memory sources: the CIFAR pickle files (read here, safely) and the embedded digits demo.

Each reader returns :class:`ImageArrays`: uint8 images ``(N, H, W, 3)`` and int64 labels, for a train and a test
split, plus class names; the registered sources (:mod:`reparam.data.registry`) hand them to the datamodule.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataNotFoundError, UserError
from .registry import ArraySplit, DatasetSource, SourceSplits, dataset_source, register_dataset

__all__ = [
    "ImageArrays",
    "CIFAR",
    "load_source",
    "read_cifar",
    "download_cifar",
    "load_digits32",
    "SOURCES",
    "CIFARSource",
    "DigitsSource",
]


@dataclass(frozen=True)
class CIFARInfo:
    folder: str
    url: str
    archive_md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int


CIFAR = {
    "cifar10": CIFARInfo(
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
    ),
    "cifar100": CIFARInfo(
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
    ),
}


@dataclass(frozen=True)
class ImageArrays:
    name: str
    train_images: np.ndarray  # (N, H, W, 3) uint8
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and builtin containers, and nothing that could run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell raw bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: a CIFAR file holds only arrays and lists")


def _load_pickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise UserError(
            f"{path} is not a readable CIFAR pickle ({err}); delete it and download the dataset again"
        ) from err
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR batch (holds a {type(obj).__name__}, expected a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_batches(
    folder: Path, files: tuple[str, ...], label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        path = folder / name
        batch = _load_pickle(path)
        if "data" not in batch or label_key not in batch:
            raise UserError(f"{path} lacks the '{label_key}' or 'data' entry; is this the right CIFAR variant?")
        data = np.asarray(batch["data"])
        y = np.asarray(batch[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(y) != len(data):
            raise UserError(
                f"{path}: expected uint8 data of shape (N, 3072) and N labels, got {data.dtype} {data.shape} "
                f"and {len(y)} labels; the file is corrupt, download the dataset again"
            )
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise UserError(f"{path}: labels outside 0..{num_classes - 1}; is this the right CIFAR variant?")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(y)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _holds_class_folders(root: Path) -> bool:
    """``root`` looks like a folder of one's own images: ``train/<class>/``, or class folders directly."""
    from .imagefolder import IMAGE_EXTENSIONS

    try:
        folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        train = root / "train"
        if train.is_dir():
            return any(p.is_dir() for p in train.iterdir())
        files = (f for folder in folders[:20] for f in itertools.islice(folder.iterdir(), 20))
        return any(f.suffix.lower() in IMAGE_EXTENSIONS for f in files)
    except OSError:
        return False


def _found_below(root: Path, folder_name: str, depth: int = 2) -> Path | None:
    """``folder_name`` in a folder up to ``depth`` levels below ``root`` (data.data_dir one level off), if any; a
    bounded look: the first 1,000 entries of a folder (a folder of a million images is not listed whole), hidden
    folders skipped, at most 200 folders a level."""
    level = [root]
    for _ in range(depth):
        below: list[Path] = []
        for parent in level:
            try:
                with os.scandir(parent) as scan:
                    entries = list(itertools.islice(scan, 1000))
            except OSError:
                continue
            folders = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
            if folder_name in folders:
                return parent / folder_name
            below += [parent / name for name in folders]
        level = below[:200]
    return None


def _missing_message(name: str, root: Path, folder: Path) -> str:
    info = CIFAR[name]
    found = _found_below(root, info.folder) if root.is_dir() else None
    if found is not None:
        return f"{name} not found at {folder}, but {found} exists: use data.data_dir={found.parent}"
    archive = root / Path(info.url).name
    if archive.is_file():
        return (
            f"{name} not found at {folder}, but {archive} is there: unpack it (tar xzf {archive} -C {root}), or add "
            "data.download=true, which checks and unpacks it without downloading"
        )
    if _holds_class_folders(root):  # one's own images, without data=imagefolder
        return (
            f"{name} not found in data.data_dir={root}, which holds folders of images: to train on your own images "
            f"add data=imagefolder (python train.py data=imagefolder data.data_dir={root}); "
            f"for {name} itself, see data.download=true"
        )
    return (
        f"{name} not found: looked for {folder} (from data.data_dir={root}). Ways out: "
        f"(1) download it here with data.download=true; "
        f"(2) on a machine with network, fetch {info.url}, unpack it and copy '{info.folder}' into {root}, "
        f"or point data.data_dir=/path/to/folder/holding/{info.folder}; "
        f"(3) try the pipeline offline on the embedded dataset: python train.py experiment=demo"
    )


def read_cifar(root: str | Path, name: str = "cifar10") -> ImageArrays:
    """Read the official ``cifar-10-batches-py`` / ``cifar-100-python`` pickle files under ``root``."""
    if name not in CIFAR:
        raise UserError(f"unknown CIFAR variant '{name}'; choose one of {sorted(CIFAR)}")
    info = CIFAR[name]
    root = Path(root).expanduser()
    folder = root / info.folder
    if not folder.is_dir() and (root.name == info.folder or (root / info.meta_file).is_file()):
        folder = root  # data_dir pointed at the folder of batch files itself (under any name)
    if not folder.is_dir():
        raise DataNotFoundError(_missing_message(name, root, folder))
    missing = [f for f in (*info.train_files, *info.test_files, info.meta_file) if not (folder / f).is_file()]
    nested = _found_below(folder, info.folder, depth=1) if missing else None
    if nested is not None and (nested / info.meta_file).is_file():  # unpacked once more inside the folder
        raise DataNotFoundError(
            f"{folder} holds no {name} batch files ({', '.join(missing)}), but {nested} has them: "
            f"use data.data_dir={folder}"
        )
    if missing:
        raise DataNotFoundError(
            f"{folder} is incomplete: missing {', '.join(missing)}; download {name} again (data.download=true) "
            "or copy the whole folder"
        )
    train_x, train_y = _read_batches(folder, info.train_files, info.label_key, info.num_classes)
    test_x, test_y = _read_batches(folder, info.test_files, info.label_key, info.num_classes)
    meta = _load_pickle(folder / info.meta_file)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(info.names_key, [])]
    if len(names) != info.num_classes:
        raise UserError(f"{folder / info.meta_file} lists {len(names)} class names, expected {info.num_classes}")
    return ImageArrays(name, train_x, train_y, test_x, test_y, names)


def download_cifar(root: str | Path, name: str = "cifar10") -> None:
    """Fetch and unpack the official archive (MD5-checked by torchvision) unless it is already there."""
    from torchvision.datasets.utils import download_and_extract_archive

    info = CIFAR[name]
    root = Path(root).expanduser()
    if (root / info.folder).is_dir():
        return
    try:
        download_and_extract_archive(info.url, str(root), md5=info.archive_md5)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise DataNotFoundError(
            f"could not download {name} from {info.url} ({err}). " + _missing_message(name, root, root / info.folder)
        ) from err


def load_digits32(test_fraction: float = 0.2, seed: int = 0) -> ImageArrays:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images), as 32x32 RGB uint8.

    Needs no network: the data ships inside scikit-learn. Each 8x8 image (values 0..16) is scaled
    to 0..255, upsampled bilinearly to 32x32 and repeated over three channels.
    """
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    images = x.clamp(0, 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return ImageArrays(
        "digits",
        np.ascontiguousarray(images[train]),
        labels[train],
        np.ascontiguousarray(images[test]),
        labels[test],
        [str(i) for i in range(10)],
    )


class _ArraysSource(DatasetSource):
    """A source whose whole dataset is one uint8 array of one size."""

    native_size = (32, 32)

    def arrays(self) -> ImageArrays:
        raise NotImplementedError

    def read(self) -> SourceSplits:
        arrays = self.arrays()
        return SourceSplits(
            train=ArraySplit(arrays.train_images, arrays.train_labels),
            classes=list(arrays.classes),
            test=ArraySplit(arrays.test_images, arrays.test_labels),
        )


class CIFARSource(_ArraysSource):
    """CIFAR-10 / CIFAR-100 from the official Python pickles under ``data.data_dir`` (``data.download=true``)."""

    options = frozenset({"data_dir", "download", "crop_padding"})
    default_val_size = 5000

    def prepare(self) -> None:
        if self.opts.get("download"):
            download_cifar(self.opts.get("data_dir") or "data", self.name)

    def arrays(self) -> ImageArrays:
        return read_cifar(Path(str(self.opts.get("data_dir") or "data")), self.name)

    @classmethod
    def example_data(cls, root: Path) -> dict[str, Any]:
        from .synthetic import write_cifar_like

        write_cifar_like(root, cls.name)
        return {"data_dir": str(root), "val_size": 40}


for _name in ("cifar10", "cifar100"):
    register_dataset(_name)(
        type(
            f"{_name.upper()}Source",
            (CIFARSource,),
            {"__doc__": CIFARSource.__doc__, "fixed_num_classes": CIFAR[_name].num_classes},
        )
    )


@register_dataset("digits")
class DigitsSource(_ArraysSource):
    """scikit-learn's bundled 8x8 digits as 32x32 RGB: reads no files, so no ``data_dir`` and no download."""

    options = frozenset({"crop_padding"})
    default_val_size = 0.1
    fixed_num_classes = 10

    def arrays(self) -> ImageArrays:
        return load_digits32()

    @classmethod
    def example_data(cls, root: Path) -> dict[str, Any]:
        return {}  # bundled with scikit-learn


SOURCES = ("cifar10", "cifar100", "digits")


def load_source(name: str, data_dir: str | Path, download: bool = False) -> ImageArrays:
    """The arrays of an in-memory source (CIFAR or digits)."""
    source = dataset_source(name)
    if not issubclass(source, _ArraysSource):
        raise UserError(f"{name} is not an in-memory dataset")
    options = {"data_dir": data_dir, "download": download} if issubclass(source, CIFARSource) else {}
    instance = source(**options)
    instance.prepare()
    return instance.arrays()
