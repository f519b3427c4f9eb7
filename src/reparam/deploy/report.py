"""The deploy report: typed results for every target, and report.json made from them (schema in README.md).

The console table (:mod:`.console`), the plot (:mod:`.plot`), report.json and the loggers are all written from one
:class:`DeployReport`. ``schema_version`` 2 added ``targets``, ``skipped_targets`` and ``machine``; 3 renames the
benchmark rows' ``form`` to ``target`` (it always held the target's name; a form is train vs fused). The schema-1 keys
(``accuracy``, ``correct``, ``disagreements``, ``speedup``, ``int8``, ...) stay, derived from the targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..artifact import atomic_write_json
from ..compare import ComparisonReport, Tolerance
from .evaluate import TargetEvaluation
from .export import ExportResult
from .gates import Equivalence, MaxDrop, Outcome, Verdict
from .machine import Machine
from .targets import REFERENCE, Target
from .timing import BenchmarkResult, Ratio, ratios

__all__ = ["SCHEMA_VERSION", "DeployReport", "TargetReport", "outcome_of", "write_report"]

SCHEMA_VERSION = 3


def _by_batch(values: dict[int, Any]) -> dict[str, Any]:
    """JSON keys are strings: ``{"1": ..., "32": ...}``."""
    return {str(bs): value.to_dict() if isinstance(value, Ratio) else value for bs, value in values.items()}


def outcome_of(target: Target, evaluation: TargetEvaluation, reference: TargetEvaluation) -> Outcome:
    """What a target's gate judges: its correct count and logits against the reference's."""
    return Outcome(
        target.label,
        target.precision,
        evaluation.correct,
        reference.correct,
        evaluation.num_images,
        evaluation.comparison,
    )


@dataclass
class TargetReport:
    """One target: what it is, how it scored on the test split against the reference, how fast it ran."""

    name: str
    label: str  # "fused torch bf16 cuda"
    runtime: str
    precision: str
    device: str
    num_images: int
    correct: int
    accuracy: float
    accuracy_drop: float  # points below the reference (negative: above)
    disagreements: int | None  # predictions that differ from the reference's; None for the reference
    max_abs_logit_diff: float | None
    comparison: ComparisonReport | None  # the full comparison, for float32 forms
    gate: Verdict
    params: int | None = None
    flops_per_image: int | None = None
    artifact: str | None = None  # a file this target wrote (model.int8.onnx)
    details: dict[str, Any] = field(default_factory=dict)
    throughput: dict[int, float] = field(default_factory=dict)  # images/s by batch size
    speedup_vs_reference: dict[int, Ratio] = field(default_factory=dict)  # over the interleaved rounds

    @classmethod
    def of(
        cls,
        target: Target,
        evaluation: TargetEvaluation,
        reference: TargetEvaluation,
        benchmark: Sequence[BenchmarkResult],
    ) -> TargetReport:
        comparison = evaluation.comparison
        outcome = outcome_of(target, evaluation, reference)
        rows = [r for r in benchmark if r.target == target.name]
        return cls(
            name=target.name,
            label=target.label,
            runtime=target.runtime,
            precision=target.precision,
            device=str(target.device),
            num_images=evaluation.num_images,
            correct=evaluation.correct,
            accuracy=evaluation.accuracy,
            accuracy_drop=outcome.accuracy_drop,
            disagreements=None if comparison is None else comparison.disagreements,
            max_abs_logit_diff=None if comparison is None else comparison.max_abs_diff,
            comparison=comparison if isinstance(target.gate, Equivalence) else None,
            gate=target.gate.check(outcome),
            params=rows[0].params if rows else None,
            flops_per_image=rows[0].flops_per_image if rows else None,
            artifact=target.artifact,
            details=dict(target.details),
            throughput={r.batch_size: r.throughput_ips for r in rows},
            speedup_vs_reference=ratios(benchmark, target.name, REFERENCE) if target.name != REFERENCE else {},
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["comparison"] = None if self.comparison is None else self.comparison.to_dict()
        out["throughput"] = _by_batch(self.throughput)
        out["speedup_vs_reference"] = _by_batch(self.speedup_vs_reference)
        return out


@dataclass
class DeployReport:
    """Everything a deploy run found; ``to_dict`` is report.json."""

    checkpoint: str
    source_kind: str  # checkpoint | fused
    weights_chosen_because: str
    dataset: str
    num_test_images: int
    recorded_test_acc: float | None
    model: dict[str, Any]  # the architecture spec
    device: str  # where the torch targets ran
    comparison_precision: str  # "float32, TF32 off": how the equivalence checks computed
    tolerance: Tolerance  # tolerance.atol / tolerance.rtol (the float32 torch forms)
    targets: list[TargetReport]  # the reference (fused) first
    skipped_targets: dict[str, str]  # targets=[auto] ones that cannot run here, and why
    benchmark: list[BenchmarkResult]
    exports: dict[str, ExportResult]
    machine: Machine
    report_path: str
    plot_path: str | None = None
    schema_version: int = SCHEMA_VERSION
    # what looks wrong with the test data (an accuracy far below the recorded one): printed, never a failure
    data_warnings: list[str] = field(default_factory=list)
    benchmark_skipped: str | None = None  # why no target was timed although the benchmark was on
    recorded_test_images: int | None = None  # how many images recorded_test_acc was measured on (None: not recorded)

    def target(self, name: str) -> TargetReport | None:
        return next((t for t in self.targets if t.name == name), None)

    @property
    def equivalent(self) -> bool | None:
        """Whether the fused model computes the train form's function; None without a train form."""
        train = self.target("train_form")
        return None if train is None else train.gate.passed

    def failures(self) -> list[str]:
        """Why this deploy must fail, most fundamental first: equivalence, export parity, accuracy drops."""
        failed = [t.gate for t in self.targets if not t.gate.passed]
        exports = [fmt for fmt, r in self.exports.items() if not r.ok]
        # each failed verdict carries its line (gates.py); its rule stands in should one not
        return (
            [v.failure or v.rule for v in failed if v.kind == Equivalence.kind]
            + ([f"export parity failed for {', '.join(exports)}"] if exports else [])
            + [v.failure or v.rule for v in failed if v.kind == MaxDrop.kind]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "checkpoint": self.checkpoint,
            "source_kind": self.source_kind,
            "weights_chosen_because": self.weights_chosen_because,
            "dataset": self.dataset,
            "num_test_images": self.num_test_images,
            "recorded_test_acc": self.recorded_test_acc,
            "recorded_test_images": self.recorded_test_images,
            "data_warnings": list(self.data_warnings),
            "model": self.model,
            "device": self.device,
            "reference": REFERENCE,
            "targets": {t.name: t.to_dict() for t in self.targets},
            "skipped_targets": self.skipped_targets,
            "benchmark": [r.to_dict() for r in self.benchmark],
            "benchmark_skipped": self.benchmark_skipped,
            "machine": self.machine.to_dict(),
            "exports": {fmt: r.to_dict() for fmt, r in self.exports.items()},
            "equivalent": self.equivalent,
            "tolerance": asdict(self.tolerance),
            "comparison_device": self.device,
            "comparison_precision": self.comparison_precision,
            **self._schema1_summaries(),
            "plot_path": self.plot_path,
            "report_path": self.report_path,
        }

    def _schema1_summaries(self) -> dict[str, Any]:
        """The keys of schema 1, each a view of the targets: fused vs train form, and the INT8 section."""
        train = self.target("train_form")
        comparison = train.comparison if train else None
        out = {
            "accuracy": {t.name: t.accuracy for t in self.targets},
            "correct": {t.name: t.correct for t in self.targets},
            "disagreements": train.disagreements if train else None,
            "max_abs_logit_diff": train.max_abs_logit_diff if train else None,
            "max_abs_logit": comparison.max_abs_reference if comparison else None,
            "comparison": comparison.to_dict() if comparison else None,
            "speedup": {str(bs): r.median for bs, r in ratios(self.benchmark, REFERENCE, "train_form").items()},
            "speedup_spread": _by_batch(ratios(self.benchmark, REFERENCE, "train_form")),
            "speedup_vs_plain_vgg": {
                str(bs): r.median for bs, r in ratios(self.benchmark, REFERENCE, "plain_vgg").items()
            },
        }
        int8, reference = self.target("onnxruntime_int8"), self.targets[0]
        if int8 is not None:
            out["int8"] = {
                "accuracy": int8.accuracy,
                "fp32_accuracy": reference.accuracy,
                "accuracy_drop": int8.accuracy_drop,
                "correct": int8.correct,
                "disagreements_vs_fp32": int8.disagreements,
                "max_abs_logit_diff_vs_fp32": int8.max_abs_logit_diff,
                "max_drop": int8.gate.limits["max_drop"],
                "model_path": int8.artifact,
                **int8.details,
                "throughput": _by_batch(int8.throughput),
                "speedup_vs_fp32": _by_batch(int8.speedup_vs_reference),
                "speedup_vs_onnxruntime_fp32": _by_batch(ratios(self.benchmark, int8.name, "onnxruntime_fp32")),
            }
        return out


def write_report(report: DeployReport) -> Path:
    return atomic_write_json(report.report_path, report.to_dict())
