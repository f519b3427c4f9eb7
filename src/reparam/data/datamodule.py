"""One LightningDataModule for every registered dataset: CIFAR-10, CIFAR-100, the embedded digits, image folders."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.transforms import v2

from ..errors import UserError
from ..preprocess import Preprocessing
from .fast import ERASE_RATIO, ERASE_SCALE, TensorBatchLoader
from .imagefolder import FileDataset, skip_missing_collate
from .registry import (
    COMMON_OPTIONS,
    DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArraySplit,
    FileSplit,
    dataset_source,
    refuse_unread_options,
)
from .seeding import SeededIndex, seed_worker_for

__all__ = ["ImageDataModule", "ArrayDataset"]

DEFAULT_CROP_PADDING = 4
DEFAULT_CROP_PCT = 0.875  # the ImageNet convention: resize to 256, center-crop 224
NORMALIZATION_SAMPLE = 512  # training images whose pixels give the mean/std of an image folder
# fewer training steps an epoch than FEW_STEPS is warned about, suggesting a batch size that gives at least SOME_STEPS
FEW_STEPS, SOME_STEPS = 5, 8

log = logging.getLogger(__name__)


class ArrayDataset(Dataset):
    """uint8 ``(N, H, W, C)`` images and labels; each item is ``(transform(CHW uint8 tensor), label)``. A
    :class:`SeededIndex` key seeds the augmentation of its image in a DataLoader worker."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | SeededIndex) -> tuple[torch.Tensor, int]:
        i = seed_worker_for(key)
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1)
        return self.transform(image), int(self.labels[i])


class EpochSeededSampler(Sampler[SeededIndex]):
    """A random order drawn from ``(seed, epoch)`` alone, so a run resumed at epoch k replays epoch k exactly.

    Each index comes with a seed of its own, drawn from ``(seed, epoch, index)``: a DataLoader worker seeds the
    image's augmentation with it (:func:`seed_worker_for`). Workers are seeded once, when they start, and persistent
    workers live across epochs, so a run resumed at epoch k (new workers) augmented epoch k otherwise than the run
    that was never stopped (its workers two epochs older). With ``num_workers=0`` augmentation runs in this process,
    whose global torch RNG is reseeded at each epoch instead. Lightning calls ``set_epoch`` before every epoch.
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

    def __iter__(self) -> Iterator[SeededIndex]:
        epoch_seed = self.seed * 1_000_003 + self.epoch
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(epoch_seed))
        epoch_key = _mix64(epoch_seed)
        return (SeededIndex(i, _mix64(epoch_key ^ i)) for i in order.tolist())


def _init_worker(worker_id: int) -> None:
    """Lightning's worker seeding where ``seed_everything(workers=True)`` asked for it: Lightning adds it to the
    DataLoaders it sees, and the training loader is wrapped (:class:`StartsAtFirstBatch`). numpy's and Python's RNGs
    in a worker, for transforms of one's own; torchvision's draw from torch's, seeded per image."""
    if os.environ.get("PL_SEED_WORKERS") == "1":
        pl_worker_init_function(worker_id)


