"""Device placement: the one place that decides where a model or a batch lives, and in which dtype and layout.

Everything that moves a model or its inputs (training, the fuse-and-verify callback, deploy's evaluation,
benchmark and export, ``auto_fuse``) goes through :func:`place`, so a CUDA model never meets a CPU example.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any, TypeVar, cast

import torch
from torch import nn

__all__ = ["resolve_device", "place", "device_of", "describe_device", "synchronize"]

T = TypeVar("T")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA when a GPU is visible, else CPU; otherwise the named device, checked to exist."""
    if isinstance(device, torch.device):
        dev = device
    elif device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(str(device))
        except RuntimeError as err:
            raise ValueError(f"device='{device}' is not a device; use auto, cpu or cuda[:N]") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device=cuda asked for but no CUDA GPU is visible; use device=auto or device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={dev} asked for but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return dev


def place(obj: T, device: str | torch.device, dtype: torch.dtype | None = None, channels_last: bool = False) -> T:
    """``obj`` (a module, a tensor, or a tuple/list/dict of tensors) on ``device``.

    ``dtype`` converts floating-point tensors and parameters only (labels stay integers); ``channels_last`` applies to
    4-d tensors and to modules. Modules are moved in place (as ``nn.Module.to`` does) and returned.
    """
    device = resolve_device(device)
    if isinstance(obj, nn.Module):
        obj = obj.to(device=device, dtype=dtype) if dtype is not None else obj.to(device=device)
        return obj.to(memory_format=torch.channels_last) if channels_last else obj
    if isinstance(obj, torch.Tensor):
        out = obj.to(
            device=device,
            dtype=dtype if dtype is not None and obj.is_floating_point() else None,
            non_blocking=obj.is_pinned(),
        )
        out = out.contiguous(memory_format=torch.channels_last) if channels_last and out.dim() == 4 else out
        return cast(T, out)  # a tensor in, a tensor out
    if isinstance(obj, (tuple, list)):
        return type(obj)(place(item, device, dtype, channels_last) for item in obj)
    if isinstance(obj, Mapping):
        return {key: place(item, device, dtype, channels_last) for key, item in obj.items()}  # type: ignore[return-value]
    return obj


def device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s first parameter (or buffer) lives; CPU for a module without either."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def describe_device(device: str | torch.device) -> str:
    """``cuda (NVIDIA H100 80GB HBM3)`` / ``cpu (x86_64)``: what a benchmark row ran on."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()})"


def synchronize(device: Any) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU): only where a measurement needs it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
