"""What each deploy target must satisfy against the fused fp32 reference, and the verdict on it.

Two rules. A float32 form (train form, plain-VGG limit, compiled, ONNX Runtime fp32) computes the same function as
the reference: :class:`Equivalence`, the tolerance test of :mod:`reparam.compare` over every test image plus an
identical correct count. A reduced-precision form (bf16, fp16, INT8) computes an approximation: :class:`MaxDrop`,
test accuracy at most ``max_drop`` points below the reference's. The reference itself is the yardstick
(:class:`Reference`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..compare import ComparisonReport, Tolerance

__all__ = ["Gate", "Reference", "Equivalence", "MaxDrop", "Verdict", "Outcome"]


@dataclass(frozen=True)
class Outcome:
    """What a gate looks at: a target's results next to the reference's, over the same test images."""

    label: str  # "fused torch bf16 cuda": what the message names
    precision: str  # "fp32", "bf16", "int8", ...
    correct: int
    reference_correct: int
    num_images: int
    comparison: ComparisonReport | None  # the target's logits against the reference's

    @property
    def accuracy_drop(self) -> float:
        """Points of test accuracy below the reference (negative: better than the reference)."""
        return (self.reference_correct - self.correct) / self.num_images * 100 if self.num_images else 0.0


@dataclass(frozen=True)
class Verdict:
    kind: str  # reference | equivalence | max_drop
    passed: bool
    rule: str  # the rule in words, for the report
    limits: dict[str, float] = field(default_factory=dict)  # the rule's numbers: atol and rtol, or max_drop
    failure: str | None = None  # one line saying what went wrong and what to do; None when passed


class Gate:
    """A rule one target must pass; ``check`` gives the verdict, ``tolerance`` the comparison's limit."""

    kind = "gate"

    @property
    def tolerance(self) -> Tolerance | None:
        return None

    def check(self, outcome: Outcome) -> Verdict:
        raise NotImplementedError


@dataclass(frozen=True)
class Reference(Gate):
    """The fused fp32 model in torch eager: every other target is measured against it."""

    kind = "reference"

    def check(self, outcome: Outcome) -> Verdict:
        return Verdict(self.kind, True, "the reference every other target is compared with")


@dataclass(frozen=True)
class Equivalence(Gate):
    """Same function as the reference: ``max |logit diff| <= atol + rtol * max |logit|`` and the same correct count."""

    limit: Tolerance
    setting: str  # where the user sets the tolerance, e.g. "tolerance" (tolerance.atol / tolerance.rtol)
    advice: str = "a bug: please report it with report.json"
    mismatch: str = ""  # the failure's opening words; default: "<label> is NOT equivalent to the fused fp32 reference"

    kind = "equivalence"

    @property
    def tolerance(self) -> Tolerance:
        return self.limit

    def check(self, outcome: Outcome) -> Verdict:
        rule = (
            f"max |logit diff| <= {self.limit.atol:g} + {self.limit.rtol:g} x max |logit| ({self.setting}.atol, "
            f"{self.setting}.rtol) and the same correct count"
        )
        limits = {"atol": self.limit.atol, "rtol": self.limit.rtol}
        comparison = outcome.comparison
        if comparison is not None and comparison.passed and outcome.correct == outcome.reference_correct:
            return Verdict(self.kind, True, rule, limits)
        diff = float("nan") if comparison is None else comparison.max_abs_diff
        mismatch = self.mismatch or f"{outcome.label} is NOT equivalent to the fused fp32 reference"
        failure = (
            f"{mismatch}: correct {outcome.correct} vs "
            f"{outcome.reference_correct}, max |logit diff| {diff:.3e} (tolerance {self.limit.atol:g} + "
            f"{self.limit.rtol:g} x max|logit|); {self.advice}"
        )
        return Verdict(self.kind, False, rule, limits, failure)


@dataclass(frozen=True)
class MaxDrop(Gate):
    """Reduced precision: test accuracy at most ``max_drop`` points below the reference."""

    max_drop: float
    setting: str  # the config key of max_drop, e.g. "quantize.max_drop"
    advice: str  # what to try when the drop is too large

    kind = "max_drop"

    def check(self, outcome: Outcome) -> Verdict:
        drop = outcome.accuracy_drop
        rule = f"accuracy drop <= {self.max_drop:g} points ({self.setting})"
        limits = {"max_drop": self.max_drop}
        if drop <= self.max_drop:
            return Verdict(self.kind, True, rule, limits)
        reference_acc = outcome.reference_correct / outcome.num_images
        failure = (
            f"{outcome.precision.upper()} accuracy dropped {drop:.2f} points (fp32 {reference_acc:.2%} -> "
            f"{outcome.precision.upper()} {outcome.correct / outcome.num_images:.2%}, {outcome.label}), more "
            f"than {self.setting}={self.max_drop}; {self.advice}"
        )
        return Verdict(self.kind, False, rule, limits, failure)
