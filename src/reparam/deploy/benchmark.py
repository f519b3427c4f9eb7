"""The round-robin benchmark of every deploy target: latency, throughput, peak memory, with their spread.

The instruments (``torch.utils.benchmark``, the FLOP counter) and the result types live in :mod:`.timing`.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from ..compare import tf32_enabled
from ..device import describe_device, synchronize
from .targets import Target
from .timing import DTYPE_NAMES, BenchmarkResult, tbench

__all__ = ["benchmark_targets"]

log = logging.getLogger("reparam.deploy")


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
    shape = "x".join(str(d) for d in input_size)
    log.info(
        f"benchmark: {len(targets)} targets at batch sizes {', '.join(map(str, batch_sizes))} of {shape}, "
        f"{rounds} rounds (benchmark.enabled=false skips it)"
    )
    for position, batch_size in enumerate(batch_sizes):
        started = time.perf_counter()
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
        calls = [statistics.median(round_medians[target.name]) for target in targets]
        timed = functools.partial(_timed, rounds=rounds, per_round_s=per_round)
        _say_progress(
            batch_sizes[: position + 1], time.perf_counter() - started, batch_sizes[position + 1 :], calls, timed
        )
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


def _say_progress(
    done: Sequence[int], took_s: float, later: Sequence[int], calls_s: Sequence[float], timed: Callable[[float], float]
) -> None:
    """One line per batch size: what it took and, roughly, what the next will (a large input at batch 256 can take
    minutes, with nothing on the console before). Each target's call at the next size is taken to cost its call at
    this one times the size ratio; the time this size took beyond its calls (the timer's own) is taken again."""
    batch_size = done[-1]
    line = f"benchmark batch {batch_size}: {took_s:.0f} s"
    if later:
        scale = later[0] / batch_size
        this = sum(map(timed, calls_s))
        expected = max(0.0, took_s - this) + sum(timed(call * scale) for call in calls_s)
        line += f"; batch {later[0]} next, roughly {_duration(expected)}"
        if expected > 120:
            line += f" (benchmark.batch_sizes=[{','.join(map(str, done))}] leaves it out)"
    log.info(line)


def _timed(call_s: float, rounds: int, per_round_s: float) -> float:
    """A target's time at one batch size in ``benchmark_targets``: three warm-up calls, then in each round the
    round's time or one call, whichever is longer."""
    return 3 * call_s + rounds * max(per_round_s, call_s)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
