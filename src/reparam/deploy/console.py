"""The deploy summary on the console: one table of every target (accuracy, agreement, check, speed), then notes."""

from __future__ import annotations

import logging

from rich.table import Table
from rich.text import Text

from ..console import console, log_to_file, pct
from .report import DeployReport, TargetReport
from .targets.selection import TRAIN_FORM
from .timing import ratios

__all__ = ["print_deploy_summary", "fastest_passing"]


def _check(target: TargetReport) -> str:
    verdict = target.gate
    if verdict.kind == "reference":
        return "reference"
    if verdict.kind == "max_drop":
        return (
            f"{'ok' if verdict.passed else 'FAILED'}: drop {target.accuracy_drop:.2f} <= {verdict.limits['max_drop']:g}"
        )
    return "equivalent" if verdict.passed else "NOT equivalent"


def _speed(target: TargetReport, batch_size: int) -> str:
    """``2705/s 3.17x``: throughput and the median ratio to the reference; ``~1x`` where the rounds' spread covers 1."""
    throughput = target.throughput.get(batch_size)
    if throughput is None:
        return "-"
    ratio = target.speedup_vs_reference.get(batch_size)
    relative = "" if ratio is None else f" {ratio.median:.2f}x" if ratio.measurable else " ~1x"
    return f"{throughput:.0f}/s{relative}"


def _rows(report: DeployReport) -> tuple[str, list[str], list[list[str]]]:
    """The table's title, columns and rows: printed as a table, written to deploy.log as lines."""
    recorded = "" if report.recorded_test_acc is None else f"; {pct(report.recorded_test_acc)} recorded at training"
    if recorded and report.recorded_test_images not in (None, report.num_test_images):
        recorded += f" on {report.recorded_test_images} images"
    timed = (
        "; images/s and x reference: medians over rounds timed round-robin"
        if report.benchmark
        else "; not timed (benchmark.enabled=false, or see below)"
    )
    title = (
        f"reparam deploy: {report.checkpoint}\n{report.dataset}, {report.num_test_images} test images{recorded}; "
        f"each target against the fused fp32 reference{timed}"
    )
    sizes = sorted({r.batch_size for r in report.benchmark})
    columns = ["target", "accuracy", "differs", "max |Δlogit|", "check", *(f"batch {bs}" for bs in sizes)]
    rows = []
    for target in report.targets:
        diff = target.max_abs_logit_diff
        rows.append(
            [
                target.label,
                f"{pct(target.accuracy)} ({target.correct})",
                "-" if target.disagreements is None else str(target.disagreements),
                "-" if diff is None else f"{diff:.1e}",
                _check(target),
                *(_speed(target, bs) for bs in sizes),
            ]
        )
    return title, columns, rows


def _table(report: DeployReport) -> Table:
    title, columns, rows = _rows(report)
    table = Table(title=Text(title), title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column in ("target", "check") else "right")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def _say(prefix: str, line: str, style: str = "") -> None:
    """A line whose text may hold brackets (paths, overrides): printed without markup, and written to deploy.log."""
    console.print(Text.assemble((prefix, style or "bold"), line))
    logging.getLogger("reparam.file").info(f"{prefix}{line}")


def fastest_passing(report: DeployReport) -> dict[int, TargetReport]:
    """Per benchmarked batch size, the fastest target that passed its check (the train form left out)."""
    fastest: dict[int, TargetReport] = {}
    for target in report.targets:
        if target.name == TRAIN_FORM or not target.gate.passed:
            continue
        for batch_size, throughput in target.throughput.items():
            if batch_size not in fastest or throughput > fastest[batch_size].throughput[batch_size]:
                fastest[batch_size] = target
    return dict(sorted(fastest.items()))


def _fastest_line(report: DeployReport) -> str | None:
    fastest = fastest_passing(report)
    if not fastest:
        return None
    parts = []
    for batch_size, target in fastest.items():
        ratio = target.speedup_vs_reference.get(batch_size)
        relative = "" if ratio is None or target.gate.kind == "reference" else f", {ratio.median:.2f}x the reference"
        parts.append(f"batch {batch_size}: {target.name} ({target.throughput[batch_size]:.0f}/s{relative})")
    return "; ".join(parts) + " (python serve.py ckpt=... serves the fastest at its serve.max_batch_size)"


def print_deploy_summary(report: DeployReport) -> None:
    console.print(_table(report))
    title, columns, rows = _rows(report)
    log_to_file(
        title.replace("\n", "; "),
        [(row[0], ", ".join(f"{c} {v}" for c, v in zip(columns[1:], row[1:], strict=True))) for row in rows],
    )
    spread = ratios(report.benchmark, "fused", "train_form")
    if spread:
        _say(
            "fused / train form ",
            "(median over rounds, min..max): "
            + ", ".join(f"batch {bs}: {ratio.describe()}" for bs, ratio in spread.items()),
        )
    fastest = _fastest_line(report)
    if fastest:
        _say("fastest that passed its check: ", fastest)
    for name, why in report.skipped_targets.items():
        _say("skipped ", f"{name}: {why}")
    if report.benchmark_skipped:
        _say("skipped ", f"benchmark: {report.benchmark_skipped}")
    machine = report.machine
    if report.benchmark:
        load = (
            ""
            if machine.load_after is None
            else f"; load average {machine.load_after:.2f} at the end (deploy's own included)"
        )
        _say("threads ", f"{machine.threads} ({machine.threads_chosen_because}){load}")
    for warning in [*report.data_warnings, *machine.warnings]:
        _say("warning: ", warning, "bold yellow")
    for fmt, export in report.exports.items():
        timing = (
            f", {export.latency_ms_median:.2f} ms/batch of {export.batch_size} in onnxruntime"
            if export.latency_ms_median
            else ""
        )
        _say(f"export {fmt}: ", f"{export.path} (max |diff| {export.max_abs_diff:.1e}{timing})")
    for target in report.targets:
        if target.artifact:
            _say(f"{target.name}: ", target.artifact + "".join(f", {k}={v}" for k, v in target.details.items()))
    _say("report: ", report.report_path)
