"""A deploy target: one way of running the fused model (a runtime, a precision, a device), and their registry.

A target is built once (``Target.build(context, settings)``: from the fused model, and the calibration images or
the ONNX file where it needs them), then predicts logits for a batch of test images and is timed by the benchmark.
Deploy treats every target alike: one pass over the test split feeds them all, one round-robin benchmark times
them all, and one gate (:mod:`reparam.deploy.gates`) says whether each may ship.

Adding a runtime is one class registered with :func:`register_target` and, when it has settings, one entry under
``target_settings`` in ``configs/deploy.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ...errors import UserError
from ..export import ExportResult
from ..gates import Gate
from ..load import Loaded

__all__ = ["Target", "TargetContext", "TargetUnavailable", "Cost", "TARGETS", "register_target"]


class TargetUnavailable(UserError):
    """This target cannot run here (no GPU, no train form, no ONNX file...): ``targets=[auto]`` leaves it out, naming
    it explicitly is an error."""


@dataclass(frozen=True)
class Cost:
    """What one forward pass costs; None where the runtime does not say (ONNX Runtime)."""

    params: int | None = None
    flops_per_image: int | None = None


@dataclass
class TargetContext:
    """Everything a target may be built from; each target takes what it needs."""

    loaded: Loaded  # the fused model (CPU, float32), and the train form when deploy was given a checkpoint
    device: torch.device  # where torch targets run (ONNX Runtime runs on CPU)
    channels_last: bool
    threads: int  # CPU threads for runtimes with their own pool (ONNX Runtime, OpenVINO)
    out_dir: Path  # where targets write their files (model.int8.onnx)
    onnx: ExportResult | None = None  # the checked fp32 ONNX export, where one was made
    calibration_images: Callable[[int], torch.Tensor] | None = None  # n training-split images, normalized
    compile_mode: str | None = None  # torch.compile mode of compiled targets (benchmark.compile_mode)
    # a file built once for every target that runs it (model.int8.onnx): its path and the settings it was built with,
    # keyed by what it was built from
    shared_files: dict[tuple[Any, ...], tuple[Path, dict[str, Any]]] = field(default_factory=dict, repr=False)

    def fp32_onnx(self) -> str:
        """The fp32 export every ONNX-based target starts from, if it passed its parity check."""
        if self.onnx is None:
            raise TargetUnavailable("no ONNX export was made")
        if not self.onnx.ok:
            raise TargetUnavailable(f"the fp32 ONNX export failed its parity check ({self.onnx.parity.describe()})")
        return self.onnx.path


class Target:
    """One way of running the fused model. Subclasses set the class attributes and implement build, prepare and
    forward (and cost, where the runtime can say)."""

    # class defaults, which an instance may refine
    name: str = ""  # the registry key, set by register_target
    form: str = "fused"  # which network: train_form | fused | plain_vgg
    runtime: str = "torch"  # torch | torch.compile | onnxruntime | ...
    precision: str = "fp32"  # fp32 | bf16 | fp16 | int8
    auto_devices: ClassVar[tuple[str, ...]] = ()  # device types on which targets=[auto] includes this target
    needs_onnx: ClassVar[bool] = False  # built from the fp32 ONNX export
    settings_key: ClassVar[str] = ""  # the config node of this target's settings, for messages

    device: torch.device
    gate: Gate
    channels_last: bool = False  # inputs and weights in NHWC memory layout
    artifact: str | None = None  # a file this target wrote (model.int8.onnx)
    details: Mapping[str, Any] = {}  # settings worth reporting (calibration method, ...)
    label_note: str = ""  # set by build_targets where another target of the run has the same label

    @classmethod
    def check_device(cls, device: torch.device) -> None:
        """Raise :class:`TargetUnavailable` when this target cannot run with ``device=...``; checked before any work."""

    @classmethod
    def build(cls, context: TargetContext, settings: Mapping[str, Any]) -> Target:
        """The ready-to-run target; raises :class:`TargetUnavailable` when it cannot run here."""
        raise NotImplementedError

    def prepare(self, images: torch.Tensor) -> Any:
        """A CPU float32 batch as this runtime takes it (device, dtype, layout); done once per benchmark input."""
        raise NotImplementedError

    def forward(self, prepared: Any) -> Any:
        """The timed call: logits for a prepared batch, in the runtime's own type."""
        raise NotImplementedError

    def cost(self, input_size: Sequence[int]) -> Cost:
        return Cost()

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """float32 logits for a CPU float32 batch (on this target's device)."""
        return torch.as_tensor(self.forward(self.prepare(images))).float()

    @property
    def label(self) -> str:
        """What the runtime is, in words: ``fused torch bf16 cuda``, ``onnxruntime int8 cpu``."""
        parts = [self.form if self.runtime.startswith("torch") else "", self.runtime, self.precision, self.device.type]
        described = " ".join(part for part in parts if part)
        return f"{described} ({self.label_note})" if self.label_note else described


TARGETS: dict[str, type[Target]] = {}


def register_target(name: str) -> Callable[[type[Target]], type[Target]]:
    """Class decorator: make a target available as ``deploy.py targets=[name]``."""

    def add(cls: type[Target]) -> type[Target]:
        TARGETS[name] = cls
        cls.name = name
        cls.settings_key = cls.settings_key or f"target_settings.{name}"
        return cls

    return add
