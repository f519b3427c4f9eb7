"""Inference speed, size and cost of every target, measured with torch.utils.benchmark and flop_counter."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..compare import tf32_enabled
from ..device import describe_device, device_of, place, synchronize

if TYPE_CHECKING:
    from .targets import Target

__all__ = ["BenchmarkResult", "Ratio", "benchmark_targets", "count_flops", "ratios", "DTYPE_NAMES"]

DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}


def _import_torch_benchmark():
    """``torch.utils.benchmark``, without the noise of its import.

    It imports ``torch.utils.cpp_extension`` (for its Valgrind timer, which deploy never uses), whose import logs
    "No CUDA runtime is found, using CUDA_HOME=..." on every CPU machine with a CUDA toolkit: a warning about compiling
    extensions, which deploy never does. Only that logger, only below ERROR, only during this import.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.benchmark as tbench
    finally:
        logger.setLevel(level)
    return tbench


tbench = _import_torch_benchmark()


@dataclass
class BenchmarkResult:
    form: str  # the target's name
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

    def to_dict(self) -> dict:
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


def _warm_up(target: Target, prepared: object) -> float | None:
    """Three calls (allocator, cuDNN autotune, compilation, ONNX Runtime's first run); CUDA peak memory in MB."""
    cuda = target.device.type == "cuda"
    if cuda:
        synchronize(target.device)
        torch.cuda.reset_peak_memory_stats(target.device)
    for _ in range(3):
        target.forward(prepared)
    if not cuda:
        return None
    synchronize(target.device)
    return torch.cuda.max_memory_allocated(target.device) / 2**20


@torch.inference_mode()
def benchmark_targets(
    targets: Sequence[Target],
    batch_sizes: Sequence[int] = (1, 32, 256),
    input_size: Sequence[int] = (3, 32, 32),
    min_run_time: float = 1.0,
    rounds: int = 3,
) -> list[BenchmarkResult]:
    """Latency and throughput of every target at each batch size, the targets interleaved.

    Per batch size each target gets the same random batch, prepared for it once (device, dtype, layout), and warms
    up; then ``rounds`` round-robin rounds time each target in turn with torch.utils.benchmark blocks for
    ``min_run_time / rounds`` seconds, so drift on a shared machine hits every target alike. Reported: median and
    IQR of all block times, and the throughput of each round (for ratio spreads).
    """
    costs = {target.name: target.cost(input_size) for target in targets}
    per_round = max(min_run_time / max(rounds, 1), 0.05)
    results = []
    for batch_size in batch_sizes:
        images = torch.randn(batch_size, *input_size)
        inputs = {target.name: target.prepare(images) for target in targets}
        peaks = {target.name: _warm_up(target, inputs[target.name]) for target in targets}
        times: dict[str, list[float]] = {target.name: [] for target in targets}
        rates: dict[str, list[float]] = {target.name: [] for target in targets}
        for _ in range(rounds):
            for target in targets:  # round-robin
                timer = tbench.Timer(
                    "target.forward(x)",
                    globals={"target": target, "x": inputs[target.name]},
                    num_threads=torch.get_num_threads(),
                )
                measurement = timer.blocked_autorange(min_run_time=per_round)
                times[target.name] += list(measurement.times)
                rates[target.name].append(batch_size / measurement.median)
        for target in targets:
            q1, median, q3 = (
                float(v) for v in torch.tensor(times[target.name]).quantile(torch.tensor([0.25, 0.5, 0.75]))
            )
            cost = costs[target.name]
            results.append(
                BenchmarkResult(
                    form=target.name,
                    label=target.label,
                    runtime=target.runtime,
                    precision=target.precision,
                    device=describe_device(target.device),
                    batch_size=batch_size,
                    dtype=DTYPE_NAMES.get(target.precision, target.precision),
                    channels_last=target.channels_last,
                    compiled=target.runtime == "torch.compile",
                    threads=torch.get_num_threads(),
                    latency_ms_median=median * 1e3,
                    latency_ms_iqr=(q3 - q1) * 1e3,
                    throughput_ips=batch_size / median,
                    runs=len(times[target.name]),
                    params=cost.params,
                    flops_per_image=cost.flops_per_image,
                    peak_memory_mb=peaks[target.name],
                    throughput_rounds=rates[target.name],
                    tf32=tf32_enabled() if target.device.type == "cuda" and target.precision == "fp32" else None,
                )
            )
    return results


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

    def to_dict(self) -> dict:
        return {"median": self.median, "min": self.low, "max": self.high, "measurable": self.measurable}


def ratios(results: Sequence[BenchmarkResult], numerator: str, denominator: str) -> dict[int, Ratio]:
    """Per batch size, ``numerator / denominator`` throughput in each round (rounds pair up in time)."""
    by = {(r.form, r.batch_size): r for r in results}
    out = {}
    for (form, bs), r in by.items():
        other = by.get((denominator, bs))
        if form != numerator or other is None:
            continue
        pairs = [a / b for a, b in zip(r.throughput_rounds, other.throughput_rounds)] or [
            r.throughput_ips / other.throughput_ips
        ]
        out[bs] = Ratio(statistics.median(pairs), min(pairs), max(pairs))
    return out
