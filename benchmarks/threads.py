"""What CPU threads cost a model on a busy machine: the fused model at one batch size, N threads against 1, alternated.

    python benchmarks/threads.py --ckpt <run>/fused [--batch-size 1] [--threads 2] [--rounds 4] [--min-run-time 1]

Run it while other processes load the cores (another training run, a test suite): torch's thread pool meets at a
barrier per operator, and one thread waiting for a busy core holds up the others. Prints the load average, the core
count and the median latency of each setting over the alternated rounds. This is why deploy.py's
``benchmark.threads=null`` uses only the cores the load leaves free (reparam.deploy.machine).
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from reparam.deploy.load import load_for_deploy
from reparam.deploy.timing import tbench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a checkpoint, fused/ folder or run directory")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--min-run-time", type=float, default=1.0)
    args = p.parse_args()
    fused = load_for_deploy(args.ckpt).fused.eval()
    x = torch.randn(args.batch_size, 3, 32, 32)
    load_before = os.getloadavg()
    latencies: dict[int, list[float]] = {args.threads: [], 1: []}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for threads in latencies:  # alternated, so drift in the load hits both settings alike
                torch.set_num_threads(threads)
                timer = tbench.Timer("model(x)", globals={"model": fused, "x": x}, num_threads=threads)
                latencies[threads].append(timer.blocked_autorange(min_run_time=args.min_run_time).median * 1e3)
    print(
        f"# load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after, {os.cpu_count()} cores, "
        f"batch {args.batch_size}"
    )
    print("| threads | median latency (ms) | per round (ms) |")
    print("|---|---|---|")
    for threads, values in latencies.items():
        print(f"| {threads} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
