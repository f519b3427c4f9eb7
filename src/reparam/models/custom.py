"""Any ``nn.Module`` as the network: ``model=custom model.net._target_=pkg.MyNet``.

The spec is primitive (it is saved in checkpoints): ``{"arch": "custom", "num_classes": N, "net": {"_target_":
"pkg.MyNet", ...keyword arguments}}``. The network needs no ``reparameterize()`` method: the training callback
and deploy fuse it with :func:`reparam.auto_fuse`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..autofuse import FuseReport, auto_fuse
from ..device import device_of, place
from .family import ModelFamily, register_model_family

__all__ = ["CustomFamily", "build_custom"]


def build_custom(spec: Mapping) -> nn.Module:
    """Instantiate ``spec["net"]`` with Hydra's ``instantiate`` (``_target_`` plus keyword arguments)."""
    net = spec.get("net")
    if not isinstance(net, Mapping) or not net.get("_target_"):
        raise ValueError("model=custom needs model.net._target_=<module.Class> (any nn.Module) and its arguments")
    if not isinstance(spec.get("num_classes"), int) or spec["num_classes"] < 2:
        raise ValueError(f"model=custom needs model.num_classes >= 2, got {spec.get('num_classes')}")
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        model = instantiate(dict(net), _convert_="all")
    except InstantiationException as err:
        raise ValueError(
            f"cannot build model.net._target_={net['_target_']}: {_root_cause(err)}; the class must be "
            "importable where train.py runs (pip install -e your package) and accept the given "
            "arguments (REPARAM_DEBUG=1 shows the traceback)"
        ) from err
    if not isinstance(model, nn.Module):
        raise ValueError(f"model.net._target_={net['_target_']} built a {type(model).__name__}, not an nn.Module")
    return model


def _root_cause(err: BaseException) -> str:
    """The innermost error behind Hydra's wrapper ("No module named 'pkg'"), without Hydra's HYDRA_FULL_ERROR hint."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = " ".join(str(err).split()).split(", set env var HYDRA_FULL_ERROR")[0]
    return f"{type(err).__name__}: {text}"[:300]


@register_model_family
class CustomFamily(ModelFamily):
    """``model=custom``: any ``nn.Module``, fused by :func:`reparam.auto_fuse`. Its fused form is a traced graph with
    no constructor: a fused artifact rebuilds it by fusing the train form again (auto_fuse decides from the structure,
    not the weights) and also holds a torch.export program for runtimes without the network's source."""

    arch = "custom"
    has_fused_constructor = False

    def complete(self, spec: Mapping, num_classes: Callable[[], int], image_size: tuple[int, int]) -> dict:
        """Also the network's own ``num_classes`` argument where it is null: the config passes
        ``${model.num_classes}``, which Hydra resolved to null before the data (an image folder) counted its classes."""
        spec = super().complete(spec, num_classes, image_size)
        net = spec.get("net")
        if isinstance(net, Mapping) and "num_classes" in net and net["num_classes"] is None:
            spec["net"] = {**net, "num_classes": spec["num_classes"]}
        return spec

    def build(self, spec: Mapping, deploy: bool = False) -> nn.Module:
        if deploy:
            raise ValueError("a custom model's fused form is built by reparam.auto_fuse, not by deploy=True")
        return build_custom(spec)

    def fuse(
        self, spec: Mapping, model: nn.Module, example_inputs: torch.Tensor | Sequence | None = None
    ) -> tuple[nn.Module, FuseReport | None]:
        """auto_fuse traced with ``example_inputs`` (default: zeros of the spec's input size), unverified: the
        callers verify against their own inputs."""
        if example_inputs is None:
            param = next(model.parameters(), None)
            dtype = param.dtype if param is not None else None
            example_inputs = place(torch.zeros(1, *self.input_size(spec)), device_of(model), dtype=dtype)
        return auto_fuse(model, example_inputs, verify=False)

    def fused_skeleton(self, spec: Mapping) -> nn.Module:
        return self.fuse(spec, self.build(spec).eval())[0]
