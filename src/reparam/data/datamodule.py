"""One LightningDataModule for CIFAR-10, CIFAR-100 and the embedded digits demo."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from ..errors import UserError
from ..preprocess import Preprocessing
from .fast import ERASE_RATIO, ERASE_SCALE, TensorBatchLoader
from .sources import SOURCES, ImageArrays, load_source

__all__ = ["ImageDataModule", "ArrayDataset"]


class ArrayDataset(Dataset):
    """uint8 ``(N, H, W, C)`` images and labels; each item is ``(transform(CHW uint8 tensor), label)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1)
        return self.transform(image), int(self.labels[i])


class EpochSeededSampler(Sampler[int]):
    """A random order drawn from ``(seed, epoch)`` alone, so a run resumed at epoch k replays epoch k exactly.

    Lightning calls ``set_epoch`` before every epoch. It also reseeds ``generator``, the DataLoader's,
    from which each epoch's worker seeds (and so the augmentation) are drawn; with ``num_workers=0``
    augmentation runs in this process, so the global torch RNG is reseeded instead.
    """

    def __init__(self, size: int, seed: int, generator: torch.Generator, reseed_global: bool) -> None:
        self.size, self.seed, self.generator, self.reseed_global = size, seed, generator, reseed_global
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        epoch_seed = self.seed * 1_000_003 + epoch
        self.generator.manual_seed(epoch_seed)
        if self.reseed_global:
            torch.manual_seed(epoch_seed)

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        return iter(order.tolist())


# held-out validation images when data.val_size is not given (a run that recorded no data config, say)
DEFAULT_VAL_SIZE: dict[str, int | float] = {"cifar10": 5000, "cifar100": 5000, "digits": 0.1}


