"""Console summaries (rich tables) for the entry points."""

from __future__ import annotations

import logging
from typing import Any

from rich.console import Console
from rich.table import Table

from .summary import TrainSummary

__all__ = ["print_train_summary", "console"]

import sys

# wide enough for paths when output is piped to a file or CI log
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def pct(value: Any) -> str:
    return "-" if value is None else f"{value:.2%}"


def sci(value: Any) -> str:
    return "-" if value is None else f"{value:.2e}"


def rate(value: Any) -> str:
    return "-" if value is None else f"{value:,.0f}"


def seconds(value: Any) -> str:
    if value is None:
        return "-"
    minutes, secs = divmod(float(value), 60)
    return f"{secs:.1f} s" if minutes < 1 else f"{int(minutes)} min {secs:02.0f} s"


def text(value: Any) -> str:
    return "-" if value is None else str(value)


def print_train_summary(summary: TrainSummary, deploy_command: str = "python deploy.py") -> None:
    """The end-of-training table: accuracies, fusion error, speed, artifact paths."""
    table = Table(title="reparam: training summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("run directory", text, "run_dir"),
        ("epochs trained", text, "epochs"),
        ("best val accuracy", pct, "best_val_acc"),
        ("test accuracy", pct, "test_acc"),
        ("tested weights", text, "tested_weights"),
        ("weight averaging", text, "averaged_weights"),
        ("fusion max |diff| fp32", sci, "fusion_fp32_max_abs_diff"),
        ("fusion max |diff| fp64", sci, "fusion_fp64_max_abs_diff"),
        ("fused argmax agreement", pct, "fusion_argmax_agreement"),
        ("training images/s", rate, "train_images_per_s"),
        ("time to best epoch", seconds, "time_to_best_s"),
        ("total time", seconds, "total_time_s"),
        ("best checkpoint", text, "best_checkpoint"),
        ("last checkpoint", text, "last_checkpoint"),
        ("fused model", text, "fused_dir"),
    ]
    for name, fmt, key in rows:
        table.add_row(name, fmt(getattr(summary, key)))
    console.print(table)
    log_to_file(table.title, [(name, fmt(getattr(summary, key))) for name, fmt, key in rows])
    if summary.fused_dir:
        console.print(f"next: {deploy_command} ckpt={summary.fused_dir}", soft_wrap=True)  # one line to copy


def log_to_file(title: str, rows: list[tuple[str, str]]) -> None:
    """A table already printed, as plain lines in the run's log file (``reparam.file`` writes to the file only)."""
    file_log = logging.getLogger("reparam.file")
    file_log.info(title)
    for name, value in rows:
        file_log.info(f"  {name}: {value}")
