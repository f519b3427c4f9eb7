"""Inference speed, size and cost of each form, measured with torch.utils.benchmark and flop_counter."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
import statistics
from dataclasses import asdict, dataclass, field

import torch
import torch.utils.benchmark as tbench
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..compare import tf32_enabled
from ..device import describe_device, resolve_device

__all__ = ["BenchmarkResult", "Ratio", "benchmark_forms", "count_flops", "ratios", "resolve_device", "speedups", "DTYPES"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BenchmarkResult:
    form: str
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
    """FLOPs of one forward pass on ``example`` (a multiply-add counts as 2), by torch's flop counter."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(example)
    return int(counter.get_total_flops())


def _prepare(model: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool, compile: bool) -> nn.Module:
    model = copy.deepcopy(model).eval().to(device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model, mode="max-autotune-no-cudagraphs" if device.type == "cuda" else "default")
    return model


@torch.inference_mode()
def benchmark_forms(
    forms: Mapping[str, nn.Module],
    batch_sizes: Sequence[int] = (1, 32, 256),
    device: torch.device | str = "auto",
    dtype: str = "float32",
    channels_last: bool = False,
    compile: bool = False,
    threads: int | None = None,
    min_run_time: float = 1.0,
    input_size: Sequence[int] = (3, 32, 32),
    rounds: int = 3,
) -> list[BenchmarkResult]:
    """Latency and throughput of each form at each batch size, the forms interleaved.

    A form is an ``nn.Module`` (run on ``device`` in ``dtype``) or any other callable on CPU float32 tensors, such
    as an ONNX Runtime session (:class:`reparam.deploy.quantize.OrtModel`). Per batch size every form warms up
    (3 calls; compiles if asked), then ``rounds`` round-robin rounds time each form in turn with
    torch.utils.benchmark blocks for ``min_run_time / rounds`` seconds, so drift on a shared machine hits every form
    alike. Reported: median and IQR of all block times, and the throughput of each round (for ratio spreads).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    torch_dtype = DTYPES[dtype]
    if threads:
        torch.set_num_threads(int(threads))
    prepared, info = {}, {}
    for name, model in forms.items():
        if isinstance(model, nn.Module):
            info[name] = (sum(p.numel() for p in model.parameters()),
                          count_flops(copy.deepcopy(model).eval().float(), torch.zeros(1, *input_size)))
            prepared[name] = _prepare(model, device, torch_dtype, channels_last, compile)
        else:
            info[name] = (None, None)
            prepared[name] = model
    results = []
    per_round = max(min_run_time / max(rounds, 1), 0.05)
    for batch_size in batch_sizes:
        inputs, peaks = {}, {}
        for name, model in prepared.items():
            torch_form = isinstance(model, nn.Module)
            x = torch.randn(batch_size, *input_size, device=device if torch_form else "cpu",
                            dtype=torch_dtype if torch_form else torch.float32)
            if torch_form and channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            inputs[name] = x
            if torch_form and device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(3):  # warm-up: allocator, cudnn autotune, compilation, ORT's first run
                model(x)
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20 if torch_form and device.type == "cuda" \
                else None
        times: dict[str, list[float]] = {name: [] for name in prepared}
        rates: dict[str, list[float]] = {name: [] for name in prepared}
        for _ in range(rounds):
            for name, model in prepared.items():  # round-robin
                timer = tbench.Timer("model(x)", globals={"model": model, "x": inputs[name]},
                                     num_threads=torch.get_num_threads())
                m = timer.blocked_autorange(min_run_time=per_round)
                times[name] += list(m.times)
                rates[name].append(batch_size / m.median)
        for name, model in prepared.items():
            q1, median, q3 = (float(v) for v in torch.tensor(times[name]).quantile(torch.tensor([0.25, 0.5, 0.75])))
            torch_form = isinstance(model, nn.Module)
            results.append(BenchmarkResult(
                form=name, device=describe_device(device if torch_form else "cpu"), batch_size=batch_size,
                dtype=dtype if torch_form else "float32", channels_last=channels_last and torch_form,
                compiled=compile and torch_form, threads=torch.get_num_threads(), latency_ms_median=median * 1e3,
                latency_ms_iqr=(q3 - q1) * 1e3, throughput_ips=batch_size / median, runs=len(times[name]),
                params=info[name][0], flops_per_image=info[name][1], peak_memory_mb=peaks[name],
                tf32=tf32_enabled() if torch_form and device.type == "cuda" and dtype == "float32" else None,
                throughput_rounds=rates[name],
            ))
    return results


@dataclass(frozen=True)
class Ratio:
    """A throughput ratio over interleaved rounds: the median and the range of the per-round ratios."""

    median: float
    low: float
    high: float

    @property
    def measurable(self) -> bool:
        """False when the spread covers 1.0: the two forms are not measurably different on this machine."""
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
        pairs = [a / b for a, b in zip(r.throughput_rounds, other.throughput_rounds)] or \
            [r.throughput_ips / other.throughput_ips]
        out[bs] = Ratio(statistics.median(pairs), min(pairs), max(pairs))
    return out


def speedups(results: Sequence[BenchmarkResult], numerator: str = "fused", denominator: str = "train_form") -> dict[int, float]:
    """Median throughput ratio ``numerator / denominator`` per batch size."""
    return {bs: ratio.median for bs, ratio in ratios(results, numerator, denominator).items()}
