"""Accuracy of each form on the full test split, and how far the forms are apart."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..compare import Comparison, ComparisonReport, Tolerance

__all__ = ["Evaluation", "evaluate_forms"]


@dataclass
class Evaluation:
    num_images: int
    correct: dict[str, int]
    accuracy: dict[str, float]
    comparison: ComparisonReport | None  # the second form against the first, over every test image

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def evaluate_forms(forms: Mapping[str, nn.Module], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   device: torch.device, tolerance: Tolerance | None = None) -> Evaluation:
    """Run every form on every batch (in eval mode, on ``device``); the second form is compared with the first."""
    names = list(forms)
    for model in forms.values():
        model.eval().to(device)
    correct = dict.fromkeys(names, 0)
    comparison = Comparison(tolerance) if len(names) >= 2 else None
    n = 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = {name: forms[name](x).float() for name in names}
        for name in names:
            correct[name] += int((logits[name].argmax(1) == y).sum())
        if comparison is not None:
            comparison.update(logits[names[0]], logits[names[1]])
        n += len(y)
    return Evaluation(
        num_images=n,
        correct=correct,
        accuracy={name: (c / n if n else 0.0) for name, c in correct.items()},
        comparison=comparison.report() if comparison is not None else None,
    )
