"""Per-image augmentation seeds for DataLoader workers: what makes a resumed run replay an epoch exactly."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils.data import get_worker_info

__all__ = ["SeededIndex", "seed_worker_for"]


class SeededIndex(NamedTuple):
    """A training image's index and the seed of its augmentation (``reparam.data.datamodule.EpochSeededSampler``)."""

    image: int  # its index in the split
    seed: int


def seed_worker_for(key: int | SeededIndex) -> int:
    """The image index of a dataset key; in a DataLoader worker, a :class:`SeededIndex` first seeds torch's RNG
    (what torchvision's random transforms draw from) with the image's own seed."""
    if isinstance(key, SeededIndex):
        if get_worker_info() is not None:
            torch.manual_seed(key.seed)
        return key.image
    return key
