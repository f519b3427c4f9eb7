"""Model families, one registry (``MODELS``, keyed by the spec's ``arch``). ``build_model`` is the single way a
network is rebuilt from its spec, ``fuse_model`` the single way it is fused, ``complete_spec`` fills what the data
decides (class count, input size, RepVGG's stride plan) before training records the spec."""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..autofuse import FuseReport, auto_fuse
from ..convert import reparameterize_model
from ..device import device_of, place
from .custom import build_custom
from .repvgg import VARIANTS, RepVGG, RepVGGSpec, build_repvgg, stride_plan
from .timm_models import build_timm, load_pretrained

__all__ = [
    "MODELS",
    "VARIANTS",
    "ModelFamily",
    "RepVGG",
    "RepVGGSpec",
    "build_model",
    "complete_spec",
    "fuse_model",
    "fuse_model_with_report",
    "input_size",
    "is_custom",
    "load_pretrained",
    "stride_plan",
]

DEFAULT_INPUT_SIZE = (3, 32, 32)


@dataclass(frozen=True)
class ModelFamily:
    """How one ``arch`` is built (``deploy=True``: the fused structure, when it has a constructor) and fused."""

    build: Callable[[Mapping, bool], nn.Module]
    fused_by_auto_fuse: bool = False  # no fuse method of its own: torch.fx merges its branches


MODELS: dict[str, ModelFamily] = {
    "repvgg": ModelFamily(build_repvgg),
    "custom": ModelFamily(lambda spec, deploy: build_custom(spec), fused_by_auto_fuse=True),
    "timm": ModelFamily(build_timm),
}


def arch_of(spec: Mapping | RepVGGSpec) -> str:
    arch = spec.arch if isinstance(spec, RepVGGSpec) else spec.get("arch", "repvgg")
    if arch not in MODELS:
        raise ValueError(f"unknown model arch '{arch}'; choose one of {sorted(MODELS)}")
    return arch


def is_custom(spec: Mapping | RepVGGSpec) -> bool:
    """A spec fused by ``auto_fuse`` rather than by its blocks (``model=custom``: any nn.Module)."""
    return MODELS[arch_of(spec)].fused_by_auto_fuse


def input_size(spec: Mapping | RepVGGSpec) -> tuple[int, ...]:
    """(channels, height, width) of one input image, as the spec records it (32x32 for specs from before it did)."""
    recorded = spec.input_size if isinstance(spec, RepVGGSpec) else spec.get("input_size")
    if recorded:
        return tuple(int(v) for v in recorded)
    channels = spec.in_channels if isinstance(spec, RepVGGSpec) else int(spec.get("in_channels", 3))
    return (channels, *DEFAULT_INPUT_SIZE[1:])


def complete_spec(spec: Mapping, num_classes: Callable[[], int], image_size: tuple[int, int]) -> dict:
    """The spec with what the data decides filled in where it says null: ``num_classes`` (called only then: an
    image folder counts its class folders), ``input_size`` (the data's), and for RepVGG the stride plan of that size.
    The completed spec is what checkpoints and ``fused/config.json`` record."""
    spec = dict(spec)
    if spec.get("num_classes") is None:
        spec["num_classes"] = int(num_classes())
    if not spec.get("input_size"):
        spec["input_size"] = [int(spec.get("in_channels", 3)), int(image_size[0]), int(image_size[1])]
    if arch_of(spec) == "repvgg" and not spec.get("strides"):
        spec["strides"] = stride_plan(spec["input_size"][1], spec["input_size"][2])
    return spec


def build_model(spec: Mapping | RepVGGSpec, deploy: bool = False) -> nn.Module:
    """The one place a network is built from its saved description (train, callback and deploy use it).

    ``deploy=True`` builds the fused form of a block-model spec; a custom network's fused form comes from
    ``auto_fuse`` and has no constructor. Pretrained weights are not loaded here (:func:`load_pretrained`, once).
    """
    if isinstance(spec, RepVGGSpec):
        return build_repvgg(spec, deploy=deploy)
    if deploy and is_custom(spec):
        raise ValueError("a custom model's fused form is built by reparam.auto_fuse, not by deploy=True")
    return MODELS[arch_of(spec)].build(spec, deploy)


def fuse_model(
    spec: Mapping | RepVGGSpec,
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence | None = None,
) -> nn.Module:
    """The fused copy of ``model`` (eval mode): its blocks' own fusion, or ``auto_fuse`` for a custom network.

    ``auto_fuse`` traces with ``example_inputs`` (default: zeros of the spec's input size); the callers verify.
    """
    return fuse_model_with_report(spec, model, example_inputs)[0]


def fuse_model_with_report(
    spec: Mapping | RepVGGSpec, model: nn.Module, example_inputs: torch.Tensor | Sequence | None = None
) -> tuple[nn.Module, FuseReport | None]:
    """:func:`fuse_model`, plus ``auto_fuse``'s account of what it merged and left alone (None for block models,
    whose blocks all fuse)."""
    if not is_custom(spec):
        return reparameterize_model(model), None
    if example_inputs is None:
        param = next(model.parameters(), None)
        example_inputs = place(
            torch.zeros(1, *input_size(spec)), device_of(model), dtype=param.dtype if param is not None else None
        )
    return auto_fuse(model, example_inputs, verify=False)
