"""plot.png: latency and throughput of every target against batch size, one line per target."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .timing import BenchmarkResult

__all__ = ["plot_benchmark"]


def plot_benchmark(results: Sequence[BenchmarkResult], path: str | Path, title: str) -> Path | None:
    """Two log-log panels (latency per batch, images/s); written atomically. None without results."""
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(12, 4.6))
    for label in dict.fromkeys(r.label for r in results):
        rows = sorted((r for r in results if r.label == label), key=lambda r: r.batch_size)
        sizes = [r.batch_size for r in rows]
        ax_lat.plot(sizes, [r.latency_ms_median for r in rows], marker="o", label=label)
        ax_tp.plot(sizes, [r.throughput_ips for r in rows], marker="o", label=label)
    sizes = sorted({r.batch_size for r in results})
    for ax, ylabel in ((ax_lat, "latency per batch, median (ms)"), (ax_tp, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
