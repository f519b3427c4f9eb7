"""The RepVGG family (Ding et al., 2021), adapted to 32x32 inputs.

Stages and widths follow the paper: stage widths ``[min(64, 64a), 64a, 128a, 256a, 512b]`` and depths
``A: 1,2,4,14,1``, ``B: 1,4,6,16,1``. On ImageNet every stage downsamples (224 -> 7); on CIFAR's
32x32 that would leave a 1x1 map, so by default stages 0 and 1 keep the resolution and stages 2-4
halve it: 32 -> 32 -> 32 -> 16 -> 8 -> 4, then global average pooling and a linear classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from ..blocks import RepVGGBlock

__all__ = ["VARIANTS", "RepVGGSpec", "RepVGG", "build_model"]

# variant -> (depths per stage 1..4, width multiplier a, width multiplier b); stage 0 has depth 1.
VARIANTS: dict[str, tuple[tuple[int, int, int, int], float, float]] = {
    "A0": ((2, 4, 14, 1), 0.75, 2.5),
    "A1": ((2, 4, 14, 1), 1.0, 2.5),
    "A2": ((2, 4, 14, 1), 1.5, 2.75),
    "B0": ((4, 6, 16, 1), 1.0, 2.5),
    "B1": ((4, 6, 16, 1), 2.0, 4.0),
}
DEFAULT_STRIDES = (1, 1, 2, 2, 2)


@dataclass
class RepVGGSpec:
    """Everything needed to rebuild a network: primitive values only (saved in checkpoints and JSON).

    ``widths`` and ``depths`` (5 entries each, stage 0 first) override the variant's, e.g. to build a
    tiny test model. ``variant=None`` requires both.
    """

    variant: str | None = "A0"
    num_classes: int = 10
    in_channels: int = 3
    widths: list[int] | None = None
    depths: list[int] | None = None
    strides: list[int] = field(default_factory=lambda: list(DEFAULT_STRIDES))
    arch: str = "repvgg"

    @classmethod
    def from_dict(cls, spec: Mapping) -> RepVGGSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown}; known options are {sorted(known)}")
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in spec.items()})

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self) -> tuple[list[int], list[int]]:
        """(widths, depths) for stages 0..4 after applying the variant and the overrides."""
        if self.arch != "repvgg":
            raise ValueError(f"unknown arch '{self.arch}'; this package builds 'repvgg'")
        if self.variant is None:
            if self.widths is None or self.depths is None:
                raise ValueError("model.variant=null needs both model.widths and model.depths (5 entries each)")
            widths, depths = list(self.widths), list(self.depths)
        else:
            if self.variant not in VARIANTS:
                raise ValueError(f"unknown RepVGG variant '{self.variant}'; choose one of {sorted(VARIANTS)}")
            stage_depths, a, b = VARIANTS[self.variant]
            widths = [min(64, int(64 * a)), int(64 * a), int(128 * a), int(256 * a), int(512 * b)]
            depths = [1, *stage_depths]
            widths = list(self.widths) if self.widths is not None else widths
            depths = list(self.depths) if self.depths is not None else depths
        for name, values in (("widths", widths), ("depths", depths), ("strides", self.strides)):
            if len(values) != 5 or any(int(v) < 1 for v in values):
                raise ValueError(f"model.{name} needs 5 positive integers (stages 0..4), got {values}")
        if self.num_classes < 2 or self.in_channels < 1:
            raise ValueError(f"need num_classes >= 2 and in_channels >= 1, got {self.num_classes}, {self.in_channels}")
        return widths, depths


class RepVGG(nn.Module):
    """RepVGG: five stages of :class:`RepVGGBlock`, global average pooling and a linear head."""

    def __init__(self, spec: RepVGGSpec, deploy: bool = False) -> None:
        super().__init__()
        self.spec = spec
        widths, depths = spec.resolved()
        stages: list[nn.Module] = []
        in_ch = spec.in_channels
        for width, depth, stride in zip(widths, depths, spec.strides):
            blocks = []
            for i in range(depth):
                blocks.append(RepVGGBlock(in_ch, width, 3, stride=stride if i == 0 else 1, deploy=deploy))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_ch, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.stages(x)), 1))

    @property
    def is_fused(self) -> bool:
        return all(m.is_fused for m in self.modules() if isinstance(m, RepVGGBlock))


def build_model(spec: RepVGGSpec | Mapping, deploy: bool = False) -> RepVGG:
    """The one place a network is built from its saved description (train, callback and deploy use it)."""
    if not isinstance(spec, RepVGGSpec):
        spec = RepVGGSpec.from_dict(spec)
    return RepVGG(spec, deploy=deploy)
