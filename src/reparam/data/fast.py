"""The fast data path: the decoded dataset as one uint8 tensor, augmented a whole batch at a time.

The fastest CIFAR-10 trainers keep the data on the GPU and crop/flip in batched tensor ops; a per-image
PIL/transform pipeline in CPU workers leaves a GPU idle. This is the same augmentation family as
the standard path (random crop with zero padding, horizontal flip with p=0.5, optional random erasing), done with
one gather and one mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch

__all__ = ["random_crop_flip", "random_erase", "TensorBatchLoader", "ERASE_SCALE", "ERASE_RATIO"]

# torchvision's RandomErasing defaults: the erased area as a fraction of the image, and its aspect ratio
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)


def random_crop_flip(
    images: torch.Tensor, padding: int, generator: torch.Generator | None = None, flip: bool = True
) -> torch.Tensor:
    """Per image: pad by ``padding`` zeros, crop back to the original size at a random offset, flip
    horizontally with probability 1/2. ``images`` is ``(B, C, H, W)`` of any dtype; one gather, no loop.
    """
    b, c, h, w = images.shape
    dev = images.device
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    if flip:
        flipped = torch.rand(b, device=dev, generator=generator) < 0.5
        cols = torch.where(flipped[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(b, device=dev)[:, None, None, None]
    channel = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_erase(
    images: torch.Tensor,
    p: float,
    scale: tuple[float, float] = ERASE_SCALE,
    ratio: tuple[float, float] = ERASE_RATIO,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per image, with probability ``p``: set one random rectangle to 0 (the mean, on normalized images).

    torchvision's ``RandomErasing`` rule for a whole batch at once: area ``~ U(scale) * H * W``, aspect ratio
    log-uniform in ``ratio``, position uniform where it fits; a rectangle larger than the image is clipped to it
    (torchvision redraws up to 10 times instead). ``images`` is ``(B, C, H, W)``; returns a new tensor.
    """
    if p <= 0:
        return images
    b, _, h, w = images.shape
    dev = images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, device=dev, generator=generator)

    area = uniform(*scale) * (h * w)
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1])))
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = (torch.rand(b, device=dev, generator=generator) * (h - eh + 1)).floor()
    left = (torch.rand(b, device=dev, generator=generator) * (w - ew + 1)).floor()
    chosen = torch.rand(b, device=dev, generator=generator) < p
    rows = torch.arange(h, device=dev)[None, :, None]
    cols = torch.arange(w, device=dev)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + eh)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + ew)[:, None, None])
    )
    return images.masked_fill((inside & chosen[:, None, None])[:, None], 0)


class TensorBatchLoader:
    """An iterable of normalized ``(images, labels)`` batches from uint8 tensors, on their device.

    Shuffles with its own seeded generator (reseeded per epoch: ``seed + epoch``, the epoch taken from
    ``epoch_source`` when given, e.g. the trainer's, so a resumed run continues the sequence), shards by
    ``rank::world_size`` under DDP so every image is seen by exactly one rank, and augments on the fly.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        padding: int = 4,
        hflip: bool = True,
        erase_prob: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_source: Callable[[], int] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels.to(images.device)
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.padding, self.hflip, self.erase_prob, self.seed = padding, hflip, erase_prob, seed
        self.rank, self.world_size = rank, world_size
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(mean, device=images.device).reshape(shape) * 255
        self.std = torch.tensor(std, device=images.device).reshape(shape) * 255
        self.epoch = 0
        self.epoch_source = epoch_source

    def _indices(self, generator: torch.Generator) -> torch.Tensor:
        n = len(self.images)
        dev = self.images.device
        order = torch.randperm(n, device=dev, generator=generator) if self.shuffle else torch.arange(n, device=dev)
        if self.world_size > 1:
            if self.drop_last or self.shuffle:  # equal shares so every rank runs the same number of steps
                order = order[: n - n % self.world_size]
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self.images)
        if self.world_size > 1:
            n = (
                (n - n % self.world_size) // self.world_size
                if (self.drop_last or self.shuffle)
                else len(range(self.rank, n, self.world_size))
            )
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.epoch_source is not None:
            self.epoch = self.epoch_source()
        generator = torch.Generator(device=self.images.device).manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = self._indices(generator)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = random_crop_flip(x, self.padding, generator, flip=self.hflip)
            x = (x.float() - self.mean) / self.std
            if self.augment and self.erase_prob > 0:
                x = random_erase(x, self.erase_prob, generator=generator)
            yield x, self.labels[idx]
