"""A network written the way users write theirs: plain ``nn.Module`` code, parallel branches, no fuse method.

The default of ``model=custom``; ``reparam.auto_fuse`` finds and merges its branches.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AsymmetricNet"]


def _conv_bn(cin: int, cout: int, kernel: tuple[int, int], stride: int) -> nn.Sequential:
    padding = (kernel[0] // 2, kernel[1] // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout))


class _Stage(nn.Module):
    """ACNet-style: ``relu(BN(conv3x3) + BN(conv1x3) + BN(conv3x1) [+ BN(x)])``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.square = _conv_bn(cin, cout, (3, 3), stride)
        self.wide = _conv_bn(cin, cout, (1, 3), stride)
        self.tall = _conv_bn(cin, cout, (3, 1), stride)
        self.skip = nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.square(x) + self.wide(x) + self.tall(x)
        if self.skip is not None:
            out = out + self.skip(x)
        return torch.relu(out)


class AsymmetricNet(nn.Module):
    """A small ACNet-style classifier for 32x32 images: stages of ``_Stage`` blocks, then pool and a linear head."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, ...] = (16, 32, 64),
        depths: tuple[int, ...] = (1, 2, 2),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            for j in range(depth):
                layers.append(_Stage(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))
