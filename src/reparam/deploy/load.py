"""Load what training produced, in either form, without unpickling anything unsafe."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..artifact import CONFIG, WEIGHTS, read_fused_artifact
from ..blocks import FormMismatchError
from ..convert import reparameterize_model
from ..errors import UserError
from ..models import RepVGG, build_model

__all__ = ["Loaded", "load_for_deploy", "read_checkpoint"]


@dataclass
class Loaded:
    """Both forms where available, and what the training run recorded."""

    source: Path
    kind: str  # "checkpoint" | "fused"
    fused: RepVGG
    train_form: RepVGG | None
    spec: dict
    data: dict = field(default_factory=dict)  # the training run's datamodule hyperparameters
    recorded: dict = field(default_factory=dict)  # metrics recorded at training time
    input_info: dict = field(default_factory=dict)


def read_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint through ``torch.load(weights_only=True)``, with every failure a UserError."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"refusing to load {path}: it holds objects other than tensors and plain containers, which could run code "
            f"when unpickled ({first[:160]}); only load checkpoints written by reparam from sources you trust"
        ) from err
    except Exception as err:  # noqa: BLE001 - any failure of this one call means an unreadable file
        raise UserError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt? {(str(err).splitlines() or [type(err).__name__])[0][:160]}); "
            "use another checkpoint, e.g. <run>/checkpoints/last.ckpt"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by train.py or a fused/ folder")
    net = (ckpt.get("hyper_parameters") or {}).get("net")
    if not isinstance(net, dict):
        raise UserError(
            f"{path} is not a reparam checkpoint (its hyper_parameters have no 'net' spec); was it written by another project?"
        )
    return ckpt


def _find_checkpoint(directory: Path) -> Path | None:
    for candidate in (directory / "last.ckpt", directory / "checkpoints" / "last.ckpt"):
        if candidate.is_file():
            return candidate
    ckpts = sorted(directory.glob("*.ckpt")) + sorted(directory.glob("checkpoints/*.ckpt"))
    return ckpts[-1] if ckpts else None


def _load_train_form(ckpt: dict, path: Path) -> tuple[RepVGG, dict]:
    spec = dict(ckpt["hyper_parameters"]["net"])
    try:
        model = build_model(spec)
    except ValueError as err:
        raise UserError(f"{path}: its model spec cannot be built ({err})") from err
    state = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, FormMismatchError) as err:
        raise UserError(
            f"{path}: weights do not fit the model it describes ({str(err).splitlines()[0][:200]}); "
            "the checkpoint is from another model or class count"
        ) from err
    return model.eval(), spec


def load_for_deploy(path: str | Path, expected_num_classes: int | None = None) -> Loaded:
    """Load a ``.ckpt`` (train form, fused here), a fused folder, or a run directory (its last.ckpt).

    From a checkpoint both forms are returned; from a fused folder only the fused form exists.
    """
    if path is None or str(path).strip() in ("", "None", "???"):
        raise UserError("ckpt is required: python deploy.py ckpt=<run>/checkpoints/last.ckpt (or ckpt=<run>/fused)")
    source = Path(str(path)).expanduser()
    if not source.exists():
        raise UserError(f"ckpt={source} does not exist; pass a checkpoint file or a fused/ folder written by train.py")
    if source.is_dir() and not (source / WEIGHTS).exists():  # a run directory: prefer a checkpoint (both forms)
        found = _find_checkpoint(source)
        if found is None and not (source / "fused" / WEIGHTS).exists():
            raise UserError(
                f"{source} holds no checkpoint (*.ckpt) and no fused model ({WEIGHTS} + {CONFIG}); "
                "pass ckpt=<run>/checkpoints/last.ckpt or ckpt=<run>/fused"
            )
        source = found or source / "fused"
    if source.is_dir():
        artifact = read_fused_artifact(source)
        config = artifact.config
        loaded = Loaded(source, "fused", artifact.model, None, dict(config["model"]), dict(config.get("data", {})),
                        dict(config.get("metrics", {})), dict(config.get("input", {})))
    else:
        ckpt = read_checkpoint(source)
        train_form, spec = _load_train_form(ckpt, source)
        loaded = Loaded(source, "checkpoint", reparameterize_model(train_form), train_form, spec,
                        dict(ckpt.get("datamodule_hyper_parameters") or {}),
                        {"epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")})
    if expected_num_classes is not None and loaded.spec.get("num_classes") != expected_num_classes:
        raise UserError(
            f"{loaded.source} is a {loaded.spec.get('num_classes')}-class model but the test data has "
            f"{expected_num_classes} classes; pass the matching data (data.dataset=...) or checkpoint"
        )
    return loaded


def plain_vgg_like(fused: nn.Module) -> nn.Sequential:
    """Conv + ReLU only, with the fused model's shapes and random weights: the speed limit of the fused form."""
    from ..blocks import RepVGGBlock

    layers: list[nn.Module] = []
    for m in fused.modules():
        if isinstance(m, RepVGGBlock):
            conv = m.fused
            layers += [nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                 conv.dilation, conv.groups, bias=True), nn.ReLU(inplace=True)]
    head = fused.head
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head.in_features, head.out_features)]
    return nn.Sequential(*layers).eval()
