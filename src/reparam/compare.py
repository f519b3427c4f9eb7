"""One way to say "these two outputs are the same": a tolerance, a streaming comparison, one report type.

Used everywhere two forms of a model are compared: the end-of-training fusion check, deploy's test-split
evaluation, the ONNX and torch.export parity checks, and ``auto_fuse``.

The test is ``max |actual - reference| <= atol + rtol * max |reference|`` over everything compared:
relative to the output's scale, which stays meaningful where single elements are near zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = [
    "Tolerance",
    "Comparison",
    "ComparisonReport",
    "compare",
    "output_tensors",
    "strict_fp32",
    "tf32_enabled",
]


def tf32_enabled() -> bool:
    """Whether float32 convolutions or matmuls on CUDA may run in TF32 right now (cuDNN convs do by default)."""
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if conv is not None and matmul is not None:
        return conv == "tf32" or matmul == "tf32" or (matmul == "none" and torch.backends.cuda.matmul.allow_tf32)
    return bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)


@contextmanager
def strict_fp32() -> Iterator[None]:
    """True IEEE float32 for convolutions and matmuls inside the block (TF32 off), restored afterwards.

    On Ampere and later GPUs cuDNN runs float32 convolutions in TF32 (10-bit mantissa) by default, which alone
    exceeds a float32 equivalence tolerance; equivalence checks run inside this, benchmarks need not.
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9: the precision API
        saved = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
        conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@dataclass(frozen=True)
class Tolerance:
    """``atol + rtol * max|reference|``; :meth:`for_dtype` gives fusion's rounding error with headroom."""

    atol: float
    rtol: float

    @classmethod
    def for_dtype(cls, dtype: torch.dtype) -> Tolerance:
        if dtype == torch.float64:
            return cls(1e-10, 1e-10)
        if dtype == torch.float32:
            return cls(1e-5, 1e-4)
        return cls(1e-2, 1e-2)  # half / bfloat16 / TF32-like arithmetic

    @classmethod
    def resolve(cls, dtype: torch.dtype, atol: float | None = None, rtol: float | None = None) -> Tolerance:
        """The dtype's default with any of ``atol`` / ``rtol`` given explicitly put on top."""
        default = cls.for_dtype(dtype)
        return cls(default.atol if atol is None else float(atol), default.rtol if rtol is None else float(rtol))

    def limit(self, scale: float) -> float:
        return self.atol + self.rtol * scale


