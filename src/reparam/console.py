"""Console summaries (rich tables) for the entry points."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .run_summary import TrainSummary

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


def sci_relative(values: tuple[Any, Any]) -> str:
    """An absolute difference with its relative size (to the largest reference logit), when known."""
    absolute, relative = values
    return sci(absolute) if relative is None else f"{sci(absolute)} (relative {sci(relative)})"


def pct_of(values: tuple[Any, Any]) -> str:
    """An accuracy with the number of images it was measured on: one image is 1/n of it."""
    value, images = values
    return pct(value) if value is None or not images else f"{pct(value)} of {images:,} images"


def pct_pair(values: tuple[Any, Any]) -> str:
    return "-" if all(v is None for v in values) else " / ".join(pct(v) for v in values)


def field(summary: TrainSummary, key: str | tuple[str, ...]) -> Any:
    return tuple(getattr(summary, k) for k in key) if isinstance(key, tuple) else getattr(summary, key)


def print_train_summary(
    summary: TrainSummary, deploy_command: str = "python deploy.py", imports: tuple[str, ...] = ()
) -> None:
    """The end-of-training table: accuracies, fusion error, speed, artifact paths."""
    title = "reparam: training summary"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, Callable[[Any], str], str | tuple[str, ...]]] = [
        ("run directory", text, "run_dir"),
        ("epochs trained", text, "epochs"),
        ("best val accuracy", pct_of, ("best_val_acc", "val_images")),
        ("test accuracy", pct_of, ("test_acc", "test_images")),
        ("tested weights", text, "tested_weights"),
        ("weight averaging", text, "averaged_weights"),
        ("shipped weights", text, "shipped_weights"),
        ("val accuracy raw / averaged", pct_pair, ("val_acc_raw", "val_acc_averaged")),
        ("fusion max |diff| fp32", sci_relative, ("fusion_fp32_max_abs_diff", "fusion_fp32_max_rel_diff")),
        ("fusion max |diff| fp64", sci_relative, ("fusion_fp64_max_abs_diff", "fusion_fp64_max_rel_diff")),
        ("fused argmax agreement", pct, "fusion_argmax_agreement"),
        ("training images/s", rate, "train_images_per_s"),
        ("time to best epoch", seconds, "time_to_best_s"),
        ("total time", seconds, "total_time_s"),
        ("best checkpoint", text, "best_checkpoint"),
        ("last checkpoint", text, "last_checkpoint"),
        ("fused model", text, "fused_dir"),
    ]
    if summary.skipped_images:  # only when data.skip_bad_images=true left files out: they are named in the log
        rows.insert(2, ("unreadable images skipped", text, "skipped_images"))
    # a test accuracy measured on the validation images also chose the checkpoint: say so beside it
    if summary.test_split and summary.test_acc is not None:
        after = next(i for i, row in enumerate(rows) if row[0] == "test accuracy")
        rows.insert(after + 1, ("test split", text, "test_split"))
    if summary.resumed_from:  # the times count from there; the epochs and accuracies are the whole run's
        timed = ("training images/s", "time to best epoch", "total time")
        rows = [(f"{name} (since resuming)" if name in timed else name, fmt, key) for name, fmt, key in rows]
        rows.insert(2, ("resumed from", text, "resumed_from"))
    for name, fmt, key in rows:  # values are text, not rich markup (paths and errors may hold brackets)
        table.add_row(name, escape(fmt(field(summary, key))))
    console.print(table)
    log_to_file(title, [(name, fmt(field(summary, key))) for name, fmt, key in rows])
    if summary.fused_dir:
        # one line to copy; the user's modules again, which build the model's block kind
        listed = ",".join(imports)
        own = f" {shlex.quote(f'imports=[{listed}]')}" if imports else ""
        console.print(f"next: {deploy_command} ckpt={summary.fused_dir}{own}", soft_wrap=True, markup=False)


def log_to_file(title: str, rows: list[tuple[str, str]]) -> None:
    """A table already printed, as plain lines in the run's log file (``reparam.file`` writes to the file only)."""
    file_log = logging.getLogger("reparam.file")
    file_log.info(title)
    for name, value in rows:
        file_log.info(f"  {name}: {value}")
