"""Your own images: ``data=imagefolder data.data_dir=<folder>``.

Layout (torchvision's ``ImageFolder`` layout, one folder per split)::

    <folder>/train/<class>/<image>      required
    <folder>/val/<class>/<image>        optional: otherwise data.val_size images are held out of train/ (seeded)
    <folder>/test/<class>/<image>       optional: otherwise the validation split is the test split

Images of any size and mode (grayscale, palette, RGBA, CMYK, 16-bit: converted to RGB) in JPEG, PNG, WebP, BMP, TIFF,
PPM/PGM, GIF (first frame). The files stay on disk and DataLoader workers read them, so a dataset may be larger than
memory. Before training, every file is opened and checked (structure and checksums where the format has them), so a
zero-byte, truncated or unreadable file is named in one line before the first step, or skipped and counted with
``data.skip_bad_images=true``. A file that fails later, in a worker, is the same one line (or skipped).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..errors import DataNotFoundError, UserError
from ..preprocess import decode_image_bytes
from .registry import DatasetSource, FileSplit, SourceSplits, register_dataset
from .seeding import SeededIndex, seed_worker_for

__all__ = [
    "BadImageError",
    "FileDataset",
    "ImageFolderSource",
    "IMAGE_EXTENSIONS",
    "load_image",
    "skip_missing_collate",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")
SKIP_HINT = "delete or replace it, or pass data.skip_bad_images=true to leave such files out"


class BadImageError(UserError):
    """An image file that cannot be read, named in one line.

    Raised in a DataLoader worker, torch re-raises it in the main process as ``BadImageError(<worker traceback>)``;
    the constructor keeps only the original one-line message, so the user never sees a worker traceback.
    """

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            lines = [line for line in message.strip().splitlines() if line.strip()]
            message = lines[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


def load_image(path: str) -> torch.Tensor:
    """An image file -> uint8 RGB ``(3, H, W)``. ``torchvision.io`` decodes (libjpeg-turbo, faster than PIL for
    JPEG); whatever it cannot (CMYK, 16-bit, odd modes) goes to PIL; ``ValueError`` with the reason if neither can."""
    from torchvision.io import ImageReadMode, decode_image

    data = Path(path).read_bytes()
    if not data:
        raise ValueError("empty file (0 bytes)")
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        if image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3:
            return image
    except (RuntimeError, ValueError):
        pass
    return decode_image_bytes(data)


def check_image_file(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None: the scan before training (no full decode of every file:
    PIL's ``verify`` reads the structure and checks PNG checksums; a JPEG cut short may still pass and is then
    caught by the worker that decodes it)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as im:
            im.verify()
    except UnidentifiedImageError:
        return "not an image (no known image format)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"unreadable image ({err})"
    return None


class FileDataset(Dataset):
    """Image files and labels; each item is ``(transform(uint8 CHW tensor), label)``, or None for a file that
    cannot be decoded when ``skip_bad`` (the collate function leaves it out)."""

    def __init__(
        self, split: FileSplit, transform: Callable[[torch.Tensor], torch.Tensor], skip_bad: bool = False
    ) -> None:
        self.split, self.transform, self.skip_bad = split, transform, skip_bad

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, key: int | SeededIndex) -> tuple[torch.Tensor, int] | None:
        i = seed_worker_for(key)  # a training key seeds this image's augmentation in a worker
        path = self.split.paths[i]
        try:
            image = load_image(path)
        except (ValueError, OSError) as err:
            if self.skip_bad:
                log.warning("skipping unreadable image %s (%s)", path, err)
                return None
            raise BadImageError(f"{path}: {err}; {SKIP_HINT}") from None
        return self.transform(image), int(self.split.labels[i])


def skip_missing_collate(batch: list[Any]) -> Any:
    """``default_collate`` over the items that could be read."""
    items = [item for item in batch if item is not None]
    if not items:
        raise BadImageError(
            f"all {len(batch)} images of a batch were unreadable; check the data folder (warnings above name each file)"
        )
    return default_collate(items)


def _visible(entries: Iterable[os.DirEntry[str]]) -> list[os.DirEntry[str]]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


@register_dataset("imagefolder")
class ImageFolderSource(DatasetSource):
    """A folder of ``train/`` (``val/``, ``test/``) with one subfolder of images per class."""

    options = frozenset({"data_dir", "image_size", "crop_pct", "min_crop_scale", "normalization", "skip_bad_images"})
    native_size = None
    default_val_size = 0.1
    no_test_split = "has no test split (no test/ folder)"
    in_memory = False

    @property
    def root(self) -> Path:
        data_dir = self.opts.get("data_dir")
        if not data_dir:
            raise UserError("data=imagefolder needs data.data_dir=<folder holding train/<class>/<images>>")
        root = Path(str(data_dir)).expanduser()
        if not root.is_dir():
            raise DataNotFoundError(
                f"data.data_dir={root} is not a folder; point it at the folder that holds "
                "train/<class>/<images> (and optionally val/ and test/)"
            )
        if not (root / "train").is_dir():
            has_classes = any(e.is_dir() for e in _visible(os.scandir(root)))
            if has_classes and root.name in ("train", "val", "test"):  # the split folder itself was named
                hint = f"; it is the {root.name}/ split itself: use data.data_dir={root.parent}"
            elif has_classes:
                hint = f"; it holds class folders directly: move them into {root}/train/ (val/ and test/ are optional)"
            else:
                hint = ""
            raise DataNotFoundError(f"{root} has no train/ folder: expected {root}/train/<class>/<image>{hint}")
        return root

    @classmethod
    def example_data(cls, root: Path) -> dict[str, Any]:
        from .synthetic import write_digits_folder

        folder = write_digits_folder(root / "images", per_class=3, splits=("train", "val", "test"))
        return {"data_dir": str(folder)}

    def class_folders(self, split: str = "train") -> list[str]:
        return [e.name for e in _visible(os.scandir(self.root / split)) if e.is_dir()]

    def num_classes(self) -> int:
        return len(self._checked_classes(self.class_folders()))

    def _checked_classes(self, classes: list[str]) -> list[str]:
        train = self.root / "train"
        if not classes:
            raise UserError(f"{train} holds no class folders: put each class's images in {train}/<class>/")
        if len(classes) == 1:
            raise UserError(
                f"{train} holds one class folder ({classes[0]}); a classifier needs two or more: "
                f"add a folder per class under {train}/"
            )
        return classes

    def read(self) -> SourceSplits:
        root, skip = self.root, bool(self.opts.get("skip_bad_images"))
        classes = self._checked_classes(self.class_folders())
        splits: dict[str, FileSplit] = {}
        skipped: list[str] = []
        for split in ("train", "val", "test"):
            if split != "train" and not (root / split).is_dir():
                continue
            found = self.class_folders(split)
            if found != classes:
                missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
                raise UserError(
                    f"{root / split} has other class folders than {root / 'train'} (missing: "
                    f"{missing or 'none'}, extra: {extra or 'none'}); every split needs the same "
                    "class folders"
                )
            split_data, bad = self._scan(root / split, classes, skip)
            splits[split], skipped = split_data, skipped + bad
        if skipped:
            log.warning("data.skip_bad_images=true: left out %d unreadable file(s), first %s", len(skipped), skipped[0])
        return SourceSplits(
            train=splits["train"],
            classes=classes,
            val=splits.get("val"),
            test=splits.get("test"),
            skipped=tuple(skipped),
        )

    def _scan(self, folder: Path, classes: list[str], skip: bool) -> tuple[FileSplit, list[str]]:
        paths: list[str] = []
        labels: list[int] = []
        bad: list[str] = []
        for label, name in enumerate(classes):
            count = 0
            for entry in _visible(os.scandir(folder / name)):
                path = Path(entry.path)
                if entry.is_dir():
                    raise UserError(
                        f"{path} is a folder inside class folder {folder / name}; a class folder holds "
                        "image files only (flatten it, or make it a class of its own)"
                    )
                reason: str | None
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    reason = f"not an image file (extension '{path.suffix}'; reads {', '.join(IMAGE_EXTENSIONS)})"
                else:
                    reason = check_image_file(path)
                if reason is not None:
                    if not skip:
                        raise BadImageError(f"{path}: {reason}; {SKIP_HINT}")
                    bad.append(f"{path} ({reason})")
                    continue
                paths.append(str(path))
                labels.append(label)
                count += 1
            if count == 0:
                raise UserError(
                    f"class folder {folder / name} holds no readable images; add images or remove the folder"
                )
        return FileSplit(tuple(paths), np.asarray(labels, dtype=np.int64)), bad
