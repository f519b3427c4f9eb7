"""Reading Lightning checkpoints written by train.py: ``weights_only=True``, every failure a UserError."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .errors import UserError

__all__ = ["read_checkpoint", "net_state"]


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
            f"{path} is not a readable PyTorch checkpoint: {_what_is_wrong(path)}; copy it again from where it was "
            "written, or use another checkpoint, e.g. <run>/checkpoints/last.ckpt"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(
            f"{path} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by train.py or a "
            "fused/ folder"
        )
    net = (ckpt.get("hyper_parameters") or {}).get("net")
    if not isinstance(net, dict):
        raise UserError(
            f"{path} is not a reparam checkpoint (its hyper_parameters have no 'net' spec); was it written by "
            "another project?"
        )
    return ckpt


def _what_is_wrong(path: Path) -> str:
    """Why torch.load failed, in words (its own messages are internal zip or pickle codes such as
    ``KeyError: '101'``)."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"it cannot be opened ({err.strerror or 'read error'})"
    if not head:
        return "the file is empty (0 bytes)"
    if head == b"PK\x03\x04":  # torch.save writes a zip archive
        return "the file is cut off or damaged (its zip archive is incomplete), as after an interrupted copy or write"
    return "the file is not a checkpoint at all (torch.save writes a zip archive; this file is something else)"


def net_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The network's weights from a checkpoint dict (the LightningModule keeps the network as ``net``)."""
    prefix = "net."
    return {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
