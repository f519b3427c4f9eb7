"""Post-training static INT8 quantization of the fused model, with ONNX Runtime.

The fused fp32 ONNX file is pre-processed (``quant_pre_process``: shape inference, graph optimization), then
``quantize_static`` writes a QDQ model: per-channel int8 weights, uint8 activations whose ranges come from
calibration images of the training split (``minmax``, ``entropy`` or ``percentile``). On x86 CPUs without VNNI
instructions the u8 x s8 products can saturate in the 16-bit intermediate of AVX2 kernels, so ``reduce_range``
(7-bit weights) is used there, as ONNX Runtime recommends; ``auto`` decides from the CPU flags.

Why ONNX Runtime and not PT2E (torchao): measured on the same fused model (docs/int8.md), ORT's INT8 ran 3.6-6.3x
faster than PT2E + Inductor on an AVX2 CPU and kept the accuracy PT2E lost 1.1 points of; ORT is also already the
runtime the exported file is checked in, and needs no C++ compiler at run time.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..device import place

if TYPE_CHECKING:
    from onnxruntime.quantization import CalibrationDataReader

__all__ = ["OrtModel", "quantize_int8", "cpu_has_vnni", "METHODS", "int8_settings_problem"]

METHODS = ("minmax", "entropy", "percentile")


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (AVX512-VNNI or AVX-VNNI) int8 dot products; False where it cannot tell."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


class OrtModel:
    """An ONNX Runtime CPU session: ``run(array)`` on numpy arrays, ``model(x)`` on torch tensors."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: images})
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(place(x.detach(), "cpu", torch.float32).contiguous().numpy()))


def _calibration_reader(images: torch.Tensor, input_name: str, batch_size: int = 32) -> CalibrationDataReader:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def _batches(self) -> Iterator[dict[str, np.ndarray]]:
            for start in range(0, len(images), batch_size):
                yield {input_name: images[start : start + batch_size].float().contiguous().numpy()}

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.iterator, None)

        def rewind(self) -> None:
            self.iterator = self._batches()

    return Reader()


def output_nodes(path: str | Path) -> list[str]:
    """The names of the nodes that write the graph's outputs (the classifier's last layer)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node if n.name and outputs.intersection(n.output)]


def int8_settings_problem(settings: dict) -> str | None:
    """What is wrong with the ``quantize.*`` settings, if anything: checked when deploy starts, not when INT8 is
    built after the export and the evaluation of every other target."""
    method, images, reduce_range, max_drop = (
        settings.get(k) for k in ("method", "calibration_images", "reduce_range", "max_drop")
    )
    if method not in METHODS:
        return f"quantize.method={method}: choose {', '.join(METHODS[:-1])} or {METHODS[-1]}"
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        return f"quantize.calibration_images={images}: give a number of training images, at least 1 (512 by default)"
    if reduce_range not in ("auto", True, False):
        return f"quantize.reduce_range={reduce_range}: choose auto, true or false"
    if isinstance(max_drop, bool) or not isinstance(max_drop, int | float) or max_drop < 0:
        return f"quantize.max_drop={max_drop}: give the accuracy points INT8 may lose, 0 or more (1.0 by default)"
    return None


def quantize_int8(
    fp32_onnx: str | Path,
    path: str | Path,
    calibration: torch.Tensor,
    method: str = "minmax",
    reduce_range: bool | str = "auto",
) -> dict:
    """Write a static INT8 (QDQ) model of ``fp32_onnx`` to ``path``, atomically; returns the settings used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ValueError(f"quantize.method must be one of {', '.join(METHODS)}, got '{method}'")
    if reduce_range == "auto":
        reduce_range = platform.machine().lower() in ("x86_64", "amd64") and not cpu_has_vnni()
    path = Path(path)
    pre = path.with_name(f".{path.stem}.pre-{os.getpid()}.onnx")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        input_name = OrtModel(pre).input_name
        head = output_nodes(pre)
        # equal batches: ORT's histogram calibrators (entropy, percentile) stack every batch's outputs into one array
        # and fail on a smaller last batch, so for them the remainder of the images / 32 is left out (minmax keeps all)
        given, batch = len(calibration), min(32, len(calibration))
        if method != "minmax":
            calibration = calibration[: given - given % batch]
        # ORT's histogram calibrators print their progress ("Collecting tensor data ...") to stdout, before the
        # one console table deploy prints: kept out of it (the method and image count are in the report)
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(pre),
                str(tmp),
                _calibration_reader(calibration, input_name, batch),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                # the classifier stays fp32: quantized logits come in 1/255 steps of their range, so probabilities are
                # coarse and near answers tie (a new user's photo: three classes at exactly 1/3 each)
                nodes_to_exclude=head,
                reduce_range=bool(reduce_range),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile,
                }[method],
            )
        os.replace(tmp, path)
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        for leftover in path.parent.glob("augmented_model*.onnx"):  # calibration's scratch model
            leftover.unlink(missing_ok=True)
    left_out = given - len(calibration)
    return {
        "method": method,
        "calibration_images": len(calibration),
        **(
            {"calibration_left_out": f"{left_out} of {given} ({method} calibrates on whole batches of {batch})"}
            if left_out
            else {}
        ),
        "per_channel": True,
        "fp32_nodes": head,
        "reduce_range": bool(reduce_range),
        "format": "QDQ, uint8 activations, int8 weights",
    }
