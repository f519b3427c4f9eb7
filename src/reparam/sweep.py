"""The end of a ``python train.py -m ...`` sweep: one table of every run, and ``sweep_summary.json``.

A Hydra callback (configured in ``configs/hydra/default.yaml``): each job's directory and overrides are noted as it
ends, and when the sweep ends each job's ``summary.json`` is read back, so the table shows what the runs wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.table import Table

from .artifact import atomic_write_json
from .report import console, pct, text
from .training import SUMMARY_FILE, SUMMARY_METRICS

__all__ = ["SweepSummary", "SWEEP_SUMMARY_FILE", "rank_runs"]

SWEEP_SUMMARY_FILE = "sweep_summary.json"


class SweepSummary(Callback):
    """Collects the jobs of a multirun and reports them side by side, best ``optimized_metric`` first
    (highest accuracy, lowest fusion error)."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.jobs = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.jobs.append({
            "job": config.hydra.job.num,
            "overrides": list(job_return.overrides or []),
            "run_dir": str(config.hydra.runtime.output_dir),
            "status": job_return.status.name,
            # what train.py returned to Hydra: the optimized_metric a sweeper would see
            "value": job_return.return_value if job_return.status == JobStatus.COMPLETED else None,
        })

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.jobs or self.sweep_dir is None:
            return
        metric = config.get("optimized_metric")
        runs = []
        for job in self.jobs:
            path = Path(job["run_dir"]) / SUMMARY_FILE
            summary = json.loads(path.read_text()) if path.is_file() else {}
            runs.append({**job, "summary": summary})
        report = {"sweep_dir": str(self.sweep_dir), "optimized_metric": metric, "runs": rank_runs(runs, metric)}
        path = atomic_write_json(self.sweep_dir / SWEEP_SUMMARY_FILE, report)
        print_sweep_summary(report)
        console.print(f"sweep summary: {path}")


def rank_runs(runs: list[dict[str, Any]], metric: str | None) -> list[dict[str, Any]]:
    """Best ``summary[metric]`` first (higher or lower, as ``SUMMARY_METRICS`` says); runs without the value
    (failed, or not measured, e.g. no validation) last; job order when no metric is named."""
    if not metric:
        return list(runs)
    sign = -1.0 if SUMMARY_METRICS.get(metric, "max") == "max" else 1.0
    return sorted(runs, key=lambda r: (r["summary"].get(metric) is None, sign * (r["summary"].get(metric) or 0.0)))


def print_sweep_summary(report: dict[str, Any]) -> None:
    table = Table(title=f"reparam: sweep of {len(report['runs'])} runs "
                        f"(sorted by {report['optimized_metric'] or 'job'})", title_justify="left")
    for column in ("job", "overrides", "status", "best val acc", "test acc", "fused argmax agreement", "run dir"):
        table.add_column(column, overflow="fold")
    for run in report["runs"]:
        s = run["summary"]
        table.add_row(text(run["job"]), " ".join(run["overrides"]) or "-", run["status"], pct(s.get("best_val_acc")),
                      pct(s.get("test_acc")), pct(s.get("fusion_argmax_agreement")), run["run_dir"])
    console.print(table)
