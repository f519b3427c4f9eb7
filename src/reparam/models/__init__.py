"""Model families, one registry (``MODELS``, keyed by the spec's ``arch``), one :class:`ModelFamily` per architecture.

``build_model`` is the single way a network is rebuilt from its spec, ``fuse_model`` the single way it is fused,
``complete_spec`` fills what the data decides (class count, input size, RepVGG's stride plan) before training records
the spec. Each asks the spec's family; a new architecture is one ``ModelFamily`` subclass registered with
``@register_model_family`` and one config file (docs/design.md, "Adding a model").
"""

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..autofuse import FuseReport
from .custom import CustomFamily  # noqa: F401 - registers the family
from .family import DEFAULT_INPUT_SIZE, MODELS, ModelFamily, register_model_family
from .repvgg import VARIANTS, RepVGG, RepVGGFamily, RepVGGSpec, stride_plan  # noqa: F401 - RepVGGFamily registers
from .timm_models import TimmFamily  # noqa: F401 - registers the family

__all__ = [
    "DEFAULT_INPUT_SIZE",
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
    "load_pretrained",
    "model_family",
    "register_model_family",
    "stride_plan",
]

Spec = Mapping | RepVGGSpec


def _as_mapping(spec: Spec) -> Mapping:
    return spec.to_dict() if isinstance(spec, RepVGGSpec) else spec


def model_family(spec: Spec) -> ModelFamily:
    """The family of the spec's ``arch`` (``repvgg`` for specs recorded before the key existed)."""
    arch = _as_mapping(spec).get("arch", "repvgg")
    if arch not in MODELS:
        raise ValueError(
            f"unknown model arch '{arch}'; choose one of {sorted(MODELS)} (a family of your own, registered with "
            "@register_model_family: imports=[<its module>])"
        )
    return MODELS[arch]


def input_size(spec: Spec) -> tuple[int, ...]:
    """(channels, height, width) of one input image, as the spec records it (32x32 for specs from before it did)."""
    return model_family(spec).input_size(_as_mapping(spec))


def complete_spec(spec: Mapping, num_classes: Callable[[], int], image_size: tuple[int, int]) -> dict:
    """The spec with what the data decides filled in where it says null: ``num_classes`` (called only then: an
    image folder counts its class folders), ``input_size`` (the data's), and what the family derives from them
    (RepVGG: the stride plan of that size). The completed spec is what checkpoints and ``fused/config.json`` record."""
    return model_family(spec).complete(spec, num_classes, image_size)


def build_model(spec: Spec, deploy: bool = False) -> nn.Module:
    """The one place a network is built from its saved description (train, callback and deploy use it).

    ``deploy=True`` builds the fused form where the family has a constructor for it (a custom network's fused form
    comes from ``auto_fuse``). Pretrained weights are not loaded here (:func:`load_pretrained`, once).
    """
    family = model_family(spec)
    if deploy and not family.has_fused_constructor:
        raise ValueError(
            f"model arch '{family.arch}' has no fused constructor: its fused form comes from fuse_model(), "
            "not from deploy=True"
        )
    return family.build(_as_mapping(spec), deploy)


def fuse_model(spec: Spec, model: nn.Module, example_inputs: torch.Tensor | Sequence | None = None) -> nn.Module:
    """The fused copy of ``model`` (eval mode): its blocks' own fusion, or ``auto_fuse`` for a custom network.

    ``auto_fuse`` traces with ``example_inputs`` (default: zeros of the spec's input size); the callers verify.
    """
    return fuse_model_with_report(spec, model, example_inputs)[0]


def fuse_model_with_report(
    spec: Spec, model: nn.Module, example_inputs: torch.Tensor | Sequence | None = None
) -> tuple[nn.Module, FuseReport | None]:
    """:func:`fuse_model`, plus ``auto_fuse``'s account of what it merged and left alone (None for block models,
    whose blocks all fuse)."""
    return model_family(spec).fuse(_as_mapping(spec), model, example_inputs)


def load_pretrained(model: nn.Module, spec: Mapping) -> str | None:
    """Load the weights ``spec`` asks for (timm: ``pretrained``) into a freshly built ``model``, once, before training;
    returns what was loaded (None: nothing asked for)."""
    return model_family(spec).load_pretrained(model, spec)
