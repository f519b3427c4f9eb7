"""Export the fused model to ONNX and to a torch.export program; each file is checked before it counts.

Both run on a CPU float32 copy of the model, wherever the caller keeps it; both are written to a temporary name,
reloaded by their own runtime (onnxruntime; torch.export.load), compared with the PyTorch model on real inputs, and
only then renamed into place.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..compare import ComparisonReport, Tolerance, compare
from ..device import place
from .timing import tbench

__all__ = ["ExportResult", "export_onnx", "export_program"]

# the default parity tolerances: ONNX Runtime's kernels differ from torch's more than a reloaded torch program does
ONNX_TOLERANCE = Tolerance(1e-4, 1e-4)
PROGRAM_TOLERANCE = Tolerance(1e-5, 1e-5)


@dataclass
class ExportResult:
    format: str
    path: str
    parity: ComparisonReport  # the exported file, run by its own runtime, against the PyTorch model
    latency_ms_median: float | None = None  # runtime's own timing at the checked batch size
    batch_size: int | None = None

    @property
    def ok(self) -> bool:
        return self.parity.passed

    @property
    def max_abs_diff(self) -> float:
        return self.parity.max_abs_diff

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "max_abs_diff": self.max_abs_diff}


def _quiet() -> contextlib.ExitStack:
    """torch.onnx / torch.export are chatty on stdout; keep the console for the report."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo"):
        logger = logging.getLogger(name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.WARNING)
    return stack


def _cpu_float32(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A CPU float32 copy of the model (wherever and in whatever dtype the caller keeps it) and the example there."""
    return place(copy.deepcopy(model).eval(), "cpu", torch.float32), place(example, "cpu", torch.float32)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    tolerance: Tolerance = ONNX_TOLERANCE,
    opset: int = 18,
    min_run_time: float = 0.5,
) -> ExportResult:
    """ONNX with a dynamic batch axis; parity and latency checked in onnxruntime (CPU)."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    model, example = _cpu_float32(model, example)
    try:
        with _quiet(), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=["images"],
                output_names=["logits"],
                opset_version=opset,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                dynamo=True,
                external_data=False,
            )
        onnx.checker.check_model(str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: example.numpy()}
        (onnx_out,) = session.run(None, feed)
        with torch.no_grad():
            reference = model(example)
        parity = compare(reference, torch.from_numpy(np.asarray(onnx_out)), tolerance)
        timing = tbench.Timer("session.run(None, feed)", globals={"session": session, "feed": feed}).blocked_autorange(
            min_run_time=min_run_time
        )
        if parity.passed:
            os.replace(tmp, path)
        return ExportResult("onnx", str(path), parity, timing.median * 1e3, len(example))
    finally:
        tmp.unlink(missing_ok=True)


def export_program(
    model: nn.Module, example: torch.Tensor, path: str | Path, tolerance: Tolerance = PROGRAM_TOLERANCE
) -> ExportResult:
    """A ``torch.export`` program (``.pt2``) with a dynamic batch axis, reloaded and checked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path).with_suffix(".pt2")
    model, example = _cpu_float32(model, example)
    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(
                model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},)
            )
            torch.export.save(program, str(tmp))
            reloaded = torch.export.load(str(tmp)).module()
            out, reference = reloaded(example), model(example)
        parity = compare(reference, out, tolerance)
        if parity.passed:
            os.replace(tmp, path)
        return ExportResult("torch_export", str(path), parity, None, len(example))
    finally:
        tmp.unlink(missing_ok=True)
