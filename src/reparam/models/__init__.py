"""Model families. ``build_model`` is the single way a network is rebuilt from its spec."""

from collections.abc import Mapping

from torch import nn

from .custom import build_custom
from .repvgg import VARIANTS, RepVGG, RepVGGSpec, build_repvgg

__all__ = ["VARIANTS", "RepVGG", "RepVGGSpec", "build_model", "is_custom"]


def is_custom(spec: Mapping | RepVGGSpec) -> bool:
    """A spec of ``model=custom``: any nn.Module, fused by ``auto_fuse`` rather than by its blocks."""
    return isinstance(spec, Mapping) and spec.get("arch") == "custom"


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
