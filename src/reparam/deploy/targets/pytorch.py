"""Targets that run in PyTorch on the deploy device: eager or compiled, float32 or half precision.

Every model and every input goes through :func:`reparam.device.place` (device, dtype, memory layout), so a target on
CUDA never meets a CPU tensor. Each target holds its own copy of the network: the loaded fused model stays on the
CPU in float32 for the exports.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ...compare import Tolerance
from ...device import place
from ..gates import Equivalence, Gate, MaxDrop, Reference
from ..load import Loaded, plain_vgg_like
from ..timing import count_flops
from .base import Cost, Target, TargetContext, TargetUnavailable, register_target

__all__ = ["TorchTarget"]

HALF_ADVICE = "use a float32 target for this model, or allow more with the setting named here"
PRECISIONS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class TorchTarget(Target):
    """A network in PyTorch on ``device`` in ``dtype``, eager or compiled.

    The class attributes ``dtype``, ``compiled`` and ``layout_channels_last`` are what :meth:`build` makes of a
    registered target; scripts may build any combination directly (``TorchTarget(train_form, device, Reference(),
    dtype=torch.bfloat16)``).
    """

    dtype: torch.dtype = torch.float32  # what build() makes of a registered target; an instance may differ
    compiled: bool = False
    # a registered variant's memory layout; None: benchmark.channels_last, as for every built-in torch target
    layout_channels_last: ClassVar[bool | None] = None
    auto_devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def __init__(
        self,
        network: nn.Module,
        device: torch.device,
        gate: Gate,
        *,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        compiled: bool = False,
        name: str | None = None,
        form: str | None = None,
        compile_mode: str | None = None,
    ) -> None:
        self.name, self.form = name or type(self).name, form or type(self).form
        self.device, self.gate, self.dtype, self.channels_last = device, gate, dtype, channels_last
        self.precision, self.compiled = PRECISIONS[dtype], compiled
        self.runtime = "torch.compile" if compiled else "torch"
        self.eager = place(copy.deepcopy(network).eval(), device, dtype, channels_last)
        self.module: Callable[[torch.Tensor], torch.Tensor] = self.eager  # the timed callable, compiled or not
        self.details = {"channels_last": channels_last}
        if compiled:
            # "default" compiles in seconds; max-autotune took minutes on a shared GPU. No CUDA graphs by default:
            # their outputs are overwritten by the next call, and deploy keeps outputs.
            mode = compile_mode or "default"
            self.module = torch.compile(self.eager, mode=mode)
            self.details["compile_mode"] = mode

    @classmethod
    def build(cls, context: TargetContext, settings: Mapping[str, Any]) -> TorchTarget:
        return cls(
            cls.network(context.loaded),
            context.device,
            cls.make_gate(settings),
            dtype=cls.dtype,
            channels_last=context.channels_last if cls.layout_channels_last is None else cls.layout_channels_last,
            compiled=cls.compiled,
            compile_mode=context.compile_mode,
        )

    @classmethod
    def network(cls, loaded: Loaded) -> nn.Module:
        return loaded.fused

    @classmethod
    def make_gate(cls, settings: Mapping[str, Any]) -> Gate:
        if cls.dtype == torch.float32:
            return Equivalence(Tolerance(float(settings["atol"]), float(settings["rtol"])), cls.settings_key)
        return MaxDrop(float(settings["max_drop"]), f"{cls.settings_key}.max_drop", HALF_ADVICE)

    @classmethod
    def check_device(cls, device: torch.device) -> None:
        if device.type == "cpu" and cls.dtype == torch.float16:
            # measured on the 2-core AVX-512 dev VM: fused A0 in fp16 ran 22x slower than in fp32 (docs/benchmarks.md)
            raise TargetUnavailable(
                f"{cls.name} runs on GPUs only: float16 convolutions on CPU use a slow reference "
                "kernel; use fused_bf16 on CPU, or device=cuda"
            )
        if cls.compiled and device.type == "cpu" and not _cpp_compiler():
            raise TargetUnavailable(
                f"{cls.name} needs a C++ compiler on the CPU (torch.compile builds its kernels "
                "with one): install g++, or set CXX"
            )

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return place(images, self.device, self.dtype, self.channels_last)

    def forward(self, prepared: torch.Tensor) -> torch.Tensor:
        return self.module(prepared)

    def cost(self, input_size: Sequence[int]) -> Cost:
        example = self.prepare(torch.zeros(1, *input_size))
        return Cost(sum(p.numel() for p in self.eager.parameters()), count_flops(self.eager, example))


def _cpp_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return name
    return None


class _Float32Form(TorchTarget):
    """A float32 form: the same function as the reference, within ``tolerance``."""

    settings_key = "tolerance"


@register_target("train_form")
class TrainForm(_Float32Form):
    """The multi-branch network as trained: what fusion must reproduce."""

    form = "train_form"

    @classmethod
    def network(cls, loaded: Loaded) -> nn.Module:
        if loaded.train_form is None:
            raise TargetUnavailable(
                f"{loaded.source} is a fused folder, which holds no train form; pass its "
                "checkpoint: ckpt=<run>/checkpoints/last.ckpt or ckpt=<run>"
            )
        return loaded.train_form

    @classmethod
    def make_gate(cls, settings: Mapping[str, Any]) -> Gate:
        return Equivalence(
            Tolerance(float(settings["atol"]), float(settings["rtol"])),
            cls.settings_key,
            mismatch="the fused model is NOT equivalent to the train form",
        )


@register_target("fused")
class Fused(_Float32Form):
    """The fused network in torch eager float32: the reference every other target is compared with."""

    @classmethod
    def make_gate(cls, settings: Mapping[str, Any]) -> Gate:
        return Reference()


@register_target("plain_vgg")
class PlainVGG(_Float32Form):
    """The fused convs and activations in one flat Sequential: the speed limit of a plain VGG of the same shape."""

    form = "plain_vgg"

    @classmethod
    def network(cls, loaded: Loaded) -> nn.Module:
        try:
            return plain_vgg_like(loaded.fused)
        except ValueError as err:
            raise TargetUnavailable(f"a {type(loaded.fused).__name__} has no plain-VGG counterpart ({err})") from err


@register_target("fused_bf16")
class FusedBF16(TorchTarget):
    dtype, auto_devices = torch.bfloat16, ("cuda",)


@register_target("fused_fp16")
class FusedFP16(TorchTarget):
    dtype, auto_devices = torch.float16, ("cuda",)


@register_target("compiled")
class Compiled(_Float32Form):
    compiled, auto_devices = True, ()


@register_target("compiled_bf16")
class CompiledBF16(TorchTarget):
    compiled, auto_devices, dtype = True, (), torch.bfloat16


@register_target("compiled_fp16")
class CompiledFP16(TorchTarget):
    compiled, auto_devices, dtype = True, (), torch.float16
