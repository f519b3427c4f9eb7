"""Each per-step saving of the template measured on its own: the plain loop, the template, and the template with one
change undone, interleaved in one process (the ratio to the plain loop of the same repeat is what a noisy machine
measures well).

    python benchmarks/step_ablation.py --model tiny --batch-size 8 --steps 150 --warmup 20 --repeats 5 --workers 1

Variants: ``template`` (as the configs set it); ``progress bar every step`` (Lightning's default refresh rate);
``metrics and logging every step`` (the module before: torchmetrics ``MulticlassAccuracy`` updated and three
``self.log`` calls per step, Lightning accumulating the epoch loss); ``before`` (both undone). Same arguments as
train_throughput.py (one block kind, ``--blocks``).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torchmetrics.classification import MulticlassAccuracy
from train_throughput import PRESETS, datamodule, network_spec, parse_args, plain_throughput, template_throughput

from reparam.module import ClassifierModule


class PerStepLogging(ClassifierModule):
    """The training step as it was: accuracy through MulticlassAccuracy and every value through ``self.log``."""

    def __init__(self, model_spec, *args, **kwargs) -> None:
        super().__init__(model_spec, *args, **kwargs)
        self.train_acc = MulticlassAccuracy(int(model_spec["num_classes"]), average="micro")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.hparams.compile:
            torch.compiler.cudagraph_mark_step_begin()
        logits = self.training_net()(self._layout(x))
        loss = self.criterion(logits, y)
        self.train_acc.update(logits.detach(), y)
        self.log(
            "train/loss_step",
            loss,
            on_step=True,
            on_epoch=False,
            batch_size=len(y),
            prog_bar=self.hparams.step_metrics_in_progress_bar,
        )
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def on_train_epoch_end(self) -> None:
        pass


VARIANTS = {  # name: (module class, progress bar refresh rate or None for the configured one)
    "template": (ClassifierModule, None),
    "progress bar every step": (ClassifierModule, 1),
    "metrics and logging every step": (PerStepLogging, None),
    "before (both)": (PerStepLogging, 1),
}


def main() -> None:
    args = parse_args()
    block = args.blocks[0]
    print(
        f"# {args.model} ({block}), batch {args.batch_size}, {args.precision}, {torch.get_num_threads()} threads, "
        f"{args.steps} timed steps after {args.warmup}, median (range) of {args.repeats} interleaved repeats"
    )
    print("| preset | variant | img/s | / plain loop | overhead (ms/step) |\n|---|---|---|---|---|")
    for name in args.presets:
        preset, spec = PRESETS[name], network_spec(args, block)
        plain: list[float] = []
        rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):
            torch.manual_seed(0)
            plain.append(plain_throughput(spec, datamodule(args, preset), args, preset))
            for variant, (module_class, refresh) in VARIANTS.items():
                torch.manual_seed(0)
                rates[variant].append(
                    template_throughput(
                        spec,
                        datamodule(args, preset),
                        args,
                        preset,
                        module_class=module_class,
                        progress_refresh=refresh,
                    )
                )
        print(f"| {name} | plain loop | {np.median(plain):.0f} ({min(plain):.0f}..{max(plain):.0f}) | 1 | 0 |")
        for variant, values in rates.items():
            ratios = [t / p for t, p in zip(values, plain, strict=True)]
            ms = [1000 * args.batch_size * (1 / t - 1 / p) for t, p in zip(values, plain, strict=True)]
            print(
                f"| {name} | {variant} | {np.median(values):.0f} | {np.median(ratios):.3f} "
                f"({min(ratios):.3f}..{max(ratios):.3f}) | {np.median(ms):.2f} ({min(ms):.2f}..{max(ms):.2f}) |",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
