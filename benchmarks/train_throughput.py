"""Training throughput (images/s): this template's Lightning loop vs a plain PyTorch loop, per speed preset.

    python benchmarks/train_throughput.py --model tiny --presets standard,fast --steps 60 --batch-size 128
    python benchmarks/train_throughput.py --model A0 --device cuda --presets standard,fast,compiled

Presets mirror configs/speed: ``standard`` (DataLoader workers, fp32 on CPU / bf16 on CUDA), ``fast`` (the dataset
on the device with batched augmentation, channels_last, fused optimizer step, no step loss in the progress bar),
``compiled`` (``fast`` + torch.compile of the network, mode reduce-overhead: CUDA graphs on a GPU). Same network,
optimizer (SGD + warm-up cosine, no decay on BN/bias), loss, data and batch size on both sides; the plain loop
compiles the same way. The Lightning side is the template's ClassifierModule with its torchmetrics accuracy and
logging (no progress bar, no validation, no checkpointing: those are I/O, not training). Both sides skip
``--warmup`` steps (compilation and graph recording happen there), then time ``--steps`` steps; CUDA is synchronized
at both ends. The data are CIFAR-shaped random uint8 images (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import functools
import platform
import time

import lightning as L
import numpy as np
import torch

from reparam.data import ImageDataModule
from reparam.module import ClassifierModule, parameter_groups
from reparam.schedules import warmup_cosine

TINY = {"variant": None, "widths": [16, 16, 32, 64, 128], "depths": [1, 2, 2, 2, 1]}


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


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.images = warmup, None, None, 0

    def _sync(self, module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self._sync(module)
            self.start = time.perf_counter()
        if trainer.global_step >= self.warmup:
            self.images += len(batch[1])

    def on_train_end(self, trainer, module) -> None:
        self._sync(module)
        self.end = time.perf_counter()


PRESETS = {  # what configs/speed sets, as benchmark settings
    "standard": {"pipeline": "standard", "channels_last": False, "fused": None, "compile": None},
    "fast": {"pipeline": "fast", "channels_last": True, "fused": True, "compile": None},
    "compiled": {"pipeline": "fast", "channels_last": True, "fused": True, "compile": "reduce-overhead"},
}


def optimizer_factory(lr: float = 0.1, fused: bool | None = None):
    return functools.partial(torch.optim.SGD, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=fused)


def lightning_throughput(spec, dm, args, preset: dict) -> float:
    module = ClassifierModule(spec, optimizer_factory(fused=preset["fused"]),
                              functools.partial(warmup_cosine, warmup_epochs=0.1),
                              channels_last=preset["channels_last"], compile=preset["compile"] is not None,
                              compile_mode=preset["compile"], step_metrics_in_progress_bar=False)
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(accelerator=args.accelerator, devices=1, precision=args.precision,
                        max_steps=args.warmup + args.steps, max_epochs=-1, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return timer.images / (timer.end - timer.start)


def plain_throughput(spec, dm, args, preset: dict) -> float:
    from reparam.models import build_model

    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    model = build_model(spec).to(device).train()
    if preset["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    opt = optimizer_factory(fused=preset["fused"])(parameter_groups(model, 5e-4, True))
    forward = torch.compile(model, mode=preset["compile"], dynamic=False) if preset["compile"] else model
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
                start = time.perf_counter()
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
    return images / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="tiny or a variant (A0, B0, ...)")
    p.add_argument("--presets", default="standard,fast", help=f"comma-separated, of {', '.join(PRESETS)}")
    p.add_argument("--block", default="repvgg", help="model.block kind")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on CPU")
    p.add_argument("--repeats", type=int, default=3, help="alternate the two loops this many times; report medians")
    args = p.parse_args()
    args.accelerator = "gpu" if args.device == "cuda" else "cpu"
    args.precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    spec = dict(TINY) if args.model == "tiny" else {"variant": args.model}
    spec.update(num_classes=10, block=args.block)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"# {args.model} ({args.block}), {device_name}, torch {torch.__version__}, batch {args.batch_size}, "
          f"{args.precision}, {args.steps} timed steps after {args.warmup}, median of {args.repeats}")
    print("| preset | plain loop (img/s) | Lightning template (img/s) | overhead |")
    print("|---|---|---|---|")
    for name in args.presets.split(","):
        preset = PRESETS[name]
        plain, light = [], []
        for _ in range(args.repeats):
            def dm():
                d = SyntheticCIFAR(args.images, batch_size=args.batch_size, pipeline=preset["pipeline"],
                                   num_workers=args.workers if preset["pipeline"] == "standard" else 0)
                d.setup()
                d._device = lambda: torch.device(args.device)  # the plain loop has no trainer: data on the device
                return d
            torch.manual_seed(0)
            plain.append(plain_throughput(spec, dm(), args, preset))
            torch.manual_seed(0)
            light.append(lightning_throughput(spec, dm(), args, preset))
        p_med, l_med = float(np.median(plain)), float(np.median(light))
        print(f"| {name} | {p_med:.0f} | {l_med:.0f} | {(p_med - l_med) / p_med:+.1%} |", flush=True)


if __name__ == "__main__":
    main()
