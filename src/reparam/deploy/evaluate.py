"""One pass over the test split that feeds every target: accuracy of each, and how far each is from the reference."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..compare import Comparison, ComparisonReport, strict_fp32
from ..device import place
from .targets import Target

__all__ = ["COMPARISON_PRECISION", "TargetEvaluation", "evaluate_targets"]

COMPARISON_PRECISION = "float32, TF32 off"  # how the reference and the float32 targets compute here


@dataclass(frozen=True)
class TargetEvaluation:
    num_images: int
    correct: int
    comparison: ComparisonReport | None  # the target's logits against the reference's; None for the reference

    @property
    def accuracy(self) -> float:
        return self.correct / self.num_images if self.num_images else 0.0


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    return int((logits.argmax(1) == place(labels, logits.device)).sum())


@torch.inference_mode()
def evaluate_targets(
    targets: Sequence[Target], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, TargetEvaluation]:
    """Every target on every batch; ``targets[0]`` is the reference, and runs once per batch.

    In true float32 (TF32 off on GPUs): TF32 alone would exceed a float32 equivalence tolerance on Ampere and later.
    """
    reference, others = targets[0], targets[1:]
    correct = {target.name: 0 for target in targets}
    comparisons = {target.name: Comparison(target.gate.tolerance) for target in others}
    num_images = 0
    with strict_fp32():
        for images, labels in batches:
            expected = reference.predict(images)
            correct[reference.name] += _correct(expected, labels)
            for target in others:
                logits = target.predict(images)
                correct[target.name] += _correct(logits, labels)
                comparisons[target.name].update(expected, logits)
            num_images += len(labels)
    return {
        target.name: TargetEvaluation(
            num_images, correct[target.name], comparisons[target.name].report() if target.name in comparisons else None
        )
        for target in targets
    }
