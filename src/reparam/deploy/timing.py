"""The measuring instruments every deploy step shares: ``torch.utils.benchmark`` (imported quietly), FLOP counting,
and the result types of a benchmark (a row per target and batch size; throughput ratios with their spread).

A leaf: it imports nothing else from :mod:`reparam.deploy`, so the exports, the targets and the benchmark loop can all
use it without importing one another.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..device import device_of, place

__all__ = ["BenchmarkResult", "DTYPE_NAMES", "Ratio", "count_flops", "ratios", "tbench"]

DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}


def _import_torch_benchmark() -> ModuleType:
    """``torch.utils.benchmark``, without the noise of its import.

    It imports ``torch.utils.cpp_extension`` (for its Valgrind timer, which deploy never uses), whose import logs
    "No CUDA runtime is found, using CUDA_HOME=..." on every CPU machine with a CUDA toolkit: a warning about compiling
    extensions, which deploy never does (torch before 2.7 prints it to stderr instead). Only that logger, only below
    ERROR, and only that printed line, only during this import.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            import torch.utils.benchmark as tbench
    finally:
        logger.setLevel(level)
        for line in printed.getvalue().splitlines(keepends=True):
            if not line.startswith("No CUDA runtime is found"):
                sys.stderr.write(line)
    return tbench


tbench = _import_torch_benchmark()


@dataclass
class BenchmarkResult:
    """One target at one batch size; a row of report.json's ``benchmark``."""

    target: str  # the target's registry name: "fused", "onnxruntime_int8"
    label: str  # its runtime, precision and device in words: "fused torch bf16 cuda"
    runtime: str
    precision: str
    device: str
    batch_size: int
    dtype: str
    channels_last: bool
    compiled: bool
    threads: int
    latency_ms_median: float
    latency_ms_iqr: float
    throughput_ips: float
    runs: int
    params: int | None  # None for a runtime other than torch (ONNX Runtime)
    flops_per_image: int | None
    peak_memory_mb: float | None
    throughput_rounds: list[float] = field(default_factory=list)  # images/s in each round-robin round
    tf32: bool | None = None  # CUDA float32 timings: whether TF32 was allowed (cuDNN's default on Ampere+)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``example`` (a multiply-add counts as 2), by torch's flop counter.

    The example is placed where the model lives, in its dtype, so a CUDA or half-precision model can be counted.
    """
    first = next(iter(model.parameters()), None)
    example = place(example, device_of(model), first.dtype if first is not None and first.is_floating_point() else None)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(example)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Ratio:
    """A throughput ratio over interleaved rounds: the median and the range of the per-round ratios."""

    median: float
    low: float
    high: float

    @property
    def measurable(self) -> bool:
        """False when the spread covers 1.0: the two targets are not measurably different on this machine."""
        return not (self.low <= 1.0 <= self.high)

    def describe(self) -> str:
        spread = f"{self.low:.2f}..{self.high:.2f}"
        return f"{self.median:.2f}x ({spread})" if self.measurable else f"no measurable difference ({spread})"

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "measurable": self.measurable}


def ratios(results: Sequence[BenchmarkResult], numerator: str, denominator: str) -> dict[int, Ratio]:
    """Per batch size, target ``numerator`` / target ``denominator`` throughput in each round (rounds pair up in
    time)."""
    by = {(r.target, r.batch_size): r for r in results}
    out = {}
    for (target, bs), r in by.items():
        other = by.get((denominator, bs))
        if target != numerator or other is None:
            continue
        pairs = [a / b for a, b in zip(r.throughput_rounds, other.throughput_rounds, strict=True)] or [
            r.throughput_ips / other.throughput_ips
        ]
        out[bs] = Ratio(statistics.median(pairs), min(pairs), max(pairs))
    return out
