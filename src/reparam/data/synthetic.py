"""Generated datasets in CIFAR's official file format: what the tests, ``make gpu-check`` and the benchmarks train on
where the real CIFAR-10 cannot be downloaded. The real loading code reads them."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

__all__ = ["write_cifar_like", "write_digits_folder"]


def write_cifar_like(
    root: str | Path, name: str = "cifar10", per_batch: int = 40, n_test: int = 40, seed: int = 0
) -> Path:
    """Small files in the official ``cifar-10-batches-py`` / ``cifar-100-python`` pickle layout.

    Like the originals: dicts with bytes keys, ``data`` a uint8 (N, 3072) array in CHW order, labels
    a list of ints. Each class has its own coarse colour pattern (8x8-pixel cells), shifted by a few pixels and
    buried in noise per image: learnable, but not at a glance, so accuracies say something.
    """
    rng = np.random.default_rng(seed)
    num_classes = 10 if name == "cifar10" else 100
    cells = rng.uniform(-1, 1, (num_classes, 3, 4, 4))
    templates = np.kron(cells, np.ones((8, 8)))  # (classes, 3, 32, 32), one 8x8 cell per value

    def batch(n: int, label_key: bytes) -> dict:
        labels = rng.integers(0, num_classes, n)
        shifts = rng.integers(-3, 4, (n, 2))
        pattern = np.stack([np.roll(templates[c], tuple(s), axis=(1, 2)) for c, s in zip(labels, shifts, strict=True)])
        pixels = 128 + 40 * pattern + rng.normal(0, 48, (n, 3, 32, 32))
        data = pixels.clip(0, 255).astype(np.uint8).reshape(n, 3072)
        return {
            b"batch_label": b"generated",
            label_key: labels.tolist(),
            b"data": data,
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }

    if name == "cifar10":
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, 6):
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch, b"labels"), protocol=2))
        (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test, b"labels"), protocol=2))
        meta = {
            b"label_names": [
                n.encode()
                for n in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
            ],
            b"num_cases_per_batch": per_batch,
        }
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    else:
        folder = Path(root) / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train").write_bytes(pickle.dumps(batch(per_batch * 5, b"fine_labels"), protocol=2))
        (folder / "test").write_bytes(pickle.dumps(batch(n_test, b"fine_labels"), protocol=2))
        meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)], b"coarse_label_names": []}
        (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_digits_folder(
    root: str | Path,
    per_class: int | None = None,
    seed: int = 0,
    splits: tuple[str, ...] = ("train", "val"),
    jpeg: bool = True,
) -> Path:
    """scikit-learn's 1,797 real 8x8 digits as an image folder: ``root/<split>/<digit>/<n>.png|jpg``.

    Each image is upscaled to a random size (40-95 px, not square) and saved in a mix of formats and modes: PNG in
    grayscale, RGB, RGBA and palette; JPEG in grayscale, RGB and CMYK (``jpeg=False``: PNG only). ``per_class``
    limits the images per class (all by default). Of every 10 images of a class, one goes to each split after the
    first (``val``, ``test``), the rest to ``train``, so every split holds every class. What ``data=imagefolder`` is
    tested on.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    root = Path(root)
    order = rng.permutation(len(digits.target))
    counts: dict[int, int] = {}
    png_modes, jpeg_modes = ("L", "RGB", "RGBA", "P"), ("L", "RGB", "CMYK")
    for n, i in enumerate(order):
        label = int(digits.target[i])
        if per_class is not None and counts.get(label, 0) >= per_class:
            continue
        k = counts.get(label, 0)
        counts[label] = k + 1
        split = splits[k % 10 + 1] if k % 10 + 1 < len(splits) else splits[0]
        gray = Image.fromarray((digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
        size = (int(rng.integers(40, 96)), int(rng.integers(40, 96)))
        image = gray.resize(size, Image.Resampling.BILINEAR)
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        if jpeg and n % 2:
            image.convert(jpeg_modes[(n // 2) % len(jpeg_modes)]).save(folder / f"{n}.jpg", quality=90)
        else:
            image.convert(png_modes[(n // 2) % len(png_modes)]).save(folder / f"{n}.png")
    return root
