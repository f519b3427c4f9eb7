"""Whole-model conversion: reparameterize every block, then prove the result computes the same function."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["reparameterize_model", "verify_equivalence", "EquivalenceReport", "EquivalenceError"]


def _reparameterizable(module: nn.Module) -> bool:
    return callable(getattr(module, "reparameterize", None))


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every submodule that has a ``reparameterize()`` method; return the model in eval mode.

    Fusion folds BatchNorm with its *running statistics*: the fused model reproduces the original
    in eval mode, not in train mode (where BN uses batch statistics). User blocks join by defining
    ``reparameterize()``. With ``inplace=False`` (default) a deep copy is fused and ``model`` is left
    untouched.

    Raises ``ValueError`` naming the module when a BatchNorm inside a block keeps no running
    statistics (``track_running_stats=False``).
    """
    targets = [(name, m) for name, m in model.named_modules() if _reparameterizable(m)]
    for block_name, block in targets:
        for bn_name, bn in block.named_modules():
            if isinstance(bn, _BatchNorm) and (bn.running_mean is None or bn.running_var is None):
                where = ".".join(p for p in (block_name, bn_name) if p) or "<root>"
                raise ValueError(
                    f"cannot fuse '{where}': BatchNorm has no running statistics "
                    "(track_running_stats=False); fusion needs them, build the BN with track_running_stats=True"
                )
    if not inplace:
        model = copy.deepcopy(model)
    # Re-walk the copy; list() first because reparameterize() replaces children.
    for _, module in list(model.named_modules()):
        if _reparameterizable(module):
            module.reparameterize()
    return model.eval()


class EquivalenceError(AssertionError):
    """The fused model does not reproduce the reference within tolerance."""

    def __init__(self, message: str, report: EquivalenceReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class EquivalenceReport:
    """How closely ``fused`` reproduced ``reference`` on some inputs.

    ``max_rel_diff`` is ``max_abs_diff / max|reference|``: relative to the output's scale, which stays
    meaningful where single elements of the reference are near zero.
    """

    max_abs_diff: float
    max_rel_diff: float
    argmax_agreement: float
    num_samples: int
    dtype: str
    atol: float
    rtol: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(atol, rtol)`` used when none are given: fusion's rounding error, with headroom, by dtype."""
    if dtype == torch.float64:
        return 1e-10, 1e-10
    if dtype == torch.float32:
        return 1e-5, 1e-4
    return 1e-2, 1e-2  # half / bfloat16


@torch.inference_mode()
def verify_equivalence(
    reference: nn.Module,
    fused: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    atol: float | None = None,
    rtol: float | None = None,
    raise_on_mismatch: bool = True,
) -> EquivalenceReport:
    """Run both models in eval mode on ``inputs`` and compare their outputs.

    Passes when ``max|fused - reference| <= atol + rtol * max|reference|``. Defaults come from
    :func:`default_tolerance` for the output dtype. Both models are put back in the train/eval mode
    they came in. Raises :class:`EquivalenceError` (carrying the report) on a mismatch unless
    ``raise_on_mismatch=False``.
    """
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    modes = (reference.training, fused.training)
    reference.eval()
    fused.eval()
    try:
        expected = reference(*args)
        actual = fused(*args)
    finally:
        reference.train(modes[0])
        fused.train(modes[1])
    if expected.shape != actual.shape:
        raise EquivalenceError(
            f"output shapes differ: reference {tuple(expected.shape)}, fused {tuple(actual.shape)}",
            EquivalenceReport(math.inf, math.inf, 0.0, 0, str(expected.dtype), 0.0, 0.0, False),
        )
    default_atol, default_rtol = default_tolerance(expected.dtype)
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol

    diff = (actual.double() - expected.double()).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    scale = float(expected.double().abs().max()) if expected.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    if expected.dim() >= 2 and expected.numel():
        agreement = float((expected.argmax(1) == actual.argmax(1)).double().mean())
    else:
        agreement = 1.0 if max_abs == 0 else float("nan")
    passed = bool(max_abs <= atol + rtol * scale) and not math.isnan(max_abs)
    report = EquivalenceReport(
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        argmax_agreement=agreement,
        num_samples=int(expected.shape[0]) if expected.dim() else 1,
        dtype=str(expected.dtype).removeprefix("torch."),
        atol=atol,
        rtol=rtol,
        passed=passed,
    )
    if not passed and raise_on_mismatch:
        raise EquivalenceError(
            f"fused model differs from the reference: max |diff| = {max_abs:.3e} "
            f"(relative {max_rel:.3e}) exceeds atol {atol:.1e} + rtol {rtol:.1e} x max|ref| {scale:.3e}; "
            f"argmax agreement {agreement:.2%}",
            report,
        )
    return report
