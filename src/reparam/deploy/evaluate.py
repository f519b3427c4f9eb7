"""Accuracy of each form on the full test split, and how far the forms are apart."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["Evaluation", "evaluate_forms"]


@dataclass
class Evaluation:
    num_images: int
    correct: dict[str, int]
    accuracy: dict[str, float]
    disagreements: int | None  # images whose predicted class differs between the two forms
    max_abs_logit_diff: float | None
    max_abs_logit: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def evaluate_forms(
    forms: Mapping[str, nn.Module], batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> Evaluation:
    """Run every form on every batch (in eval mode, on ``device``); the first two forms are compared."""
    names = list(forms)
    for model in forms.values():
        model.eval().to(device)
    correct = dict.fromkeys(names, 0)
    n, disagreements, max_diff, max_logit = 0, 0, 0.0, 0.0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = {name: forms[name](x).float() for name in names}
        for name in names:
            correct[name] += int((logits[name].argmax(1) == y).sum())
        if len(names) >= 2:
            a, b = logits[names[0]], logits[names[1]]
            disagreements += int((a.argmax(1) != b.argmax(1)).sum())
            max_diff = max(max_diff, float((a - b).abs().max()))
        max_logit = max(max_logit, float(logits[names[0]].abs().max()))
        n += len(y)
    compared = len(names) >= 2
    return Evaluation(
        num_images=n,
        correct=correct,
        accuracy={name: (c / n if n else 0.0) for name, c in correct.items()},
        disagreements=disagreements if compared else None,
        max_abs_logit_diff=max_diff if compared else None,
        max_abs_logit=max_logit,
    )
