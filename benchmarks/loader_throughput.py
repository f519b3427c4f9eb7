"""Image-folder loader throughput: reparam's data=imagefolder pipeline against torchvision's ImageFolder with its
default PIL loader, same 224x224 training transforms, JPEG files, DataLoader workers, interleaved in one process.

    python benchmarks/loader_throughput.py [--images 768] [--workers 2] [--rounds 5] [--batch-size 64]

Both loaders: RandomResizedCrop(224, scale=(0.08, 1)) + horizontal flip + float32 + ImageNet normalization, batches
of --batch-size, shuffled, persistent workers (started and warmed up once, before timing). Ours decodes with
torchvision.io (libjpeg-turbo) and transforms uint8 tensors; torchvision's ImageFolder opens each file with PIL,
converts to RGB and transforms the PIL image. Each round times one epoch of each, in alternating order; the ratio is
per round (ours / ImageFolder), reported as median and min..max.

The JPEGs are generated (no dataset download): smooth random colour fields with fine noise, 300-500 px per side,
quality 90 -- photo-like sizes and file sizes (about 30-60 kB).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from reparam.data import ImageDataModule
from reparam.data.registry import IMAGENET_MEAN, IMAGENET_STD


def write_jpegs(root: Path, count: int, classes: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = (int(v) for v in rng.integers(300, 501, 2))
        field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(field, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
        folder = root / "train" / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return root


def torchvision_loader(root: Path, batch_size: int, workers: int) -> DataLoader:
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(224, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return DataLoader(
        datasets.ImageFolder(str(root / "train"), transform=transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=True,
    )


def reparam_loader(root: Path, batch_size: int, workers: int) -> DataLoader:
    dm = ImageDataModule(
        "imagefolder",
        str(root),
        image_size=224,
        min_crop_scale=0.08,
        normalization="imagenet",
        val_size=1,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=True,
        pin_memory=False,
    )
    dm.setup("fit")
    return dm.train_dataloader()


def epoch(loader: DataLoader) -> tuple[float, int]:
    start, images = time.perf_counter(), 0
    for x, _ in loader:
        assert x.shape[1:] == (3, 224, 224) and x.dtype == torch.float32
        images += len(x)
    return time.perf_counter() - start, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpegs(Path(tmp), args.images)
        size_kb = statistics.mean(p.stat().st_size for p in root.glob("train/*/*.jpg")) / 1024
        loaders = {
            "reparam (torchvision.io)": reparam_loader(root, args.batch_size, args.workers),
            "torchvision ImageFolder (PIL)": torchvision_loader(root, args.batch_size, args.workers),
        }
        for loader in loaders.values():
            epoch(loader)  # start the workers, warm the page cache
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for r in range(args.rounds):
            for name in list(loaders) if r % 2 == 0 else list(loaders)[::-1]:
                seconds, images = epoch(loaders[name])
                rates[name].append(images / seconds)
        ours, theirs = rates.values()
        ratios = sorted(a / b for a, b in zip(ours, theirs, strict=True))
        print(
            f"{args.images} JPEGs (mean {size_kb:.0f} kB, 300-500 px), 224x224 train transforms, "
            f"{args.workers} workers, batch {args.batch_size}, {args.rounds} interleaved rounds, "
            f"torch {torch.get_num_threads()} threads in the main process"
        )
        for name, values in rates.items():
            print(
                f"  {name:32s} median {statistics.median(values):7.1f} images/s  "
                f"(min {min(values):.1f}, max {max(values):.1f})"
            )
        print(
            f"  ratio reparam / ImageFolder: median {statistics.median(ratios):.2f}x "
            f"(min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x)"
        )


if __name__ == "__main__":
    main()
