"""Targets that run the exported ONNX file in ONNX Runtime on the CPU: float32, and static INT8.

The INT8 file is built here (:func:`int8_onnx`, by :mod:`reparam.deploy.quantize`), once per deploy run, and shared
with the other runtimes that run it (OpenVINO).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...compare import Tolerance
from ...device import place
from ...errors import reraise_as_user_error
from ..gates import Equivalence, Gate, MaxDrop
from ..quantize import OrtModel, quantize_int8
from .base import Target, TargetContext, TargetUnavailable, register_target

__all__ = ["OnnxRuntimeTarget", "int8_gate", "int8_onnx", "INT8_ADVICE"]

log = logging.getLogger("reparam.deploy")

INT8_ADVICE = (
    "train with model.block=qarepvgg, whose fused weights quantize well, or try quantize.method=percentile "
    "or more quantize.calibration_images"
)


def int8_gate(settings: Mapping[str, Any]) -> MaxDrop:
    """Every INT8 target's check: ``quantize.max_drop``."""
    return MaxDrop(float(settings["max_drop"]), "quantize.max_drop", INT8_ADVICE)


def int8_onnx(context: TargetContext, settings: Mapping[str, Any]) -> tuple[Path, dict[str, Any]]:
    """``model.int8.onnx`` (static INT8, QDQ) of the fp32 export and its settings; quantized once per context, for
    every INT8 target that runs it."""
    images, method, reduce_range = (
        int(settings["calibration_images"]),
        str(settings["method"]),
        settings["reduce_range"],
    )
    key = ("int8_onnx", images, method, str(reduce_range))
    if key not in context.shared_files:
        if context.calibration_images is None:
            raise TargetUnavailable("no calibration images were given (INT8 calibrates on the training split)")
        path = context.out_dir / "model.int8.onnx"
        with reraise_as_user_error("quantize", ValueError):
            calibration = context.calibration_images(images)
            log.info(f"quantizing to INT8: {method} calibration on {len(calibration)} training images")
            details = quantize_int8(context.fp32_onnx(), path, calibration, method, reduce_range)
            if len(calibration) < images:  # say why the count is not the one asked for
                details["calibration_images_asked"] = (
                    f"{images} (quantize.calibration_images); the training split has {len(calibration)}"
                )
        context.shared_files[key] = (path, details)
    return context.shared_files[key]


class OnnxRuntimeTarget(Target):
    """An ONNX file in an ONNX Runtime CPU session (``threads`` intra-op threads)."""

    runtime = "onnxruntime"
    needs_onnx = True

    def __init__(
        self, path: str | Path, threads: int, gate: Gate, details: Mapping[str, Any] | None = None, wrote: bool = False
    ) -> None:
        self.device, self.gate = torch.device("cpu"), gate
        self.session = OrtModel(path, threads)
        self.artifact = str(path) if wrote else None  # the fp32 file is the export's, reported there
        self.details = dict(details or {})

    def prepare(self, images: torch.Tensor) -> np.ndarray:
        return place(images, "cpu", torch.float32).contiguous().numpy()

    def forward(self, prepared: np.ndarray) -> np.ndarray:
        return self.session.run(prepared)


@register_target("onnxruntime_fp32")
class OnnxRuntimeFP32(OnnxRuntimeTarget):
    """The fp32 export as it ships: its own kernels, so its own tolerance (the export parity check's)."""

    auto_devices = ("cpu",)

    @classmethod
    def build(cls, context: TargetContext, settings: Mapping[str, Any]) -> OnnxRuntimeFP32:
        fp32 = context.fp32_onnx()
        gate = Equivalence(
            Tolerance(float(settings["atol"]), float(settings["rtol"])),
            cls.settings_key,
            advice="the exported graph differs from the torch model: please report it with report.json",
        )
        return cls(fp32, context.threads, gate)


@register_target("onnxruntime_int8")
class OnnxRuntimeINT8(OnnxRuntimeTarget):
    """Post-training static INT8 of the fp32 export (QDQ), calibrated on training-split images."""

    precision = "int8"
    settings_key = "quantize"

    @classmethod
    def build(cls, context: TargetContext, settings: Mapping[str, Any]) -> OnnxRuntimeINT8:
        path, details = int8_onnx(context, settings)
        return cls(path, context.threads, int8_gate(settings), details, wrote=True)
