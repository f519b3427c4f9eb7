"""The one preprocessing rule: how an image becomes the model's input tensor.

It is recorded in ``fused/config.json`` (``"input"``) and read back from there by deploy, serve and predict, so
evaluation at training time, deploy, the server and the prediction command all run this same code; nothing else
normalizes an image for the model.

Rule, for a uint8 RGB image ``(C, H, W)``:
    1. resize so the shorter side is ``round(max(size) / crop_pct)`` (bilinear, antialiased), skipped when the
       image already has that shorter side (CIFAR-sized inputs pass through untouched);
    2. center-crop to ``size`` (skipped when the image already has that size);
    3. ``x / 255`` in float32, then ``(x - mean) / std`` per channel.
``crop_pct=1.0`` with native-size images is exactly the CIFAR evaluation transform; ``crop_pct=0.875`` at 224 is the
ImageNet convention (resize to 256, center-crop 224).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

__all__ = ["Preprocessing", "NormalizeUint8", "RESIZE_RULE", "decode_image_bytes", "read_image_file"]

RESIZE_RULE = "resize_shorter_side_then_center_crop"


@dataclass(frozen=True)
class Preprocessing:
    """Input size ``(H, W)``, the resize rule's ``crop_pct``, normalization and the class names a model was trained
    with. ``dataset`` names where the classes come from (a registry name such as ``cifar10`` or ``imagefolder``)."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    crop_pct: float = 1.0
    dataset: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # recorded, not used by the rule

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"input size must be (height, width) >= 1, got {self.size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"mean/std must have one value per channel and std > 0, got {self.mean} / {self.std}")

    # -- the record in fused/config.json ------------------------------------------------------------
    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def resize_to(self) -> int:
        """The shorter side before the center crop."""
        return int(round(max(self.size) / self.crop_pct))

    def to_record(self) -> dict[str, Any]:
        return {
            **self.extra,
            "dataset": self.dataset,
            "size": [self.channels, int(self.size[0]), int(self.size[1])],
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "classes": list(self.classes),
            "resize": RESIZE_RULE,
            "crop_pct": float(self.crop_pct),
            "resize_to": self.resize_to,
            "scale": "uint8 pixels / 255, then (x - mean) / std",
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Preprocessing:
        """Read ``fused/config.json``'s ``"input"``. Records written before the resize rule existed (CIFAR-shaped,
        native-size inputs) read as ``crop_pct=1.0``, which is what they did."""
        missing = [k for k in ("size", "mean", "std") if k not in record]
        if missing:
            raise ValueError(f"the recorded input lacks {', '.join(missing)}")
        resize = record.get("resize", RESIZE_RULE)
        if resize != RESIZE_RULE:
            raise ValueError(f"unknown resize rule '{resize}' (this version knows '{RESIZE_RULE}')")
        size = record["size"]
        known = {"dataset", "size", "mean", "std", "classes", "resize", "crop_pct", "resize_to", "scale"}
        return cls(
            size=(int(size[-2]), int(size[-1])),
            mean=tuple(float(v) for v in record["mean"]),
            std=tuple(float(v) for v in record["std"]),
            classes=tuple(str(c) for c in record.get("classes", ())),
            crop_pct=float(record.get("crop_pct", 1.0)),
            dataset=str(record.get("dataset", "")),
            extra={k: v for k, v in record.items() if k not in known},
        )

    # -- the rule ----------------------------------------------------------------------------------------
    def geometry(self) -> v2.Transform:
        """Steps 1-2 on uint8 images (a no-op on images that already have the input size)."""
        return v2.Compose([v2.Resize(self.resize_to, antialias=True), v2.CenterCrop(list(self.size))])

    def normalize(self) -> NormalizeUint8:
        """Step 3: uint8 -> float32 in [0, 1] -> normalized."""
        return NormalizeUint8(self.mean, self.std)

    def transform(self) -> v2.Transform:
        """The whole rule as one torchvision transform (for DataLoader workers)."""
        return v2.Compose([self.geometry(), self.normalize()])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``(C, H, W)`` or ``(N, C, H, W)`` (one size per call) -> float32 model input."""
        if image.dtype != torch.uint8:
            raise TypeError(f"preprocessing takes uint8 images, got {image.dtype}")
        if image.shape[-3] != self.channels:
            raise ValueError(f"expected {self.channels}-channel images, got shape {tuple(image.shape)}")
        return self.transform()(image)

    def batch(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 images of any sizes -> one ``(N, C, H, W)`` float32 batch."""
        return torch.stack([self(image) for image in images]) if images else torch.empty(0, self.channels, *self.size)


class NormalizeUint8(torch.nn.Module):
    """Step 3 of the rule in one pass: ``(x / 255 - mean) / std = x * scale + shift`` with ``scale = 1 / (255 std)``
    and ``shift = -mean / std`` (computed in float64, applied in float32). One float32 tensor is allocated and
    updated in place: a third of the time of ``ToDtype(scale=True)`` + ``Normalize`` in a DataLoader worker, equal to
    it within float32 rounding. Takes uint8 ``(C, H, W)`` or ``(N, C, H, W)``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean64, std64 = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        self.scale = (1.0 / (255.0 * std64)).to(torch.float32).view(-1, 1, 1)
        self.shift = (-mean64 / std64).to(torch.float32).view(-1, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8:
            raise TypeError(f"normalization takes uint8 images, got {image.dtype}")
        scale, shift = self.scale.to(image.device), self.shift.to(image.device)
        return image.to(torch.float32).mul_(scale).add_(shift)


def decode_image_bytes(data: bytes) -> torch.Tensor:
    """Encoded image bytes (JPEG, PNG, WebP, BMP, GIF's first frame; any mode) -> uint8 RGB ``(3, H, W)``.

    PIL decodes (it handles every mode: grayscale, palette, RGBA, CMYK, 16-bit); callers that take untrusted input
    check the declared size first. Raises ``ValueError`` with a one-line reason on anything that is not an image.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ValueError("empty file: no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgb = im.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError("not an image (no known image format)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:  # truncated, corrupt, or too large
        raise ValueError(f"unreadable image: {e}") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def read_image_file(path: str | Path) -> torch.Tensor:
    """An image file -> uint8 RGB ``(3, H, W)``; ``ValueError`` naming the reason when it cannot be read."""
    return decode_image_bytes(Path(path).read_bytes())
