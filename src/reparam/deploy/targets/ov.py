"""OpenVINO INT8 on the CPU: the same ``model.int8.onnx`` as ONNX Runtime's, compiled by OpenVINO (optional extra).

Only INT8: measured on the same files and machine (docs/benchmarks.md), OpenVINO ran the INT8 model 1.08-1.40x faster
than ONNX Runtime at batch 32 and 256 and on RepVGG-A0 at batch 1 (slower, 0.69x, on the tiny demo model at batch 1),
but not the fp32 model (0.72-1.17x, most often no measurable difference). Installed with ``pip install -e
'.[openvino]'``; never in ``targets=[auto]``.

OpenVINO picks bf16 for the float ops of a model on CPUs with AVX512_BF16 or AMX unless asked for f32; this target
asks (``INFERENCE_PRECISION_HINT=f32``), so it computes what ONNX Runtime's INT8 computes: int8 convolutions, fp32
everything else.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...device import place
from ..gates import Gate
from .base import Target, TargetContext, TargetUnavailable, register_target
from .ort import int8_gate, int8_onnx

__all__ = ["OpenVinoINT8"]


@register_target("openvino_int8")
class OpenVinoINT8(Target):
    """The static INT8 (QDQ) export compiled by OpenVINO for the CPU, calibrated like ``onnxruntime_int8``."""

    runtime, precision, needs_onnx = "openvino", "int8", True
    settings_key = "quantize"

    def __init__(self, path: str | Path, threads: int, gate: Gate, details: Mapping[str, Any]) -> None:
        import openvino as ov

        self.device, self.gate, self.details = torch.device("cpu"), gate, dict(details)
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": int(threads),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.request = core.compile_model(core.read_model(str(path)), "CPU", config).create_infer_request()

    @classmethod
    def check_device(cls, device: torch.device) -> None:
        if importlib.util.find_spec("openvino") is None:
            raise TargetUnavailable("OpenVINO is not installed: pip install -e '.[openvino]'")

    @classmethod
    def build(cls, context: TargetContext, settings: Mapping[str, Any]) -> OpenVinoINT8:
        path, details = int8_onnx(context, settings)
        return cls(path, context.threads, int8_gate(settings), details)

    def prepare(self, images: torch.Tensor) -> np.ndarray:
        return place(images, "cpu", torch.float32).contiguous().numpy()

    def forward(self, prepared: np.ndarray) -> np.ndarray:
        return self.request.infer({0: prepared})[0]
