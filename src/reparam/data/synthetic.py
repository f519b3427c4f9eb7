"""Generated datasets in CIFAR's official file format: what the tests, ``make gpu-check`` and the benchmarks train on
where the real CIFAR-10 cannot be downloaded. The real loading code reads them."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

__all__ = ["write_cifar_like"]


def write_cifar_like(root: str | Path, name: str = "cifar10", per_batch: int = 40, n_test: int = 40, seed: int = 0) -> Path:
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
        pattern = np.stack([np.roll(templates[c], tuple(s), axis=(1, 2)) for c, s in zip(labels, shifts)])
        pixels = 128 + 40 * pattern + rng.normal(0, 48, (n, 3, 32, 32))
        data = pixels.clip(0, 255).astype(np.uint8).reshape(n, 3072)
        return {b"batch_label": b"generated", label_key: labels.tolist(), b"data": data,
                b"filenames": [f"img{i}.png".encode() for i in range(n)]}

    if name == "cifar10":
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, 6):
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch, b"labels"), protocol=2))
        (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test, b"labels"), protocol=2))
        meta = {b"label_names": [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                     "frog", "horse", "ship", "truck"]], b"num_cases_per_batch": per_batch}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    else:
        folder = Path(root) / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train").write_bytes(pickle.dumps(batch(per_batch * 5, b"fine_labels"), protocol=2))
        (folder / "test").write_bytes(pickle.dumps(batch(n_test, b"fine_labels"), protocol=2))
        meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)], b"coarse_label_names": []}
        (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder
