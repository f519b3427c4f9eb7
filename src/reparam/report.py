"""Console summaries (rich tables) for the entry points."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_train_summary", "console"]

import sys

# wide enough for paths when output is piped to a file or CI log
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def pct(value: Any) -> str:
    return "-" if value is None else f"{value:.2%}"


def sci(value: Any) -> str:
    return "-" if value is None else f"{value:.2e}"


def text(value: Any) -> str:
    return "-" if value is None else str(value)


def print_train_summary(summary: dict[str, Any]) -> None:
    """The end-of-training table: accuracies, fusion error, artifact paths (rank zero only)."""
    if not summary.get("is_global_zero", True):
        return
    table = Table(title="reparam: training summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("run directory", text, "run_dir"),
        ("epochs trained", text, "epochs"),
        ("best val accuracy", pct, "best_val_acc"),
        ("test accuracy", pct, "test_acc"),
        ("tested weights", text, "tested_weights"),
        ("fusion max |diff| fp32", sci, "fusion_fp32_max_abs_diff"),
        ("fusion max |diff| fp64", sci, "fusion_fp64_max_abs_diff"),
        ("fused argmax agreement", pct, "fusion_argmax_agreement"),
        ("best checkpoint", text, "best_checkpoint"),
        ("last checkpoint", text, "last_checkpoint"),
        ("fused model", text, "fused_dir"),
    ]
    for name, fmt, key in rows:
        table.add_row(name, fmt(summary.get(key)))
    console.print(table)
    if summary.get("fused_dir"):
        console.print(f"next: python deploy.py ckpt={summary['fused_dir']}")
