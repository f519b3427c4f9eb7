"""CPU threads for deploy's measurements, and whether the machine was quiet enough for its timings to mean anything.

Why threads matter: torch and ONNX Runtime split each operator over a pool of threads that meet at a barrier. When
other processes keep the cores busy, one descheduled thread holds up the rest: on the 2-core dev VM at load 9.7 the
fused demo model at batch 1 took 52 ms with 2 threads and 3.9 ms with 1 (``benchmarks/threads.py``,
docs/benchmarks.md). So with
``benchmark.threads=null`` deploy uses every usable core on a quiet machine, and only the cores the load average
leaves free on a busy one (at least one). The load average counts every CPU of the machine and this process too;
its share of the usable cores, less this process's own recent CPU use, estimates what the others take.

Whether the timings can be trusted is said after the benchmark: a load that was high at the start, or a throughput
that varied between the interleaved rounds by more than ``SPREAD_LIMIT``, gives a warning with what to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

from .benchmark import BenchmarkResult

__all__ = ["Machine", "choose_threads", "cpu_threads", "round_spread", "SPREAD_LIMIT"]

SPREAD_LIMIT = 1.5  # fastest / slowest round of one target at one batch size; quiet machines stay well below
BUSY_LIMIT = 0.5  # cores' worth of load from other processes at which timings start to suffer


@dataclass
class Machine:
    """What the report says about the CPU the measurements ran on."""

    usable_cores: int
    total_cpus: int  # what the load average counts (all CPUs of the machine, a container's host included)
    threads: int
    threads_chosen_because: str
    load_before: float | None  # 1-minute load average when deploy started measuring
    others_before: float | None  # usable cores' worth of that load from other processes
    load_after: float | None = None  # when the benchmark ended
    max_round_spread: float | None = None  # fastest / slowest interleaved round, worst target and batch size
    max_round_spread_at: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def review(self, results: Sequence[BenchmarkResult]) -> None:
        """After the benchmark: record the load and the spread, and warn when the timings are unreliable."""
        self.load_after = load_average()
        if not results:
            return
        spread = round_spread(results)
        if spread is not None:
            self.max_round_spread, worst = spread
            self.max_round_spread_at = f"{worst.label} at batch {worst.batch_size}"
        reasons = []
        if self.others_before is not None and self.others_before >= BUSY_LIMIT:
            reasons.append(f"other processes were competing for the {self.usable_cores} cores (load average "
                           f"{self.load_before:.2f}, about {self.others_before:.1f} of it theirs)")
        if self.max_round_spread is not None and self.max_round_spread > SPREAD_LIMIT:
            reasons.append(f"throughput varied {self.max_round_spread:.1f}x between rounds ({self.max_round_spread_at})")
        if reasons:
            fix = "Run on a quiet machine" + (", or with benchmark.threads=1" if self.threads > 1 else
                                              " (this run already used 1 thread)")
            self.warnings.append(f"timings are unreliable: {'; '.join(reasons)}. {fix}")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None


def own_recent_load() -> float:
    """This process's share of the 1-minute load average: its CPU time, spread over the last minute, at most 1."""
    times = os.times()
    return min(1.0, (times.user + times.system) / 60.0)


def choose_threads(requested: int | None, cores: int, total_cpus: int, load: float | None,
                   own: float = 0.0) -> tuple[int, float | None, str]:
    """``(threads, other processes' load on our cores, why)`` for ``benchmark.threads=requested`` (None: choose)."""
    others = None if load is None else max(0.0, load - own) * cores / max(total_cpus, cores)
    if requested:
        return int(requested), others, "benchmark.threads"
    if others is None:
        return cores, None, f"all {cores} usable cores (no load average on this platform)"
    threads = max(1, min(cores, round(cores - others)))
    if threads == cores:
        return cores, others, f"all {cores} usable cores: the machine was quiet (load average {load:.2f})"
    return threads, others, (f"{threads} of {cores} usable cores: other processes were competing for them (load "
                             f"average {load:.2f}), and a thread waiting for a busy core stalls the others")


@contextmanager
def cpu_threads(requested: int | None) -> Iterator[Machine]:
    """Set torch's CPU threads for the block (restored after it) and describe the machine."""
    cores, total, load = usable_cores(), os.cpu_count() or usable_cores(), load_average()
    threads, others, why = choose_threads(requested, cores, total, load, own_recent_load())
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield Machine(cores, total, threads, why, load, others)
    finally:
        torch.set_num_threads(saved)


def round_spread(results: Sequence[BenchmarkResult]) -> tuple[float, BenchmarkResult] | None:
    """The largest fastest/slowest ratio between rounds of one target at one batch size, and where it was."""
    spreads = [(max(r.throughput_rounds) / min(r.throughput_rounds), r) for r in results
               if len(r.throughput_rounds) >= 2 and min(r.throughput_rounds) > 0]
    return max(spreads, key=lambda pair: pair[0]) if spreads else None
