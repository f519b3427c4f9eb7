"""The RepVGG family (Ding et al., 2021) at any input size.

Stages and widths follow the paper: stage widths ``[min(64, 64a), 64a, 128a, 256a, 512b]`` and depths
``A: 1,2,4,14,1``, ``B: 1,4,6,16,1``. The stride plan follows the input (:func:`stride_plan`): on ImageNet's 224
every stage downsamples (224 -> 7), as in the paper; on CIFAR's 32x32 that would leave a 1x1 map, so stages 0 and
1 keep the resolution and stages 2-4 halve it (32 -> 4); between, as many stages halve as keep the last map at
least 4 pixels wide. Then global average pooling and a linear classifier. The plan is recorded in the spec.

Any registered block kind fills the layout (``block``: repvgg, qarepvgg, acnet, dbb, mobileone, ...), so
every kind is compared on the same stages and all fuse to the same plain-VGG shape (mobileone: a
depthwise + pointwise pair per block).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, cast

import torch
from torch import nn

from ..blocks import BLOCKS, MultiBranchBlock, check_state_dict_form, make_block, state_dict_form, unknown_block
from .family import ModelFamily, register_model_family

__all__ = ["VARIANTS", "RepVGGSpec", "RepVGG", "RepVGGFamily", "build_repvgg", "stride_plan"]

# variant -> (depths per stage 1..4, width multiplier a, width multiplier b); stage 0 has depth 1.
VARIANTS: dict[str, tuple[tuple[int, int, int, int], float, float]] = {
    "A0": ((2, 4, 14, 1), 0.75, 2.5),
    "A1": ((2, 4, 14, 1), 1.0, 2.5),
    "A2": ((2, 4, 14, 1), 1.5, 2.75),
    "B0": ((4, 6, 16, 1), 1.0, 2.5),
    "B1": ((4, 6, 16, 1), 2.0, 4.0),
}
DEFAULT_STRIDES = (1, 1, 2, 2, 2)  # the CIFAR plan: stride_plan(32, 32)


def stride_plan(height: int, width: int) -> list[int]:
    """Strides of stages 0..4 for an input of ``height x width``: the last ``n`` stages halve the map, ``n`` the
    most halvings (at most 5) that leave the shorter side at least 4 pixels: 32 -> 3 (CIFAR: 32 -> 4), 64 -> 4,
    224 -> 5 (ImageNet: 224 -> 7)."""
    side, halvings = min(int(height), int(width)), 0
    while halvings < 5 and side // 2 ** (halvings + 1) >= 4:
        halvings += 1
    return [1] * (5 - halvings) + [2] * halvings


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
    # null: the stride plan of input_size (stride_plan); completed and recorded before training
    strides: list[int] | None = None
    # (channels, height, width) of one input image; null: 32x32 (specs recorded before the field existed)
    input_size: list[int] | None = None
    arch: str = "repvgg"
    # the square kernel of every block (odd: 1, 3, 5, ...); specs recorded before the field existed used 3
    kernel_size: int = 3
    # the block kind of every stage (reparam.blocks registry) and its extra options, e.g. num_conv_branches
    block: str = "repvgg"
    block_options: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: Mapping) -> RepVGGSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown}; known options are {sorted(known)}")
        spec = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in spec.items()}
        spec["block_options"] = dict(spec.get("block_options") or {})
        return cls(**spec)

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved_strides(self) -> list[int]:
        if self.strides:
            return [int(v) for v in self.strides]
        return stride_plan(*self.input_size[1:]) if self.input_size else list(DEFAULT_STRIDES)

    def resolved(self) -> tuple[list[int], list[int]]:
        """(widths, depths) for stages 0..4 after applying the variant and the overrides."""
        if self.arch != "repvgg":
            raise ValueError(
                f"unknown arch '{self.arch}'; this family builds 'repvgg' (model=custom for any nn.Module)"
            )
        if self.block not in BLOCKS:
            raise ValueError(unknown_block(self.block))
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
        for name, values in (("widths", widths), ("depths", depths), ("strides", self.resolved_strides())):
            if len(values) != 5 or any(int(v) < 1 for v in values):
                raise ValueError(f"model.{name} needs 5 positive integers (stages 0..4), got {values}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"model.kernel_size must be odd (1, 3, 5, ...) so branches centre, got {self.kernel_size}")
        if self.num_classes < 2 or self.in_channels < 1:
            raise ValueError(f"need num_classes >= 2 and in_channels >= 1, got {self.num_classes}, {self.in_channels}")
        return widths, depths


class _HasFusedForm(Protocol):
    """What every registered block kind has: the plain module it becomes."""

    def fused_form(self) -> nn.Module: ...


class RepVGG(nn.Module):
    """RepVGG: five stages of multi-branch blocks (``spec.block``), global average pooling and a linear head.

    ``deploy=True`` builds the fused form: every block already its plain ``Conv2d`` + ReLU.
    """

    def __init__(self, spec: RepVGGSpec, deploy: bool = False) -> None:
        super().__init__()
        self.spec = spec
        widths, depths = spec.resolved()
        stages: list[nn.Module] = []
        in_ch = spec.in_channels
        for width, depth, stride in zip(widths, depths, spec.resolved_strides(), strict=True):
            blocks = []
            for i in range(depth):
                block = make_block(
                    spec.block,
                    in_ch,
                    width,
                    spec.kernel_size,
                    stride=stride if i == 0 else 1,
                    deploy=deploy,
                    **spec.block_options,
                )
                blocks.append(cast(_HasFusedForm, block).fused_form() if deploy else block)
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_ch, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.stages(x)), 1))

    @property
    def is_fused(self) -> bool:
        return not any(isinstance(m, MultiBranchBlock) and not m.is_fused for m in self.modules())

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        # the fused form's blocks are plain Sequential(Conv2d, act), so the blocks' own check cannot see them
        check_state_dict_form(state_dict_form(state_dict), self.is_fused, "RepVGG")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def build_repvgg(spec: RepVGGSpec | Mapping, deploy: bool = False) -> RepVGG:
    if not isinstance(spec, RepVGGSpec):
        spec = RepVGGSpec.from_dict(spec)
    return RepVGG(spec, deploy=deploy)


@register_model_family
class RepVGGFamily(ModelFamily):
    """``model=repvgg_*``: the layout above with any registered block kind; its blocks fuse themselves."""

    arch = "repvgg"

    def build(self, spec: Mapping, deploy: bool = False) -> nn.Module:
        return build_repvgg(spec, deploy=deploy)

    def complete(self, spec: Mapping, num_classes: Callable[[], int], image_size: tuple[int, int]) -> dict:
        """Class count and input size, and the stride plan of that size (recorded, so a rebuild never re-plans)."""
        spec = super().complete(spec, num_classes, image_size)
        if not spec.get("strides"):
            spec["strides"] = stride_plan(spec["input_size"][1], spec["input_size"][2])
        return spec
