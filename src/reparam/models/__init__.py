"""Model families. ``build_model`` is the single way a network is rebuilt from its spec, ``fuse_model`` the single
way it is fused."""

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..autofuse import FuseReport, auto_fuse
from ..convert import reparameterize_model
from ..device import device_of, place
from .custom import build_custom
from .repvgg import VARIANTS, RepVGG, RepVGGSpec, build_repvgg

__all__ = ["VARIANTS", "RepVGG", "RepVGGSpec", "build_model", "fuse_model", "fuse_model_with_report", "input_size",
           "is_custom"]

DEFAULT_INPUT_SIZE = (3, 32, 32)


def is_custom(spec: Mapping | RepVGGSpec) -> bool:
    """A spec of ``model=custom``: any nn.Module, fused by ``auto_fuse`` rather than by its blocks."""
    return isinstance(spec, Mapping) and spec.get("arch") == "custom"


def input_size(spec: Mapping | RepVGGSpec) -> tuple[int, ...]:
    """(channels, height, width) of one input image, as the spec records it."""
    if isinstance(spec, Mapping) and spec.get("input_size"):
        return tuple(int(v) for v in spec["input_size"])
    channels = spec.in_channels if isinstance(spec, RepVGGSpec) else int(spec.get("in_channels", 3))
    return (channels, *DEFAULT_INPUT_SIZE[1:])


def build_model(spec: Mapping | RepVGGSpec, deploy: bool = False) -> nn.Module:
    """The one place a network is built from its saved description (train, callback and deploy use it).

    ``deploy=True`` builds the fused form of a RepVGG-family spec; a custom network's fused form comes from
    ``auto_fuse`` and has no constructor.
    """
    if is_custom(spec):
        if deploy:
            raise ValueError("a custom model's fused form is built by reparam.auto_fuse, not by deploy=True")
        return build_custom(spec)
    return build_repvgg(spec, deploy=deploy)


def fuse_model(spec: Mapping | RepVGGSpec, model: nn.Module, example_inputs: torch.Tensor | Sequence | None = None,
               ) -> nn.Module:
    """The fused copy of ``model`` (eval mode): its blocks' own fusion, or ``auto_fuse`` for a custom network.

    ``auto_fuse`` traces with ``example_inputs`` (default: zeros of the spec's input size); the callers verify.
    """
    return fuse_model_with_report(spec, model, example_inputs)[0]


def fuse_model_with_report(spec: Mapping | RepVGGSpec, model: nn.Module,
                           example_inputs: torch.Tensor | Sequence | None = None) -> tuple[nn.Module, FuseReport | None]:
    """:func:`fuse_model`, plus ``auto_fuse``'s account of what it merged and left alone (None for block models,
    whose blocks all fuse)."""
    if not is_custom(spec):
        return reparameterize_model(model), None
    if example_inputs is None:
        param = next(model.parameters(), None)
        example_inputs = place(torch.zeros(1, *input_size(spec)), device_of(model),
                               dtype=param.dtype if param is not None else None)
    return auto_fuse(model, example_inputs, verify=False)