@dataclass(frozen=True)
class ComparisonReport:
    """How closely ``actual`` reproduced ``reference`` over ``num_samples`` rows."""

    max_abs_diff: float
    max_rel_diff: float  # max_abs_diff / max|reference|
    max_abs_reference: float
    argmax_agreement: float  # fraction of rows with the same argmax (class prediction); nan without 2-D outputs
    disagreements: int  # rows of 2-D outputs whose argmax differs
    num_samples: int  # rows compared, every output's
    dtype: str
    atol: float
    rtol: float
    passed: bool
    predictions: int = 0  # rows of 2-D outputs: the class predictions ``disagreements`` is out of

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line, for error messages."""
        line = (
            f"max |diff| = {self.max_abs_diff:.3e} (relative {self.max_rel_diff:.3e}) against a limit of atol "
            f"{self.atol:.1e} + rtol {self.rtol:.1e} x max|ref| {self.max_abs_reference:.3e}"
        )
        if self.predictions:
            line += f"; {self.disagreements} of {self.predictions} predictions differ"
        return line


class Comparison:
    """Accumulates a comparison over batches: ``update(reference, actual)`` each batch, then ``report()``.

    With no tolerance given, the default for the first reference batch's dtype is used.
    """

    def __init__(self, tolerance: Tolerance | None = None) -> None:
        self.tolerance = tolerance
        self.max_abs_diff = 0.0
        self.max_abs_reference = 0.0
        self.disagreements = 0
        self.rows = 0
        self.argmax_rows = 0
        self.dtype: torch.dtype | None = None
        self.finite = True

    def update(self, reference: torch.Tensor, actual: torch.Tensor) -> None:
        if reference.shape != actual.shape:
            raise ValueError(f"output shapes differ: reference {tuple(reference.shape)}, other {tuple(actual.shape)}")
        self.dtype = self.dtype or reference.dtype
        ref, act = reference.detach().double(), torch.as_tensor(actual).detach().double().to(reference.device)
        if ref.numel():
            diff = (act - ref).abs()
            self.finite = self.finite and bool(torch.isfinite(diff).all())
            self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
            self.max_abs_reference = max(self.max_abs_reference, float(ref.abs().max()))
        self.rows += int(ref.shape[0]) if ref.dim() else 1
        if ref.dim() == 2 and ref.numel():  # (rows, classes): one prediction per row; feature maps have none
            self.disagreements += int((ref.argmax(1) != act.argmax(1)).sum())
            self.argmax_rows += int(ref.shape[0])

    def update_outputs(self, reference: Any, actual: Any) -> None:
        """Two models' outputs of any nesting (a tensor, or tuples, lists and dicts of tensors): every tensor of
        ``actual`` against the one at the same place in ``reference``."""
        expected, got = output_tensors(reference), output_tensors(actual)
        if [where for where, _ in expected] != [where for where, _ in got]:
            raise ValueError(
                f"the outputs differ in structure: reference {[w or 'tensor' for w, _ in expected]}, "
                f"other {[w or 'tensor' for w, _ in got]}"
            )
        for (where, ref), (_, act) in zip(expected, got, strict=True):
            if ref.shape != act.shape:
                place = f" at {where}" if where else ""
                raise ValueError(f"output shapes differ{place}: reference {tuple(ref.shape)}, other {tuple(act.shape)}")
            self.update(ref, act)

    def report(self) -> ComparisonReport:
        dtype = self.dtype or torch.float32
        tol = self.tolerance or Tolerance.for_dtype(dtype)
        scale = self.max_abs_reference
        max_abs = self.max_abs_diff if self.finite else math.inf
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
        agreement = 1.0 - self.disagreements / self.argmax_rows if self.argmax_rows else float("nan")
        return ComparisonReport(
            max_abs_diff=max_abs,
            max_rel_diff=max_rel,
            max_abs_reference=scale,
            argmax_agreement=agreement,
            disagreements=self.disagreements,
            num_samples=self.rows,
            dtype=str(dtype).removeprefix("torch."),
            atol=tol.atol,
            rtol=tol.rtol,
            passed=bool(self.finite and max_abs <= tol.limit(scale)),
            predictions=self.argmax_rows,
        )


def output_tensors(output: Any, where: str = "") -> list[tuple[str, torch.Tensor]]:
    """The tensors of a model's output, each with where it sits (``""`` for a lone tensor, ``[0]``, ``['logits']``,
    ``[1][0]``): tuples, lists (named tuples too) and dicts, in order; ``None`` entries are skipped. Anything else is
    refused with a ``TypeError`` that says what and where."""
    if isinstance(output, torch.Tensor):
        return [(where, output)]
    if output is None:
        return []
    if isinstance(output, dict):
        items: list[tuple[str, Any]] = [(f"{where}[{key!r}]", value) for key, value in output.items()]
    elif isinstance(output, (tuple, list)):
        items = [(f"{where}[{i}]", value) for i, value in enumerate(output)]
    else:
        place = f" at output{where}" if where else ""
        raise TypeError(
            f"cannot compare a {type(output).__name__}{place}: outputs compared are tensors, or tuples, lists and "
            "dicts of them"
        )
    return [found for key, value in items for found in output_tensors(value, key)]


def compare(reference: torch.Tensor, actual: torch.Tensor, tolerance: Tolerance | None = None) -> ComparisonReport:
    """A one-batch :class:`Comparison`."""
    comparison = Comparison(tolerance)
    comparison.update(reference, actual)
    return comparison.report()
