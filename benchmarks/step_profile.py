"""One template training step taken apart: Lightning's per-hook timings and torch.profiler's view of a few steps.

    python benchmarks/step_profile.py --model A0 --device cuda --presets compiled --batch-size 128 --blocks repvgg
    python benchmarks/step_profile.py --model tiny --batch-size 8 --presets fast --blocks repvgg   # on a CPU

Runs the template as benchmarks/train_throughput.py does (same callbacks, logger, progress bar) with Lightning's
SimpleProfiler (host time of every hook, callback and loop action: on a GPU that is the time Python needs to queue the
work, the cost this benchmark is about), and torch.profiler over ``--profile-steps`` steps after the warm-up (host
time per op and, on CUDA, device time: a GPU busy for much less than the wall time waits on the host). Prints
markdown; no plain-loop side.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.profilers import SimpleProfiler
from train_throughput import PRESETS, datamodule, network_spec, parse_args, template_throughput

# Lightning's per-step actions worth showing (the rest happen once per run or per epoch)
STEP_ACTIONS = (
    "run_training_batch",
    "[_TrainingEpochLoop].train_dataloader_next",
    "[Strategy]",
    "[LightningModule]",
    "[Callback]",
    "optimizer_step",
    "training_step",
    "backward",
    "zero_grad",
)


class ProfilerWindow(L.Callback):
    """torch.profiler around ``steps`` training steps starting at global step ``start``."""

    def __init__(self, start: int, steps: int) -> None:
        self.start, self.steps = start, steps
        self.profile: torch.profiler.profile | None = None
        self.wall_s = 0.0
        self._t0 = 0.0

    def _sync(self, module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.start and self.profile is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if module.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._sync(module)
            self.profile = torch.profiler.profile(activities=activities)
            self.profile.__enter__()
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.profile is not None and not self.wall_s and trainer.global_step >= self.start + self.steps:
            self._sync(module)
            self.wall_s = time.perf_counter() - self._t0
            self.profile.__exit__(None, None, None)


def hook_table(durations: dict[str, list[float]], steps: int, top: int = 25) -> list[str]:
    rows = [
        (name, values)
        for name, values in durations.items()
        if len(values) >= steps and any(key in name for key in STEP_ACTIONS)
    ]
    rows.sort(key=lambda r: -float(np.median(r[1])))
    lines = ["| Lightning action (host time) | median ms | calls |", "|---|---|---|"]
    lines += [
        f"| `{re.sub(r'{.*}', '', name)}` | {1000 * float(np.median(values)):.3f} | {len(values)} |"
        for name, values in rows[:top]
    ]
    return lines


def op_table(profile: torch.profiler.profile, steps: int, wall_s: float, cuda: bool, top: int = 15) -> list[str]:
    events = profile.key_averages()
    lines = [f"{steps} steps profiled, wall {1000 * wall_s / steps:.3f} ms per step (under the profiler)"]
    if cuda:
        device_us = sum(e.self_device_time_total for e in events)
        lines.append(
            f"GPU busy {device_us / 1000 / steps:.3f} ms per step ({device_us / 1e6 / wall_s:.0%} of the wall time)"
        )
    lines += [
        "",
        "| op (top by host self time) | host self ms/step | calls/step |" + (" device self ms/step |" if cuda else ""),
        "|---|---|---|" + ("---|" if cuda else ""),
    ]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        device = f" {e.self_device_time_total / 1000 / steps:.3f} |" if cuda else ""
        lines.append(f"| `{e.key}` | {e.self_cpu_time_total / 1000 / steps:.3f} | {e.count / steps:.1f} |{device}")
    return lines


def main(argv: list[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    steps = 5
    if "--profile-steps" in argv:
        i = argv.index("--profile-steps")
        steps = int(argv[i + 1])
        del argv[i : i + 2]
    args = parse_args(argv)
    preset_name, block = args.presets[0], args.blocks[0]
    preset, spec = PRESETS[preset_name], network_spec(args, block)
    window = ProfilerWindow(args.warmup, steps)
    with tempfile.TemporaryDirectory() as out:
        profiler = SimpleProfiler(dirpath=out, filename="simple")
        torch.manual_seed(0)
        rate = template_throughput(
            spec, datamodule(args, preset), args, preset, profiler=profiler, extra_callbacks=[window]
        )
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    lines = [
        f"### template step, {args.model} ({block}), preset {preset_name}, batch {args.batch_size}, "
        f"{args.precision}, {device}, torch {torch.__version__}",
        "",
        f"{rate:.0f} img/s over {args.steps} steps with both profilers on (slower than unprofiled)",
        "",
    ]
    lines += hook_table(profiler.recorded_durations, args.steps)
    lines.append("")
    if window.profile is not None and window.wall_s:
        lines += op_table(window.profile, steps, window.wall_s, args.device == "cuda")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