def _mix64(x: int) -> int:
    """SplitMix64's finalizer, a bijection of 64-bit integers: distinct inputs give distinct, well-spread seeds."""
    x &= 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class StartsAtFirstBatch:
    """A DataLoader whose workers start on the first batch asked for, not when ``iter()`` is called.

    Lightning calls ``iter()`` on the training loader while setting up, before a resumed run's loop state is restored
    and before ``set_epoch``; a DataLoader with workers hands them their first indices at once, so a run resumed at
    epoch k drew epoch 0's order for it (and a run never stopped epoch k's). The sampler and dataset are the loader's,
    where Lightning looks for ``set_epoch``.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    @property
    def sampler(self) -> Any:
        return self.loader.sampler

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    @property
    def batch_size(self) -> int | None:
        return self.loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        yield from self.loader  # the loader's iterator, and its workers' first indices, on the first next()


class EvalShard(DistributedSampler):
    """Images ``rank::world_size`` of a validation or test split: each image once over all processes.

    Lightning's own sampler pads the last shares with repeated images so every process runs as many batches: an
    accuracy over 359 test images on 2 processes was over 360, one image counted twice. Evaluation needs no equal
    shares (DDP syncs buffers on the first forward without gradients only; the metrics are summed once per epoch),
    as Lightning's prediction loop shows; every process needs one image at least. A ``DistributedSampler``, so
    Lightning keeps it.
    """

    def __init__(self, size: int, num_replicas: int, rank: int) -> None:
        super().__init__(cast(Dataset, range(size)), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, size, num_replicas))
        self.total_size = size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))


def _val_count(val_size: int | float, n: int) -> int:
    return int(round(val_size * n)) if isinstance(val_size, float) and val_size < 1 else int(val_size)


class ImageDataModule(L.LightningDataModule):
    """Train/val/test splits of any registered dataset (:data:`reparam.data.DATASETS`), with its augmentation.

    ``dataset``: the registry name (:data:`reparam.data.DATASETS`). Options a dataset does not read (``data_dir`` for
    digits, ``image_size`` for CIFAR, ...) are refused when set, never ignored; options of a source's own (a CSV
    source's ``train_csv``) are keyword arguments passed on to it.
    ``num_classes``: what the model was configured for; checked against the dataset in ``setup``.
    ``val_size``: images held out of the train split for validation (an int), or a fraction (a float < 1), or None
    for the dataset's default (5000 for CIFAR, 10% otherwise); drawn with ``split_seed``, independent of the
    training seed. A dataset with its own validation split (imagefolder's ``val/``) uses that instead.
    ``hflip``: mirror half the training images (right for photos; wrong for digits or text).
    ``erase_prob``: random erasing (cutout) of one rectangle per training image with this probability, after
    normalization (torchvision's ``RandomErasing``; batched on the device in the fast pipeline).
    In-memory datasets of one size (CIFAR, digits): random crop with ``crop_padding`` zero padding, normalization by
    the whole training split's per-channel mean/std. Image folders: ``RandomResizedCrop(image_size,
    scale=(min_crop_scale, 1))`` for training, and for evaluation the recorded rule (resize the shorter side to
    ``image_size / crop_pct``, center-crop ``image_size``); normalization measured on a sample of the training split
    (``normalization=train_split``) or ImageNet's (``normalization=imagenet``, for pretrained weights).
    ``pipeline='standard'`` uses DataLoader workers and torchvision transforms (any transform works);
    ``pipeline='fast'`` keeps uint8 tensors on the training device and augments whole batches (in-memory datasets).
    """

    def __init__(
        self,
        dataset: str = "cifar10",
        data_dir: str | None = None,
        num_classes: int | None = None,
        download: bool | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int | float | None = None,
        split_seed: int = 0,
        augment: bool = True,
        crop_padding: int | None = None,
        hflip: bool = True,
        erase_prob: float = 0.0,
        pipeline: str = "standard",
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        image_size: int | None = None,
        crop_pct: float | None = None,
        min_crop_scale: float | None = None,
        normalization: str | None = None,
        skip_bad_images: bool | None = None,
        **source_options: Any,
    ) -> None:
        super().__init__()
        source_cls = dataset_source(dataset)
        specific = {
            "data_dir": data_dir,
            "download": download,
            "crop_padding": crop_padding,
            "image_size": image_size,
            "crop_pct": crop_pct,
            "min_crop_scale": min_crop_scale,
            "normalization": normalization,
            "skip_bad_images": skip_bad_images,
            **source_options,  # a source's own options (its `options`; any other one is refused below)
        }
        refuse_unread_options(source_cls, specific)
        if pipeline not in ("standard", "fast"):
            raise UserError(f"data.pipeline must be 'standard' or 'fast', got '{pipeline}'")
        if pipeline == "fast" and not source_cls.in_memory:
            raise UserError(
                f"data.pipeline=fast holds a whole dataset of one image size in memory; data={dataset} "
                "reads files of any size from disk with DataLoader workers: use data.pipeline=standard"
            )
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise UserError(f"data.batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= erase_prob <= 1.0:
            raise UserError(f"data.erase_prob must be a probability in [0, 1], got {erase_prob}")
        if num_workers < 0:
            raise UserError(f"data.num_workers must be >= 0, got {num_workers}")
        if image_size is not None and int(image_size) < 8:
            raise UserError(f"data.image_size must be >= 8 pixels, got {image_size}")
        if crop_pct is not None and not 0.0 < float(crop_pct) <= 1.0:
            raise UserError(
                f"data.crop_pct must be in (0, 1] (0.875: resize to image_size/0.875, crop), got {crop_pct}"
            )
        if min_crop_scale is not None and not 0.0 < float(min_crop_scale) <= 1.0:
            raise UserError(f"data.min_crop_scale must be in (0, 1], got {min_crop_scale}")
        if normalization not in (None, "train_split", "imagenet"):
            raise UserError(f"data.normalization must be train_split or imagenet, got '{normalization}'")
        self.save_hyperparameters()
        self.source = source_cls(**{k: v for k, v in specific.items() if k in source_cls.options})
        self._classes: list[str] | None = None
        self.skipped: tuple[str, ...] = ()
        # when validation and test are the same images, what that means for the test accuracy (None: separate)
        self.test_split_note: str | None = None
        self.mean: list[float] = []
        self.std: list[float] = []
        self._splits: dict[str, ArraySplit | FileSplit] = {}
        self._recorded: Preprocessing | None = None

    @classmethod
    def config_arguments(cls, dataset: str | None) -> list[str]:
        """The ``data.*`` settings read with ``dataset`` (every source's when None or not registered here): what
        the command line's hints offer to add with ``+data.<name>=...``."""
        if isinstance(dataset, str) and dataset in DATASETS:
            return sorted(COMMON_OPTIONS | DATASETS[dataset].options)
        fixed = set(inspect.signature(cls).parameters) - {"source_options"}
        return sorted(fixed.union(*(source.options for source in DATASETS.values())))

    @property
    def _hp(self) -> AttributeDict:
        # save_hyperparameters() stores an AttributeDict; Lightning types hparams as any mutable mapping
        return cast(AttributeDict, self.hparams)

    # -- what the model and deployment need to know ------------------------------------------------
    @property
    def classes(self) -> list[str]:
        self._require_setup()
        assert self._classes is not None  # _require_setup
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        """The class count: the source's without reading the images where it knows it, else read once (``setup``)."""
        known = self.source.num_classes()
        if self._classes is None and known is not None:
            return int(known)
        if self._classes is None:  # a source that only knows its classes once read
            self.setup()
        return len(self.classes)

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the model's input: the native size, or ``data.image_size``; known before ``setup``."""
        height, width = self.source.input_size()
        return height, width

    @property
    def preprocessing(self) -> Preprocessing:
        """The evaluation-time rule (input size, resize rule, training-split or ImageNet mean/std, class names):
        recorded in the fused artifact. Deploy sets the recorded one with :meth:`use_recorded_preprocessing`."""
        self._require_setup()
        if self._recorded is not None:
            return self._recorded
        crop_pct = 1.0 if self.source.native_size else float(self._hp.crop_pct or DEFAULT_CROP_PCT)
        return Preprocessing(
            size=self.input_size,
            mean=tuple(self.mean),
            std=tuple(self.std),
            classes=tuple(self.classes),
            crop_pct=crop_pct,
            dataset=self._hp.dataset,
        )

    def use_recorded_preprocessing(self, recorded: Preprocessing) -> None:
        """Evaluate (and calibrate) with the rule a model was trained with, never one recomputed from this data."""
        self._recorded = recorded

    def deploy_info(self) -> dict:
        """What a fused artifact records about its inputs (everything needed to preprocess an image)."""
        record = self.preprocessing.to_record()
        if self.skipped:
            record["skipped_images"] = len(self.skipped)
        return record

    def _require_setup(self) -> None:
        if self._classes is None:
            raise RuntimeError("call datamodule.setup() first")

    # -- Lightning hooks ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.source.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self._classes is not None:
            return
        hp = self._hp
        data = self.source.read()
        if hp.num_classes is not None and hp.num_classes != len(data.classes):
            raise UserError(
                f"data.num_classes={hp.num_classes} but {hp.dataset} has {len(data.classes)} classes; "
                "remove the override or fix it"
            )
        splits: dict[str, ArraySplit | FileSplit | None] = {"train": data.train}
        if data.val is None:
            n = len(data.train.labels)
            val_size = self.source.default_val_size if hp.val_size is None else hp.val_size
            n_val = _val_count(val_size, n)
            if not 0 <= n_val < n:
                raise UserError(f"data.val_size={val_size} leaves no training images out of {n}; use a smaller value")
            order = np.random.default_rng(hp.split_seed).permutation(n)
            splits = {
                "train": data.train.subset(np.sort(order[n_val:])),
                "val": data.train.subset(np.sort(order[:n_val])),
            }
            if n_val == 0:  # validate on the test split, and say so in the logs via the split size
                splits["val"] = data.test
        else:
            splits["val"] = data.val
        splits["test"] = data.test if data.test is not None else splits["val"]
        if data.test is None:
            self.test_split_note = (
                f"the validation split: {hp.dataset} {self.source.no_test_split}; it also chose the best checkpoint"
            )
        elif splits["val"] is data.test:
            self.test_split_note = "also the validation split (data.val_size=0): it chose the best checkpoint"
        if splits["val"] is None:
            raise UserError(f"data.val_size=0 but {hp.dataset} has no test split to validate on; use data.val_size>0")
        self._splits = {name: split for name, split in splits.items() if split is not None}
        self.skipped = data.skipped
        self.mean, self.std = self._normalization(self._splits["train"])
        self._classes = list(data.classes)

    def _normalization(self, train: ArraySplit | FileSplit) -> tuple[list[float], list[float]]:
        if self._hp.normalization == "imagenet":
            return list(IMAGENET_MEAN), list(IMAGENET_STD)
        if isinstance(train, ArraySplit):
            pixels = train.images.reshape(-1, 3)
            return [float(v) for v in pixels.mean(0) / 255.0], [float(v) for v in pixels.std(0) / 255.0]
        # a seeded sample of the training split, at the evaluation geometry
        size, crop_pct = self.input_size, float(self._hp.crop_pct or DEFAULT_CROP_PCT)
        geometry = Preprocessing(size=size, mean=(0.0,) * 3, std=(1.0,) * 3, crop_pct=crop_pct).geometry()
        index = np.random.default_rng(0).permutation(len(train.labels))[:NORMALIZATION_SAMPLE]
        dataset = FileDataset(train, geometry, skip_bad=True)
        images = [item[0] for item in (dataset[int(i)] for i in index) if item is not None]
        sample = torch.stack(images).to(torch.float64).div_(255.0).permute(1, 0, 2, 3).reshape(3, -1)
        return [float(v) for v in sample.mean(1)], [float(max(v, 1e-3)) for v in sample.std(1)]

    def calibration_images(self, count: int, seed: int = 0) -> torch.Tensor:
        """``count`` training-split images, normalized like every batch but not augmented, drawn with ``seed``:
        what post-training quantization calibrates its activation ranges on."""
        self._require_setup()
        train = self._splits["train"]
        idx = np.sort(np.random.default_rng(seed).permutation(len(train.labels))[: max(int(count), 1)])
        if isinstance(train, ArraySplit):
            return self.preprocessing(torch.from_numpy(train.images[idx]).permute(0, 3, 1, 2).contiguous())
        dataset = FileDataset(train, self.preprocessing.transform(), skip_bad=True)
        return torch.stack([item[0] for item in (dataset[int(i)] for i in idx) if item is not None])

    def split_sizes(self) -> dict[str, int]:
        return {k: len(v.labels) for k, v in self._splits.items()}

    def _transform(self, train: bool) -> v2.Transform:
        if not train:  # the one evaluation rule, recorded in the artifact
            return self.preprocessing.transform()
        hp, steps = self._hp, list[v2.Transform]()
        if not hp.augment and not self.source.native_size:
            steps.append(self.preprocessing.geometry())
        elif hp.augment and self.source.native_size:
            steps.append(
                v2.RandomCrop(
                    list(self.input_size), padding=DEFAULT_CROP_PADDING if hp.crop_padding is None else hp.crop_padding
                )
            )
        elif hp.augment:
            steps.append(
                v2.RandomResizedCrop(list(self.input_size), scale=(hp.min_crop_scale or 0.08, 1.0), antialias=True)
            )
        if hp.augment and hp.hflip:
            steps.append(v2.RandomHorizontalFlip())
        steps.append(self.preprocessing.normalize())
        if train and self._hp.augment and self._hp.erase_prob > 0:  # after normalizing: erased = the mean
            steps.append(v2.RandomErasing(self._hp.erase_prob, ERASE_SCALE, ERASE_RATIO, value=0))
        return v2.Compose(steps)

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _current_epoch(self) -> int:
        assert self.trainer is not None  # only the fast loader asks, and only while a trainer runs it
        return self.trainer.current_epoch

    def _check_a_training_batch_fits(self, images: int, batch_size: int) -> None:
        """Training drops the last incomplete batch (static shapes): with fewer images than one batch per process, an
        epoch would have no step and the run would ship its initial weights."""
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        if images // world < batch_size:
            per = f" per process ({world} processes)" if world > 1 else ""
            raise UserError(
                f"data.batch_size={batch_size} is larger than the {images // world} training images{per}: no training "
                f"step would run; pass data.batch_size={max(1, min(images // world, batch_size) // 2)} or smaller "
                f"(two steps an epoch; {images // world} is the most that runs one), or add images"
            )

    def _warn_on_few_steps(self, images: int, batch_size: int) -> None:
        """On a small dataset a large batch leaves a few steps an epoch: BatchNorm's running statistics (what
        validation and the shipped model use) start at 0 / 1 and move 10% a step, so validations stay poor (a new
        user's 150 images at batch 64: validation loss ~1e7 for ten epochs, and a worse checkpoint chosen)."""
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        per_process = images // world
        steps = per_process // batch_size
        smaller = 1 << max(0, (per_process // SOME_STEPS).bit_length() - 1)  # a power of two
        if steps >= FEW_STEPS or smaller >= batch_size or (trainer is not None and not trainer.is_global_zero):
            return
        unused = per_process - steps * batch_size  # the last, partial batch is dropped (drop_last)
        log.warning(
            "%d training step(s) an epoch (%d images%s at data.batch_size=%d%s): BatchNorm's running statistics, "
            "which validation and the fused model use, move a little each step, so early validations are poor; on "
            "few images a smaller batch trains better, e.g. data.batch_size=%d",
            steps,
            per_process,
            f" per process, {world} processes" if world > 1 else "",
            batch_size,
            f"; each epoch leaves out a partial batch of {unused}, other images each time" if unused else "",
            smaller,
        )

    def _loader(self, split: str) -> DataLoader | TensorBatchLoader | StartsAtFirstBatch:
        self._require_setup()
        hp = self._hp
        data = self._splits[split]
        labels = data.labels
        train = split == "train"
        batch_size = hp.batch_size if train else (hp.eval_batch_size or hp.batch_size)
        if train:
            self._check_a_training_batch_fits(len(labels), batch_size)
            self._warn_on_few_steps(len(labels), batch_size)
        if hp.pipeline == "fast":
            assert isinstance(data, ArraySplit)  # __init__ refuses the fast pipeline for file datasets
            trainer = getattr(self, "trainer", None)
            device = self._device()
            return TensorBatchLoader(
                torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous().to(device),
                torch.from_numpy(labels).to(device),
                batch_size,
                list(self.preprocessing.mean),
                list(self.preprocessing.std),
                shuffle=train,
                augment=train and hp.augment,
                drop_last=train,
                padding=DEFAULT_CROP_PADDING if hp.crop_padding is None else hp.crop_padding,
                hflip=hp.hflip,
                erase_prob=hp.erase_prob,
                seed=torch.initial_seed() % 2**31,
                rank=trainer.global_rank if trainer else 0,
                world_size=trainer.world_size if trainer else 1,
                epoch_source=self._current_epoch if trainer else None,
            )
        trainer = getattr(self, "trainer", None)
        sampler: Sampler[int] | Sampler[SeededIndex] | None = None
        generator, shuffle = None, False
        if train and trainer is not None and trainer.world_size > 1:
            # Lightning swaps a plain shuffle for its DistributedSampler (order from seed and epoch); a custom
            # sampler would be wrapped, and the wrapper never forwards set_epoch to it.
            shuffle = True
        elif train:
            generator = torch.Generator()
            sampler = EpochSeededSampler(len(labels), torch.initial_seed() % 2**31, generator, hp.num_workers == 0)
        elif trainer is not None and 1 < trainer.world_size <= len(labels):
            sampler = EvalShard(len(labels), trainer.world_size, trainer.global_rank)
        dataset: Dataset
        if isinstance(data, ArraySplit):
            dataset, collate = ArrayDataset(data.images, labels, self._transform(train)), None
        else:
            skip = bool(hp.skip_bad_images)
            dataset, collate = FileDataset(data, self._transform(train), skip), skip_missing_collate if skip else None
        loader = DataLoader(
            dataset,
            worker_init_fn=_init_worker if hp.num_workers > 0 else None,
            collate_fn=collate,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            generator=generator,
            drop_last=train,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory and torch.cuda.is_available(),
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
        )
        if isinstance(sampler, EpochSeededSampler) and hp.num_workers > 0:
            return StartsAtFirstBatch(loader)
        return loader

    def train_dataloader(self) -> DataLoader | TensorBatchLoader | StartsAtFirstBatch:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | TensorBatchLoader | StartsAtFirstBatch:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | TensorBatchLoader | StartsAtFirstBatch:
        return self._loader("test")
