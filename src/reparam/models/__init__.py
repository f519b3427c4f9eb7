"""Model families. ``build_model`` is the single way a network is rebuilt from its spec."""

from .repvgg import VARIANTS, RepVGG, RepVGGSpec, build_model

__all__ = ["VARIANTS", "RepVGG", "RepVGGSpec", "build_model"]
