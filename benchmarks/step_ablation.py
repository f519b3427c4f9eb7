"""Each per-step saving of the template measured on its own: the plain loop, the template, and the template with one
change undone, interleaved in one process (the ratio to the plain loop of the same repeat is what a noisy machine
measures well).

    python benchmarks/step_ablation.py --model tiny --batch-size 8 --steps 150 --warmup 20 --repeats 5 --workers 1

Variants (``--variants a,b,...``, default all): ``template`` (as the configs set it); ``progress bar every step``
(Lightning's default refresh rate); ``metrics and logging every step`` (the module before: torchmetrics
``MulticlassAccuracy`` updated and three ``self.log`` calls per step, Lightning accumulating the epoch loss);
``before`` (both undone); ``manual optimization`` (Lightning's manual optimization instead of the closure);
``Lightning's loop alone`` (no callback, logger, progress bar or checkpointing: the floor the template's own parts
sit on), with and without manual optimization. Same arguments as train_throughput.py (one block kind, ``--blocks``);
``--model micro`` makes the step mostly Python, so what is left is the loop's own cost.

    OMP_NUM_THREADS=1 python benchmarks/step_ablation.py --model micro --batch-size 8 --steps 300 --warmup 20 \
        --repeats 7 --workers 1 --blocks repvgg --presets fast \
        --variants "template,manual optimization,Lightning's loop alone,Lightning's loop alone + manual optimization"
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

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


class ManualOptimization(ClassifierModule):
    """The same step with Lightning's manual optimization: no closure around forward and backward (what the fast
    presets would gain from it; gradient clipping, accumulation and the like would then be the module's to do)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        loss = super().training_step(batch, batch_idx)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        scheduler.step()
        return loss


@dataclass(frozen=True)
class Variant:
    module_class: type[ClassifierModule] = ClassifierModule
    progress_refresh: int | None = None  # None: the configured refresh rate
    template_parts: bool = True  # False: Lightning's loop alone (no callbacks, logger, bar, checkpointing)


VARIANTS = {
    "template": Variant(),
    "progress bar every step": Variant(progress_refresh=1),
    "metrics and logging every step": Variant(PerStepLogging),
    "before (both)": Variant(PerStepLogging, 1),
    "manual optimization": Variant(ManualOptimization),
    "Lightning's loop alone": Variant(template_parts=False),
    "Lightning's loop alone + manual optimization": Variant(ManualOptimization, template_parts=False),
}


def main() -> None:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--variants", default="all")
    mine, rest = own.parse_known_args()
    args = parse_args(rest)
    args.variants = list(VARIANTS) if mine.variants == "all" else mine.variants.split(",")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"error: --variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)} or all")
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
            for label, variant in VARIANTS.items():
                if label not in args.variants:
                    continue
                torch.manual_seed(0)
                rates[label].append(
                    template_throughput(
                        spec,
                        datamodule(args, preset),
                        args,
                        preset,
                        module_class=variant.module_class,
                        progress_refresh=variant.progress_refresh,
                        template_parts=variant.template_parts,
                    )
                )
        print(f"| {name} | plain loop | {np.median(plain):.0f} ({min(plain):.0f}..{max(plain):.0f}) | 1 | 0 |")
        for variant, values in rates.items():
            if not values:
                continue
            ratios = [t / p for t, p in zip(values, plain, strict=True)]
            ms = [1000 * args.batch_size * (1 / t - 1 / p) for t, p in zip(values, plain, strict=True)]
            print(
                f"| {name} | {variant} | {np.median(values):.0f} | {np.median(ratios):.3f} "
                f"({min(ratios):.3f}..{max(ratios):.3f}) | {np.median(ms):.2f} ({min(ms):.2f}..{max(ms):.2f}) |",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
