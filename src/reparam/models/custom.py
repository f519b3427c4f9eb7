"""Any ``nn.Module`` as the network: ``model=custom model.net._target_=pkg.MyNet``.

The spec is primitive (it is saved in checkpoints): ``{"arch": "custom", "num_classes": N, "net": {"_target_":
"pkg.MyNet", ...keyword arguments}}``. The network needs no ``reparameterize()`` method: the training callback
and deploy fuse it with :func:`reparam.auto_fuse`.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

__all__ = ["build_custom"]


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
        first = " ".join(str(err).split())[:300]
        raise ValueError(f"cannot build model.net._target_={net['_target_']}: {first}") from err
    if not isinstance(model, nn.Module):
        raise ValueError(f"model.net._target_={net['_target_']} built a {type(model).__name__}, not an nn.Module")
    return model
