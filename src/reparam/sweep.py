"""The end of a ``python train.py -m ...`` sweep: one table of every run, and ``sweep_summary.json``.

A Hydra callback (configured in ``configs/hydra/default.yaml``): each job's directory, overrides and status are
noted as it ends and ``sweep_summary.json`` is rewritten then, so it survives a crash of the sweep itself; when the
sweep ends the table is printed (failed jobs included) and, if any job failed, the process exits non-zero with one
line naming them.

The default sweeper (``configs/hydra/sweeper/tolerant.yaml``, class ``hydra_plugins.reparam_sweeper``) is Hydra's basic
sweeper except that a failed job does not stop the sweep (the basic one re-raises the first failure after the batch,
which skips the end-of-sweep table). Other sweepers (``hydra/sweeper=optuna``) keep their own failure policy
(``max_failure_rate``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.table import Table

from .artifact import atomic_write_json
from .report import console, pct, rate, seconds, text
from .summary import SUMMARY_FILE, SUMMARY_METRICS, TrainSummary

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
        failed = job_return.status != JobStatus.COMPLETED
        error = job_return._return_value if failed else None  # the job's exception; .return_value would re-raise it
        self.jobs.append({
            "job": config.hydra.job.num,
            "overrides": list(job_return.overrides or []),
            "run_dir": str(config.hydra.runtime.output_dir),
            "status": "FAILED" if failed else job_return.status.name,
            "error": " ".join(str(error).split()) or type(error).__name__ if failed else None,
            # what train.py returned to Hydra: the optimized_metric a sweeper would see
            "value": None if failed else job_return.return_value,
        })
        self._write(config)  # after every job: the record survives whatever happens to the sweep later

    def _write(self, config: DictConfig) -> dict[str, Any]:
        metric = config.get("optimized_metric")
        runs = []
        for job in self.jobs:
            summary = TrainSummary.read(Path(job["run_dir"]) / SUMMARY_FILE)
            runs.append({**job, "summary": summary.to_dict() if summary else {}})
        report = {"sweep_dir": str(self.sweep_dir), "optimized_metric": metric, "runs": rank_runs(runs, metric),
                  "failed": sum(job["status"] == "FAILED" for job in self.jobs)}
        atomic_write_json(self.sweep_dir / SWEEP_SUMMARY_FILE, report)
        return report

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.jobs or self.sweep_dir is None:
            return
        report = self._write(config)
        print_sweep_summary(report)
        console.print(f"sweep summary: {self.sweep_dir / SWEEP_SUMMARY_FILE}", soft_wrap=True)
        failed = [job for job in self.jobs if job["status"] == "FAILED"]
        if failed:
            first = failed[0]
            print(f"error: {len(failed)} of {len(self.jobs)} sweep jobs failed (job {first['job']}: {first['error']}); "
                  f"see {self.sweep_dir / SWEEP_SUMMARY_FILE}", file=sys.stderr, flush=True)
            # Hydra turns a callback's exceptions into warnings; SystemExit is no Exception and ends the process
            raise SystemExit(1)


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
    for column in ("job", "overrides", "status", "best val acc", "test acc", "fused argmax agreement", "img/s",
                   "total time", "run dir"):
        table.add_column(column, overflow="fold")
    for run in report["runs"]:
        s = run["summary"]
        status = run["status"] if run["status"] != "FAILED" else f"FAILED: {run.get('error') or '?'}"
        table.add_row(text(run["job"]), " ".join(run["overrides"]) or "-", status, pct(s.get("best_val_acc")),
                      pct(s.get("test_acc")), pct(s.get("fusion_argmax_agreement")), rate(s.get("train_images_per_s")),
                      seconds(s.get("total_time_s")), run["run_dir"])
    console.print(table)
