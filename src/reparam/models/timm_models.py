"""timm's re-parameterizable models as the network: ``model=timm model.name=repvgg_a0 model.pretrained=<file|true>``.

The spec is primitive: ``{"arch": "timm", "name": ..., "num_classes": N, "input_size": [3, H, W], "pretrained":
<path> | true | false}``. Pretrained weights are read once, when training starts (:func:`load_pretrained`), from a
local file (safetensors, or a torch file read with ``weights_only=True``) or, with ``true``, from timm's hub where the
machine can reach it; every later rebuild (checkpoint, fused folder, deploy) loads the run's own weights instead. The
classifier head is new (the folder's classes). Fusing is the blocks' own ``reparameterize()`` (timm's RepVGG and
MobileOne blocks), verified like every other model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from ..errors import UserError
from .family import ModelFamily, register_model_family

log = logging.getLogger(__name__)

__all__ = ["TimmFamily", "build_timm", "load_pretrained", "read_weights_file"]


def _timm() -> ModuleType:
    try:
        import timm
    except ImportError as err:
        raise UserError("model=timm needs timm: pip install -e '.[timm]'") from err
    return timm


def build_timm(spec: Mapping, deploy: bool = False) -> nn.Module:
    """timm's network ``spec["name"]`` with ``spec["num_classes"]`` outputs and random weights; ``deploy=True``: its
    fused structure (timm's ``reparameterize_model``), weights still to load."""
    timm = _timm()
    name, num_classes = spec.get("name"), spec.get("num_classes")
    if not isinstance(name, str) or not name:
        raise ValueError("model=timm needs model.name=<timm model>, e.g. repvgg_a0 or mobileone_s0")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"model=timm needs model.num_classes >= 2, got {num_classes}")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as err:  # "Unknown model"
        raise ValueError(f"timm has no model '{name}' ({err}); e.g. repvgg_a0, repvgg_b0, mobileone_s0") from err
    if deploy:
        model = timm.utils.reparameterize_model(model.eval(), inplace=True)
    return model


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from ``.safetensors``, or from a torch file without unpickling anything but tensors."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise UserError(
            f"model.pretrained={path} is not a file; pass a .safetensors or .pth/.pt weights file, "
            "true (download from timm's hub) or false"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure is the same user error
        raise UserError(
            f"model.pretrained={path} is not a readable weights file ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); only tensors are loaded (weights_only=True)"
        ) from err
    for key in ("state_dict", "model", "state_dict_ema"):  # common checkpoint wrappers
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model.pretrained={path} holds no state_dict of tensors")
    return dict(state)


def load_pretrained(model: nn.Module, spec: Mapping) -> str | None:
    """Load ``spec["pretrained"]`` into a freshly built ``model``, all but the classifier head; returns what was
    loaded (None when nothing was asked for)."""
    pretrained = spec.get("pretrained")
    if pretrained in (None, False, "", "false", "none", "null"):
        return None
    timm = _timm()
    if pretrained is True or pretrained == "true":
        try:
            source = timm.create_model(spec["name"], pretrained=True)
        except Exception as err:  # noqa: BLE001 - offline, proxy, missing hub entry: one line
            raise UserError(
                f"could not fetch pretrained weights for {spec['name']} from timm's hub "
                f"({type(err).__name__}: {str(err).splitlines()[0][:160]}); pass "
                "model.pretrained=<local .safetensors or .pth file> instead"
            ) from err
        state, where = source.state_dict(), f"timm's hub ({spec['name']})"
    else:
        state, where = read_weights_file(pretrained), str(pretrained)
    pretrained_cfg = getattr(model, "pretrained_cfg", None)  # timm's models name their classifier there
    head = str(pretrained_cfg.get("classifier", "")) if isinstance(pretrained_cfg, Mapping) else ""
    own = model.state_dict()
    is_head = lambda key: bool(head) and key.startswith(head + ".")  # noqa: E731
    body = {k: v for k, v in state.items() if not is_head(k)}
    missing = sorted(k for k in own if k not in body and not is_head(k))
    unexpected = sorted(k for k in body if k not in own)
    mismatched = sorted(k for k in body if k in own and body[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        first = (missing or unexpected or mismatched)[0]
        raise UserError(
            f"model.pretrained={where} does not fit timm's {spec['name']}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} mismatched tensor(s) (first: {first}); "
            "is it the weights of this model?"
        )
    model.load_state_dict(body, strict=False)
    log.info(
        "model.pretrained: %d tensors loaded from %s into timm's %s; the classifier (%s) starts new for %s classes "
        "(%d tensors of the file left out)",
        len(body),
        where,
        spec["name"],
        head or "none named",
        spec.get("num_classes"),
        len(state) - len(body),
    )
    return where


@register_model_family
class TimmFamily(ModelFamily):
    """``model=timm``: timm's re-parameterizable networks; their blocks fuse themselves (``reparameterize()``)."""

    arch = "timm"

    def build(self, spec: Mapping, deploy: bool = False) -> nn.Module:
        return build_timm(spec, deploy=deploy)

    def load_pretrained(self, model: nn.Module, spec: Mapping) -> str | None:
        return load_pretrained(model, spec)
