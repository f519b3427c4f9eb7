"""What every architecture (``arch`` in a model spec) says about itself: one :class:`ModelFamily` subclass each.

A spec is primitive (saved in checkpoints and ``fused/config.json``); its family says how the spec is completed from
the data, how the network is built (train form, and the fused form where it has a constructor), how it is fused, the
size of one input, and what its fused artifact holds. ``reparam.models.MODELS`` maps ``arch`` to a family instance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, TypeVar

import torch
from torch import nn

from ..autofuse import FuseReport
from ..convert import fold_conv_bn_pairs, fusable_blocks, reparameterize_model

__all__ = ["DEFAULT_INPUT_SIZE", "MODELS", "ModelFamily", "register_model_family"]

# specs recorded before they held an input size were all 32x32 (CIFAR)
DEFAULT_INPUT_SIZE = (3, 32, 32)


class ModelFamily:
    """One architecture. Subclasses implement :meth:`build`; the rest has defaults for a network whose blocks fuse
    themselves (``reparameterize()``) and whose fused form has a constructor (``build(spec, deploy=True)``)."""

    arch: ClassVar[str]
    # False: the fused form exists only as the result of fusing the train form (auto_fuse); the fused artifact then
    # also holds a torch.export program, for runtimes that do not have the network's source
    has_fused_constructor: ClassVar[bool] = True

    def build(self, spec: Mapping, deploy: bool = False) -> nn.Module:
        """The network ``spec`` describes, random weights: train form, or (``deploy=True``) the fused structure."""
        raise NotImplementedError

    def fuse(
        self, spec: Mapping, model: nn.Module, example_inputs: torch.Tensor | Sequence | None = None
    ) -> tuple[nn.Module, FuseReport | None]:
        """The fused copy of ``model`` (eval mode), and auto_fuse's report where it fused (None: the blocks did).

        By default the blocks fuse themselves, and a conv + BN pair left outside blocks in a ``Sequential`` (a stem,
        a head) is folded too (:func:`reparam.convert.fold_conv_bn_pairs`): the fused network keeps no BN there."""
        return fold_conv_bn_pairs(reparameterize_model(model)), None

    def fused_skeleton(self, spec: Mapping) -> nn.Module:
        """The fused structure, weights still to load (what a fused artifact's weights are loaded into): the
        ``deploy=True`` build, with any block it still builds in train form fused and conv + BN pairs folded, as
        :meth:`fuse` does (a family whose ``build`` ignores ``deploy`` then loads its artifacts too)."""
        model = self.build(spec, deploy=True)
        if fusable_blocks(model):
            model = reparameterize_model(model.eval(), inplace=True)
        return fold_conv_bn_pairs(model.eval())

    @property
    def exports_program(self) -> bool:
        """Whether the fused artifact also holds ``model.pt2``: elsewhere, a fused form without a constructor needs
        the program (without the network's source it cannot be rebuilt)."""
        return not self.has_fused_constructor

    def input_size(self, spec: Mapping) -> tuple[int, ...]:
        """(channels, height, width) of one input image, as the spec records it (32x32 for specs from before)."""
        recorded = spec.get("input_size")
        if recorded:
            return tuple(int(v) for v in recorded)
        return (int(spec.get("in_channels", DEFAULT_INPUT_SIZE[0])), *DEFAULT_INPUT_SIZE[1:])

    def complete(self, spec: Mapping, num_classes: Callable[[], int], image_size: tuple[int, int]) -> dict:
        """The spec with the class count and input size filled in where it says null (``num_classes`` is called
        only then: an image folder counts its class folders)."""
        spec = dict(spec)
        if spec.get("num_classes") is None:
            spec["num_classes"] = int(num_classes())
        if not spec.get("input_size"):
            spec["input_size"] = [int(spec.get("in_channels", 3)), int(image_size[0]), int(image_size[1])]
        return spec

    def load_pretrained(self, model: nn.Module, spec: Mapping) -> str | None:
        """Load the weights the spec asks for into a freshly built ``model``; what was loaded (None: nothing)."""
        return None


# arch -> the family's one instance; filled by @register_model_family (the built-in families, and code of one's own
# imported with imports=[...])
MODELS: dict[str, ModelFamily] = {}

F = TypeVar("F", bound=type[ModelFamily])


def register_model_family(cls: F) -> F:
    """Class decorator: register a :class:`ModelFamily` under its ``arch`` (a model config whose ``arch`` is it then
    builds it).

    A taken ``arch`` is refused (the same class again is not: a module imported twice), as is a class that is not
    a ``ModelFamily`` or names no ``arch``.
    """
    if not (isinstance(cls, type) and issubclass(cls, ModelFamily)):
        raise TypeError(f"register_model_family takes a ModelFamily subclass, got {cls!r}")
    arch = getattr(cls, "arch", None)
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"{cls.__qualname__} must set arch = '<name>' (the model spec's 'arch') to be registered")
    taken = MODELS.get(arch)
    if taken is not None and type(taken).__qualname__ != cls.__qualname__:
        raise ValueError(
            f"model arch '{arch}' is already registered by {type(taken).__module__}.{type(taken).__qualname__}; "
            "give yours another arch"
        )
    MODELS[arch] = cls()
    return cls
