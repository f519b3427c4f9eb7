"""Training throughput (images/s): this template's Lightning loop vs a plain PyTorch loop.

    python benchmarks/train_throughput.py --model tiny --pipeline fast --steps 60 --batch-size 128
    python benchmarks/train_throughput.py --model A0 --pipeline standard --device cuda --precision bf16-mixed

Same network, optimizer (SGD + warm-up cosine, no decay on BN/bias), loss, data and batch size on both
sides. The Lightning side is the template's ClassifierModule with its torchmetrics accuracy and logging
(no progress bar, no validation, no checkpointing: those are I/O, not training). Both sides skip
``--warmup`` steps, then time ``--steps`` steps; CUDA is synchronized at both ends. The data are
CIFAR-shaped random uint8 images (speed does not depend on their values).
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
        from reparam.data.sources import ImageArrays

        if self.arrays is not None:
            return
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (self.n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, self.n).astype(np.int64)
        self.arrays = ImageArrays("synthetic", images, labels, images[:256], labels[:256], [str(i) for i in range(10)])
        self._splits = {"train": (images, labels), "val": (images[:256], labels[:256]), "test": (images[:256], labels[:256])}
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


def optimizer_factory(lr: float = 0.1):
    return functools.partial(torch.optim.SGD, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


def lightning_throughput(spec, dm, args) -> float:
    module = ClassifierModule(spec, optimizer_factory(), functools.partial(warmup_cosine, warmup_epochs=0.1),
                              channels_last=args.channels_last)
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(accelerator=args.accelerator, devices=1, precision=args.precision,
                        max_steps=args.warmup + args.steps, max_epochs=-1, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return timer.images / (timer.end - timer.start)


def plain_throughput(spec, dm, args) -> float:
    from reparam.models import build_model

    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    model = build_model(spec).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = optimizer_factory()(parameter_groups(model, 5e-4, True))
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
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = criterion(model(x), y)
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
    p.add_argument("--pipeline", default="fast", choices=["standard", "fast", "both"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="32-true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--repeats", type=int, default=3, help="alternate the two loops this many times; report medians")
    args = p.parse_args()
    args.accelerator = "gpu" if args.device == "cuda" else "cpu"
    spec = dict(TINY) if args.model == "tiny" else {"variant": args.model}
    spec["num_classes"] = 10
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"# {args.model}, {device_name}, torch {torch.__version__}, batch {args.batch_size}, {args.precision}, "
          f"channels_last={args.channels_last}, {args.steps} timed steps after {args.warmup}, median of {args.repeats}")
    print("| pipeline | plain loop (img/s) | Lightning template (img/s) | overhead |")
    print("|---|---|---|---|")
    pipelines = ["standard", "fast"] if args.pipeline == "both" else [args.pipeline]
    for pipeline in pipelines:
        plain, light = [], []
        for _ in range(args.repeats):
            def dm():
                d = SyntheticCIFAR(args.images, batch_size=args.batch_size, pipeline=pipeline,
                                   num_workers=args.workers if pipeline == "standard" else 0)
                d.setup()
                return d
            torch.manual_seed(0)
            plain.append(plain_throughput(spec, dm(), args))
            torch.manual_seed(0)
            light.append(lightning_throughput(spec, dm(), args))
        p_med, l_med = float(np.median(plain)), float(np.median(light))
        print(f"| {pipeline} | {p_med:.0f} | {l_med:.0f} | {(p_med - l_med) / p_med:+.1%} |")


if __name__ == "__main__":
    main()
