"""Training throughput (images/s): this template's Lightning loop vs a plain PyTorch loop, per speed preset and block.

    python benchmarks/train_throughput.py --model tiny --batch-size 8 --steps 150 --warmup 20 --repeats 5 --workers 1
    python benchmarks/train_throughput.py --model A0 --device cuda --presets standard,fast,compiled --blocks repvgg

Presets mirror configs/speed: ``standard`` (DataLoader workers, fp32 on CPU / bf16 on CUDA), ``fast`` (the dataset
on the device with batched augmentation, channels_last, fused optimizer step, no step loss in the progress bar, the
finite-loss check every 50 steps), ``compiled`` (``fast`` + torch.compile of the network, mode reduce-overhead: CUDA
graphs on a GPU). Same network, optimizer (SGD + warm-up cosine, no decay on BN/bias), loss, data and batch size on
both sides; the plain loop compiles the same way. The template side is what ``train.py`` runs per training step: the
ClassifierModule (loss, torchmetrics accuracy, logging), the default callbacks (finite-loss guard, SpeedMonitor,
checkpointing, LR monitor), the CSV logger and the progress bar (sent to stderr), as the configs set them. Validation is
off (``limit_val_batches=0``): it is not a training step. Both sides skip ``--warmup`` steps (compilation and graph
recording happen there), then time ``--steps`` steps; CUDA is synchronized at both ends. The data are CIFAR-shaped
random uint8 images (speed does not depend on their values).

Each repeat runs the plain loop, then the template, in one process: the ratio of the two is what a shared, noisy
machine measures well. The table gives the median of the repeats and, in brackets, their range; the overhead is
template step time minus plain step time, in milliseconds per step.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from reparam.blocks import BLOCKS
from reparam.callbacks import FiniteLossGuard, SpeedMonitor
from reparam.data import ImageDataModule
from reparam.module import ClassifierModule, parameter_groups
from reparam.schedules import warmup_cosine

TINY = {"variant": None, "widths": [16, 16, 32, 64, 128], "depths": [1, 2, 2, 2, 1]}
# a network so small that a step is mostly Python: what is left beyond the plain loop is the loop's own cost
MICRO = {"variant": None, "widths": [8, 8, 8, 8, 8], "depths": [1, 1, 1, 1, 1]}
SMALL_NETWORKS = {"tiny": TINY, "micro": MICRO}


class SyntheticCIFAR(ImageDataModule):
    """The real datamodule (both pipelines) over random CIFAR-shaped uint8 data."""

    def __init__(self, n: int, **kwargs) -> None:
        super().__init__(dataset="digits", val_size=0, **kwargs)
        self.n = n

    def setup(self, stage=None) -> None:
        from reparam.data.registry import ArraySplit

        if self._classes is not None:
            return
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (self.n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, self.n).astype(np.int64)
        held_out = ArraySplit(images[:256], labels[:256])
        self._splits = {"train": ArraySplit(images, labels), "val": held_out, "test": held_out}
        self._classes = [str(i) for i in range(10)]
        self.mean, self.std = [0.5] * 3, [0.25] * 3


CLOCKS = {  # wall: what a user waits; cpu: this process's CPU time, which other processes on a shared CPU
    # barely change (for --presets fast on a CPU: DataLoader workers of the standard preset run in other processes)
    "wall": time.perf_counter,
    "cpu": time.process_time,
}
clock = CLOCKS["wall"]


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.images = warmup, None, None, 0

    def _sync(self, module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self._sync(module)
            self.start = clock()
        if trainer.global_step >= self.warmup:
            self.images += len(batch[1])

    def on_train_end(self, trainer, module) -> None:
        self._sync(module)
        self.end = clock()


PRESETS = {  # what configs/speed sets, as benchmark settings
    "standard": {"pipeline": "standard", "channels_last": False, "fused": None, "compile": None, "fast": False},
    "fast": {"pipeline": "fast", "channels_last": True, "fused": True, "compile": None, "fast": True},
    "compiled": {"pipeline": "fast", "channels_last": True, "fused": True, "compile": "reduce-overhead", "fast": True},
}
# as configs/callbacks/finite_loss.yaml and configs/speed/fast.yaml, speed_monitor.yaml, configs/trainer/default.yaml
FINITE_LOSS_EVERY = {False: 1, True: 50}
SPEED_EVERY = 50
LOG_EVERY = 20
PROGRESS_REFRESH = 20  # configs/callbacks/progress_bar.yaml


def optimizer_factory(lr: float = 0.1, fused: bool | None = None):
    return functools.partial(torch.optim.SGD, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=fused)


def template_throughput(
    spec,
    dm,
    args,
    preset: dict,
    module_class: type[ClassifierModule] = ClassifierModule,
    progress_refresh: int | None = None,
    profiler=None,
    extra_callbacks=(),
    template_parts: bool = True,
) -> float:
    """Images/s of the template's training steps; the keyword arguments let benchmarks/step_ablation.py and
    benchmarks/step_profile.py vary or observe it. ``template_parts=False``: Lightning's loop alone (the module, no
    callback but the step timer, no logger, no progress bar, no checkpointing)."""
    from reparam.loggers import CSVLogger

    refresh = args.progress_refresh if progress_refresh is None else progress_refresh
    module = module_class(
        spec,
        optimizer_factory(fused=preset["fused"]),
        functools.partial(warmup_cosine, warmup_epochs=0.1),
        channels_last=preset["channels_last"],
        compile=preset["compile"] is not None,
        compile_mode=preset["compile"],
        compile_backend=args.compile_backend,
        step_metrics_in_progress_bar=not preset["fast"],
    )
    timer = StepTimer(args.warmup)
    with tempfile.TemporaryDirectory() as out:
        template_callbacks = [
            FiniteLossGuard(FINITE_LOSS_EVERY[preset["fast"]]),
            SpeedMonitor(SPEED_EVERY),
            ModelCheckpoint(dirpath=out, monitor="val/acc", mode="max", save_last=True),
            LearningRateMonitor(logging_interval="epoch"),
        ]
        if refresh:
            template_callbacks.append(TQDMProgressBar(refresh_rate=refresh))
        callbacks = [timer, *(template_callbacks if template_parts else []), *extra_callbacks]
        trainer = L.Trainer(
            accelerator=args.accelerator,
            devices=1,
            precision=args.precision,
            max_steps=args.warmup + args.steps,
            max_epochs=-1,
            limit_val_batches=0,
            logger=CSVLogger(out, name="csv", version="") if template_parts else False,
            log_every_n_steps=LOG_EVERY,
            enable_progress_bar=refresh > 0 and template_parts,
            enable_checkpointing=template_parts,
            enable_model_summary=False,
            callbacks=callbacks,
            num_sanity_val_steps=0,
            profiler=profiler,
        )
        with contextlib.redirect_stdout(sys.stderr):  # Lightning's bar writes to stdout: keep the tables clean
            trainer.fit(module, datamodule=dm)
    return timer.images / (timer.end - timer.start)


def plain_throughput(spec, dm, args, preset: dict) -> float:
    from reparam.models import build_model

    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    model = build_model(spec).to(device).train()
    if preset["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    opt = optimizer_factory(fused=preset["fused"])(parameter_groups(model, 5e-4, True))
    forward = (
        torch.compile(model, backend=args.compile_backend, mode=preset["compile"], dynamic=False)
        if preset["compile"]
        else model
    )
    steps_per_epoch = len(dm.train_dataloader())
    sched = warmup_cosine(opt, args.warmup + args.steps, steps_per_epoch, warmup_epochs=0.1)
    criterion = torch.nn.CrossEntropyLoss()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision.startswith("bf16"))
    step, images, start = 0, 0, None
    while step < args.warmup + args.steps:
        for x, y in dm.train_dataloader():
            if step == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = clock()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if preset["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            if preset["compile"]:
                torch.compiler.cudagraph_mark_step_begin()
            with autocast:
                loss = criterion(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step >= args.warmup:
                images += len(y)
            step += 1
            if step == args.warmup + args.steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (clock() - start)


@dataclass
class Row:
    """One block kind and preset: images/s of each repeat, plain loop and template interleaved."""

    block: str
    preset: str
    batch_size: int
    plain: list[float] = field(default_factory=list)
    template: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [t / p for p, t in zip(self.plain, self.template, strict=True)]

    @property
    def overheads_ms(self) -> list[float]:
        """Template step time minus plain step time, per repeat."""
        return [1000 * self.batch_size * (1 / t - 1 / p) for p, t in zip(self.plain, self.template, strict=True)]

    def markdown(self) -> str:
        def spread(values: list[float], fmt: str) -> str:
            if not values:
                return "-"
            return f"{np.median(values):{fmt}} ({min(values):{fmt}}..{max(values):{fmt}})"

        return (
            f"| {self.block} | {self.preset} | {spread(self.plain, '.0f')} | {spread(self.template, '.0f')} | "
            f"{spread(self.ratios, '.3f')} | {spread(self.overheads_ms, '.2f')} |"
        )


HEADER = (
    "| block | preset | plain loop (img/s) | template (img/s) | template / plain | overhead (ms/step) |\n"
    "|---|---|---|---|---|---|"
)


def network_spec(args, block: str) -> dict:
    spec = dict(SMALL_NETWORKS[args.model]) if args.model in SMALL_NETWORKS else {"variant": args.model}
    spec.update(num_classes=10, block=block)
    return spec


def datamodule(args, preset: dict) -> SyntheticCIFAR:
    d = SyntheticCIFAR(
        args.images,
        batch_size=args.batch_size,
        pipeline=preset["pipeline"],
        num_workers=args.workers if preset["pipeline"] == "standard" else 0,
    )
    d.setup()
    d._device = lambda: torch.device(args.device)  # the plain loop has no trainer: data on the device
    return d


def measure(block: str, preset_name: str, args) -> Row:
    preset, spec = PRESETS[preset_name], network_spec(args, block)
    row = Row(block, preset_name, args.batch_size)
    for _ in range(args.repeats):
        if "plain" in args.sides:
            torch.manual_seed(0)
            row.plain.append(plain_throughput(spec, datamodule(args, preset), args, preset))
        if "template" in args.sides:
            torch.manual_seed(0)
            row.template.append(template_throughput(spec, datamodule(args, preset), args, preset))
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default="tiny", help="tiny, micro (a step that is mostly Python) or a variant (A0, B0, ...)"
    )
    p.add_argument("--presets", default="standard,fast", help=f"comma-separated, of {', '.join(PRESETS)}")
    p.add_argument("--blocks", default="all", help=f"comma-separated model.block kinds, or all ({', '.join(BLOCKS)})")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="dataset size; default: enough for every step in one epoch (no epoch end while timing)",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on CPU")
    p.add_argument("--repeats", type=int, default=3, help="alternate the two loops this many times; report medians")
    p.add_argument(
        "--clock",
        default="wall",
        choices=list(CLOCKS),
        help="wall time, or this process's CPU time "
        "(steadier on a shared CPU; not for CUDA, whose work the CPU clock does not see)",
    )
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compiled preset (aot_eager: a quick check of the code path on a CPU)",
    )
    p.add_argument(
        "--progress-refresh",
        type=int,
        default=PROGRESS_REFRESH,
        help="the template's progress bar refreshes every N steps (0: no bar)",
    )
    p.add_argument(
        "--sides", default="plain,template", help="run only one side (e.g. under a profiler): plain, template or both"
    )
    args = p.parse_args(argv)
    args.sides = args.sides.split(",")
    args.images = args.images or args.batch_size * (args.warmup + args.steps + 1)
    if args.clock == "cpu" and args.device == "cuda":
        p.error("--clock cpu measures CPU work only: use the wall clock with --device cuda")
    global clock
    clock = CLOCKS[args.clock]
    args.accelerator = "gpu" if args.device == "cuda" else "cpu"
    args.precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    args.blocks = list(BLOCKS) if args.blocks == "all" else args.blocks.split(",")
    args.presets = args.presets.split(",")
    for kind in args.blocks:
        if kind not in BLOCKS:
            p.error(f"--blocks: unknown block kind '{kind}'; choose from {', '.join(BLOCKS)} or all")
    for name in args.presets:
        if name not in PRESETS:
            p.error(f"--presets: unknown preset '{name}'; choose from {', '.join(PRESETS)}")
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    device_name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(
        f"# {args.model}, {device_name}, torch {torch.__version__}, batch {args.batch_size}, {args.precision}, "
        f"{args.steps} timed steps after {args.warmup}, {args.clock} clock, median (range) of {args.repeats} "
        "interleaved repeats"
    )
    print(HEADER, flush=True)
    rows = []
    for block in args.blocks:
        for name in args.presets:
            rows.append(measure(block, name, args))
            print(rows[-1].markdown(), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
