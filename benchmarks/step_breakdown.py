"""Where a template training step goes: py-spy samples of ``train_throughput.py --sides template``, by category.

    py-spy record -r 200 -f raw -o steps.txt -- \\
        python benchmarks/train_throughput.py --model tiny --batch-size 8 --steps 400 --blocks repvgg \\
            --presets fast --repeats 1 --sides template
    python benchmarks/step_breakdown.py steps.txt

Only samples inside Lightning's training-batch loop count (setup, compilation and teardown do not). Each sample goes
to the first category, in the order below, that any frame of its stack matches; what matches none is Lightning's own
loop: hooks dispatch, the optimizer closure, precision and strategy wrappers, progress tracking. Percentages are of
the sampled training-batch time. py-spy (``pip install py-spy``) pauses the process for each sample by default;
``--nonblocking`` does not, and loses the samples whose read races a frame change (7% in a run here), unevenly.
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections import Counter

from reparam.callbacks import FiniteLossGuard, SpeedMonitor

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?):(?P<line>\d+)\)$")


def _lines(method) -> range:
    source, first = inspect.getsourcelines(method)
    return range(first, first + len(source))


GUARD = _lines(FiniteLossGuard.on_train_batch_end)
SPEED = [_lines(SpeedMonitor.on_train_batch_start), _lines(SpeedMonitor.on_train_batch_end)]


def _in(frames, file_part: str, func: str | None = None, lines=None) -> bool:
    for f, fn, ln in frames:
        if (
            file_part in f
            and (func is None or fn == func or fn.endswith("." + func))
            and (lines is None or any(ln in r for r in lines))
        ):
            return True
    return False


CATEGORIES = [  # (name, predicate over [(file, func, line), ...] root to leaf); the first match wins
    ("progress bar (tqdm)", lambda s: _in(s, "callbacks/progress/") or _in(s, "tqdm/")),
    ("metric update (torchmetrics)", lambda s: _in(s, "torchmetrics/")),
    ("self.log", lambda s: _in(s, "pytorch/core/module.py", "log")),
    (
        "logger connector, loggers",
        lambda s: _in(s, "logger_connector") or _in(s, "pytorch/loggers/") or _in(s, "reparam/loggers.py"),
    ),
    ("FiniteLossGuard", lambda s: _in(s, "reparam/callbacks.py", lines=[GUARD])),
    ("SpeedMonitor", lambda s: _in(s, "reparam/callbacks.py", lines=SPEED)),
    ("ModelCheckpoint", lambda s: _in(s, "callbacks/model_checkpoint.py")),
    ("LearningRateMonitor", lambda s: _in(s, "callbacks/lr_monitor.py")),
    ("benchmark's step timer", lambda s: _in(s, "train_throughput.py", "on_train_batch_start")),
    ("data (next batch)", lambda s: _in(s, "loops/fetchers.py") or _in(s, "reparam/data/")),
    ("network forward", lambda s: _in(s, "torch/nn/modules/") and not _in(s, "torch/nn/modules/loss.py")),
    ("loss", lambda s: _in(s, "torch/nn/modules/loss.py")),
    ("backward (autograd)", lambda s: _in(s, "torch/autograd/")),
    ("optimizer update (SGD)", lambda s: _in(s, "torch/optim/sgd.py")),
    ("zero_grad", lambda s: _in(s, "torch/optim/optimizer.py", "zero_grad")),
    ("LR scheduler", lambda s: _in(s, "torch/optim/lr_scheduler.py")),
]
LOOP = "Lightning loop (hooks, closure, precision, strategy, progress tracking)"


def breakdown(raw_lines) -> tuple[Counter, int]:
    counts: Counter = Counter()
    total = 0
    for line in raw_lines:
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = FRAME.match(part)
            if m:
                frames.append((m["file"], m["func"], int(m["line"])))
        # inside one training batch: the epoch loop's advance(), not setup, validation or teardown
        if not _in(frames, "loops/training_epoch_loop.py", "advance"):
            continue
        total += int(n)
        name = next((name for name, match in CATEGORIES if match(frames)), LOOP)
        counts[name] += int(n)
    return counts, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("raw", help="py-spy record -f raw output")
    p.add_argument("--step-ms", type=float, default=None, help="the step time without the profiler, to show ms")
    args = p.parse_args()
    with open(args.raw) as f:
        counts, total = breakdown(f)
    if not total:
        raise SystemExit(f"{args.raw}: no samples inside Lightning's training loop; was it a template run?")
    print(f"{total} samples in training batches")
    print("| where | share of the step |" + (" ms per step |" if args.step_ms else ""))
    print("|---|---|" + ("---|" if args.step_ms else ""))
    for name, n in counts.most_common():
        ms = f" {args.step_ms * n / total:.2f} |" if args.step_ms else ""
        print(f"| {name} | {n / total:.1%} |{ms}")


if __name__ == "__main__":
    main()
