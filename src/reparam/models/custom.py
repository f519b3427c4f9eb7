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
