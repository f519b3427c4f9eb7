"""Inference speed, size and cost of each form, measured with torch.utils.benchmark and flop_counter."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.utils.benchmark as tbench
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..compare import tf32_enabled

__all__ = ["BenchmarkResult", "benchmark_forms", "count_flops", "resolve_device", "DTYPES"]

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
    params: int
    flops_per_image: int
    peak_memory_mb: float | None
    tf32: bool | None = None  # CUDA float32 timings: whether TF32 was allowed (cuDNN's default on Ampere+)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device='{device}' is not a device; use auto, cpu or cuda[:N]") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda asked for but no CUDA GPU is visible; use device=auto or device=cpu")
    return dev


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
) -> list[BenchmarkResult]:
    """Median latency and throughput of each form at each batch size.

    Each measurement warms up (3 calls; compiles if asked), then torch.utils.benchmark's
    ``adaptive_autorange`` times blocks of calls for at least ``min_run_time`` seconds and until the
    IQR is within 10% of the median (or ``5 x min_run_time`` passed); the median and IQR of the
    per-call block times are reported. CUDA is synchronized around each block.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    torch_dtype = DTYPES[dtype]
    if threads:
        torch.set_num_threads(int(threads))
    results = []
    for name, model in forms.items():
        flops = count_flops(copy.deepcopy(model).eval().float(), torch.zeros(1, *input_size))
        params = sum(p.numel() for p in model.parameters())
        prepared = _prepare(model, device, torch_dtype, channels_last, compile)
        for batch_size in batch_sizes:
            x = torch.randn(batch_size, *input_size, device=device, dtype=torch_dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(3):  # warm-up: allocator, cudnn autotune, compilation
                prepared(x)
            timer = tbench.Timer("model(x)", globals={"model": prepared, "x": x}, num_threads=torch.get_num_threads())
            m = timer.adaptive_autorange(threshold=0.1, min_run_time=min_run_time, max_run_time=max(5 * min_run_time, 2.0))
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            results.append(BenchmarkResult(
                form=name, device=_device_name(device), batch_size=batch_size, dtype=dtype,
                channels_last=channels_last, compiled=compile, threads=torch.get_num_threads(),
                latency_ms_median=m.median * 1e3, latency_ms_iqr=m.iqr * 1e3, throughput_ips=batch_size / m.median,
                runs=len(m.times) * m.number_per_run, params=params, flops_per_image=flops, peak_memory_mb=peak,
                tf32=tf32_enabled() if device.type == "cuda" and dtype == "float32" else None,
            ))
    return results


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


def speedups(results: Sequence[BenchmarkResult], numerator: str = "fused", denominator: str = "train_form") -> dict[int, float]:
    """Throughput ratio ``numerator / denominator`` per batch size."""
    by = {(r.form, r.batch_size): r.throughput_ips for r in results}
    return {bs: by[(numerator, bs)] / by[(denominator, bs)] for (form, bs) in by if form == numerator
            and (denominator, bs) in by}
