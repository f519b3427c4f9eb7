"""CPU threads for deploy's measurements, and whether the machine was quiet enough for its timings to mean anything.

Why threads matter: torch and ONNX Runtime split each operator over a pool of threads that meet at a barrier. When
other processes keep the cores busy, one descheduled thread holds up the rest: on the 2-core dev VM at load 9.7 the
fused demo model at batch 1 took 52 ms with 2 threads and 3.9 ms with 1 (``benchmarks/threads.py``,
docs/benchmarks.md). So with
``benchmark.threads=null`` deploy uses every usable core on a quiet machine, and only the cores other processes
leave free on a busy one (at least one). What the others take is measured over half a second from ``/proc/stat``
(busy CPUs, less this process's own CPU time), not read from the 1-minute load average, which still counts a process
that just ended (``make demo``'s training run, a moment before its deploy). Where ``/proc/stat`` is missing, the load
average less this process's recent CPU use stands in. Both count every CPU of the machine; their share of the usable
cores estimates what the others take.

Whether the timings can be trusted is said after the benchmark: a load that was high at the start, or a throughput
that varied between the interleaved rounds by more than ``SPREAD_LIMIT``, gives a warning with what to do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

from .timing import BenchmarkResult

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
    others_before: float | None  # usable cores' worth of work from other processes then
    busy_before: float | None = None  # CPUs busy with other processes over 0.5 s then (None: no /proc/stat)
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
            measured = (
                "" if self.busy_before is None else f"{self.busy_before:.1f} CPUs busy with them when deploy started, "
            )
            reasons.append(
                f"other processes were competing for the {self.usable_cores} cores ({measured}load average "
                f"{self.load_before:.2f}, about {self.others_before:.1f} cores' worth theirs)"
            )
        if self.max_round_spread is not None and self.max_round_spread > SPREAD_LIMIT:
            reasons.append(
                f"throughput varied {self.max_round_spread:.1f}x between rounds ({self.max_round_spread_at})"
            )
        if reasons:
            idle = self.others_before is not None and self.others_before < BUSY_LIMIT
            # no process here was busy: "run on a quiet machine" would be no help (a VM's host, CPU clocks)
            fix = (
                "Run on a quiet machine"
                if not idle
                else "No other process was busy here when deploy started, so the variation came from outside what "
                "this machine shows (a virtual machine's host, CPU clock changes): more rounds (benchmark.rounds=6) "
                "steady the medians"
            )
            fix += ", or with benchmark.threads=1" if self.threads > 1 else " (this run already used 1 thread)"
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


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - idle, total


def busy_cpus(window: float = 0.5) -> float | None:
    """CPUs' worth of work by other processes over the next ``window`` seconds (None where /proc/stat is missing)."""
    start, own_start = _cpu_jiffies(), os.times()
    if start is None:
        return None
    time.sleep(window)
    end, own_end = _cpu_jiffies(), os.times()
    if end is None or end[1] <= start[1]:
        return None
    cpus = os.cpu_count() or 1
    busy = (end[0] - start[0]) / (end[1] - start[1]) * cpus
    own = (own_end.user + own_end.system - own_start.user - own_start.system) / window
    return max(0.0, busy - own)


def own_recent_load() -> float:
    """This process's share of the 1-minute load average: its CPU time, spread over the last minute, at most 1."""
    times = os.times()
    return min(1.0, (times.user + times.system) / 60.0)


def choose_threads(
    requested: int | None,
    cores: int,
    total_cpus: int,
    load: float | None,
    own: float = 0.0,
    measure: str = "load average",
) -> tuple[int, float | None, str]:
    """``(threads, other processes' load on our cores, why)`` for ``benchmark.threads=requested`` (None: choose).

    ``load``: CPUs' worth of work on the whole machine (``measure`` names it: the load average, or busy CPUs)."""
    others = None if load is None else max(0.0, load - own) * cores / max(total_cpus, cores)
    if requested:
        return int(requested), others, "benchmark.threads"
    if others is None:
        return cores, None, f"all {cores} usable cores (no load average on this platform)"
    threads = max(1, min(cores, round(cores - others)))
    if threads == cores:
        return (
            cores,
            others,
            f"all {cores} usable cores: the machine was quiet when deploy started ({measure} {load:.2f})",
        )
    return (
        threads,
        others,
        (
            f"{threads} of {cores} usable cores: other processes were competing for them "
            f"({measure} {load:.2f}), and a thread waiting for a busy core stalls the others"
        ),
    )


@contextmanager
def cpu_threads(requested: int | None) -> Iterator[Machine]:
    """Set torch's CPU threads for the block (restored after it) and describe the machine."""
    cores, total, load = usable_cores(), os.cpu_count() or usable_cores(), load_average()
    busy = busy_cpus() if not requested else None
    if busy is not None:
        threads, others, why = choose_threads(requested, cores, total, busy, measure="busy CPUs")
    else:
        threads, others, why = choose_threads(requested, cores, total, load, own_recent_load())
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield Machine(cores, total, threads, why, load, others, busy)
    finally:
        torch.set_num_threads(saved)


def round_spread(results: Sequence[BenchmarkResult]) -> tuple[float, BenchmarkResult] | None:
    """The largest fastest/slowest ratio between rounds of one target at one batch size, and where it was."""
    spreads = [
        (max(r.throughput_rounds) / min(r.throughput_rounds), r)
        for r in results
        if len(r.throughput_rounds) >= 2 and min(r.throughput_rounds) > 0
    ]
    return max(spreads, key=lambda pair: pair[0]) if spreads else None