class ImageDataModule(L.LightningDataModule):
    """Train/val/test splits of a small-image dataset with the standard CIFAR augmentation.

    ``num_classes``: what the model was configured for; checked against the dataset in ``setup``.
    ``val_size``: images held out of the official train split for validation (an int), or a fraction
    (a float < 1), or None for the dataset's default (5000 for CIFAR, 10% of digits); the split is drawn with
    ``split_seed``, independent of the training seed.
    ``hflip``: mirror half the training images (right for CIFAR; wrong for digits or text).
    ``erase_prob``: random erasing (cutout) of one rectangle per training image with this probability, after
    normalization (torchvision's ``RandomErasing``; batched on the device in the fast pipeline).
    ``pipeline='standard'`` uses DataLoader workers and torchvision transforms (any transform works);
    ``pipeline='fast'`` keeps uint8 tensors on the training device and augments whole batches.
    Normalization uses the per-channel mean/std of the training split, recorded for deployment.
    """

    def __init__(
        self,
        dataset: str = "cifar10",
        data_dir: str = "data",
        num_classes: int | None = None,
        download: bool = False,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int | float | None = None,
        split_seed: int = 0,
        augment: bool = True,
        crop_padding: int = 4,
        hflip: bool = True,
        erase_prob: float = 0.0,
        pipeline: str = "standard",
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        if dataset not in SOURCES:
            raise UserError(f"unknown dataset '{dataset}'; choose cifar10, cifar100 or digits "
                            "(train.py: data=cifar10; deploy.py: data.dataset=cifar10)")
        if pipeline not in ("standard", "fast"):
            raise UserError(f"data.pipeline must be 'standard' or 'fast', got '{pipeline}'")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise UserError(f"data.batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= erase_prob <= 1.0:
            raise UserError(f"data.erase_prob must be a probability in [0, 1], got {erase_prob}")
        if num_workers < 0:
            raise UserError(f"data.num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.arrays: ImageArrays | None = None
        self.mean: list[float] = []
        self.std: list[float] = []
        self._splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # -- what deployment needs to know -------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        self._require_setup()
        return list(self.arrays.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def preprocessing(self) -> Preprocessing:
        """The evaluation-time rule (native size, training-split mean/std): recorded in the fused artifact."""
        self._require_setup()
        h, w = self.arrays.train_images.shape[1:3]
        return Preprocessing(size=(int(h), int(w)), mean=tuple(self.mean), std=tuple(self.std),
                             classes=tuple(self.classes), crop_pct=1.0, dataset=self.hparams.dataset)

    def deploy_info(self) -> dict:
        """What a fused artifact records about its inputs (everything needed to preprocess an image)."""
        return self.preprocessing.to_record()

    def _require_setup(self) -> None:
        if self.arrays is None:
            raise RuntimeError("call datamodule.setup() first")

    # -- Lightning hooks ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.hparams.download and self.hparams.dataset != "digits":
            load_source(self.hparams.dataset, self.hparams.data_dir, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        hp = self.hparams
        arrays = load_source(hp.dataset, Path(hp.data_dir), download=False)
        if hp.num_classes is not None and hp.num_classes != arrays.num_classes:
            raise UserError(
                f"data.num_classes={hp.num_classes} but {hp.dataset} has {arrays.num_classes} classes; "
                "remove the override or fix it"
            )
        n = len(arrays.train_labels)
        val_size = DEFAULT_VAL_SIZE.get(hp.dataset, 0.1) if hp.val_size is None else hp.val_size
        n_val = int(round(val_size * n)) if isinstance(val_size, float) and val_size < 1 else int(val_size)
        if not 0 <= n_val < n:
            raise UserError(f"data.val_size={val_size} leaves no training images out of {n}; use a smaller value")
        order = np.random.default_rng(hp.split_seed).permutation(n)
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        self._splits = {
            "train": (arrays.train_images[train_idx], arrays.train_labels[train_idx]),
            "val": (arrays.train_images[val_idx], arrays.train_labels[val_idx]),
            "test": (arrays.test_images, arrays.test_labels),
        }
        if n_val == 0:  # validate on the test split, and say so in the logs via the split size
            self._splits["val"] = self._splits["test"]
        train_images = self._splits["train"][0]
        self.mean = [float(v) for v in train_images.reshape(-1, 3).mean(0) / 255.0]
        self.std = [float(v) for v in train_images.reshape(-1, 3).std(0) / 255.0]
        self.arrays = arrays

    def calibration_images(self, count: int, seed: int = 0) -> torch.Tensor:
        """``count`` training-split images, normalized like every batch but not augmented, drawn with ``seed``:
        what post-training quantization calibrates its activation ranges on."""
        self._require_setup()
        images = self._splits["train"][0]
        idx = np.sort(np.random.default_rng(seed).permutation(len(images))[: max(int(count), 1)])
        return self.preprocessing(torch.from_numpy(images[idx]).permute(0, 3, 1, 2).contiguous())

    def split_sizes(self) -> dict[str, int]:
        return {k: len(v[1]) for k, v in self._splits.items()}

    def _transform(self, train: bool) -> v2.Transform:
        steps: list[v2.Transform] = []
        if train and self.hparams.augment:
            steps.append(v2.RandomCrop(self.arrays.train_images.shape[1], padding=self.hparams.crop_padding))
            if self.hparams.hflip:
                steps.append(v2.RandomHorizontalFlip())
        steps.append(self.preprocessing.transform() if not train else self.preprocessing.normalize())
        if train and self.hparams.augment and self.hparams.erase_prob > 0:  # after normalizing: erased = the mean
            steps.append(v2.RandomErasing(self.hparams.erase_prob, ERASE_SCALE, ERASE_RATIO, value=0))
        return v2.Compose(steps)

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch

    def _loader(self, split: str):
        self._require_setup()
        hp = self.hparams
        images, labels = self._splits[split]
        train = split == "train"
        batch_size = hp.batch_size if train else (hp.eval_batch_size or hp.batch_size)
        if hp.pipeline == "fast":
            trainer = getattr(self, "trainer", None)
            device = self._device()
            return TensorBatchLoader(
                torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device),
                torch.from_numpy(labels).to(device),
                batch_size, self.mean, self.std, shuffle=train, augment=train and hp.augment, drop_last=train,
                padding=hp.crop_padding, hflip=hp.hflip, erase_prob=hp.erase_prob, seed=torch.initial_seed() % 2**31,
                rank=trainer.global_rank if trainer else 0, world_size=trainer.world_size if trainer else 1,
                epoch_source=self._current_epoch if trainer else None,
            )
        trainer = getattr(self, "trainer", None)
        sampler, generator, shuffle = None, None, False
        if train and trainer is not None and trainer.world_size > 1:
            # Lightning swaps a plain shuffle for its DistributedSampler (order from seed and epoch); a custom
            # sampler would be wrapped, and the wrapper never forwards set_epoch to it.
            shuffle = True
        elif train:
            generator = torch.Generator()
            sampler = EpochSeededSampler(len(labels), torch.initial_seed() % 2**31, generator, hp.num_workers == 0)
        return DataLoader(
            ArrayDataset(images, labels, self._transform(train)),
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            generator=generator,
            drop_last=train,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory and torch.cuda.is_available(),
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")
