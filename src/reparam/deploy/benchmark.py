"""The round-robin benchmark of every deploy target: latency, throughput, peak memory, with their spread.

The instruments (``torch.utils.benchmark``, the FLOP counter) and the result types live in :mod:`.timing`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from ..compare import tf32_enabled
from ..device import describe_device, synchronize
from .targets import Target
from .timing import DTYPE_NAMES, BenchmarkResult, tbench

__all__ = ["benchmark_targets"]


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
    ``min_run_time / rounds`` seconds, so drift on a shared machine hits every target alike. Reported: the median
    over rounds of each round's median block time (and the throughput it gives), each round counting once however
    many blocks it timed; the IQR of all block times; and the throughput of each round (for ratio spreads).
    """
    costs = {target.name: target.cost(input_size) for target in targets}
    per_round = max(min_run_time / max(rounds, 1), 0.05)
    results = []
    for batch_size in batch_sizes:
        images = torch.randn(batch_size, *input_size)
        inputs = {target.name: target.prepare(images) for target in targets}
        peaks = {target.name: _warm_up(target, inputs[target.name]) for target in targets}
        times: dict[str, list[float]] = {target.name: [] for target in targets}
        round_medians: dict[str, list[float]] = {target.name: [] for target in targets}
        for _ in range(rounds):
            for target in targets:  # round-robin
                timer = tbench.Timer(
                    "target.forward(x)",
                    globals={"target": target, "x": inputs[target.name]},
                    num_threads=torch.get_num_threads(),
                )
                measurement = timer.blocked_autorange(min_run_time=per_round)
                times[target.name] += list(measurement.times)
                round_medians[target.name].append(measurement.median)
        for target in targets:
            # pooled block times would weigh a round by how many blocks it timed (a slow round on a busy machine
            # can time many more): the median of the rounds' medians is what the table and the ratios say
            median = statistics.median(round_medians[target.name])
            q1, q3 = (float(v) for v in torch.tensor(times[target.name]).quantile(torch.tensor([0.25, 0.75])))
            cost = costs[target.name]
            results.append(
                BenchmarkResult(
                    target=target.name,
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
                    throughput_rounds=[batch_size / t for t in round_medians[target.name]],
                    tf32=tf32_enabled() if target.device.type == "cuda" and target.precision == "fp32" else None,
                )
            )
    return results
