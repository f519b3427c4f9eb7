"""The end of a ``python train.py -m ...`` sweep or search: one table of every run, and ``sweep_summary.json``.

The record is collected **in the launching process from what the launcher returns** (each job's ``JobReturn``: its
overrides, returned value, status and output directory), so it holds every job whichever launcher ran them: the
basic one (jobs in this process), ``submitit_local`` / ``submitit_slurm`` (jobs in other processes or machines),
and the Optuna search (``hparams_search=...``). reparam's sweepers (``hydra_plugins.reparam_sweeper``) add each
batch's returns to the :class:`SweepRecord` and rewrite ``sweep_summary.json`` after every batch, so it survives a
crash of the sweep itself; the :class:`SweepSummary` callback prints the table when the sweep ends, with the best
run's overrides as one command that reproduces it, and exits non-zero when a job failed.

Another sweeper (``hydra/sweeper=basic``) gets the same table from the callback's own per-job hook, which sees
jobs run in this process only (the basic launcher).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.markup import escape
from rich.table import Table

from .artifact import atomic_write_json
from .console import console, pct, seconds, text
from .errors import UserError
from .run_summary import SUMMARY_FILE, SUMMARY_METRICS, TrainSummary

__all__ = [
    "SweepRun",
    "SweepRecord",
    "SweepSummary",
    "print_stopped_sweep",
    "done_runs",
    "continue_command",
    "SWEEP_SUMMARY_FILE",
    "rank_runs",
    "reproducing_overrides",
    "active_record",
    "set_active_record",
]

SWEEP_SUMMARY_FILE = "sweep_summary.json"
# a run's status in the table: ok, failed (an error, a diverged run, no value), pruned (stopped early by the search),
# interrupted (a search trial killed with the search and run again when it resumed: neither a result nor a failure)
STATUSES = ("ok", "pruned", "failed", "interrupted")
# overrides that choose how a sweep runs, not what a run computes: left out of the command that reproduces a run
_SWEEP_ONLY = ("hparams_search", "hydra/sweeper", "hydra/launcher", "hydra.sweeper.", "hydra.launcher.", "hydra.sweep.")


def job_error(job_return: JobReturn) -> BaseException:
    """A failed job's exception, through ``JobReturn.return_value`` (Hydra's public accessor re-raises it and writes
    an "Error executing job" line to stderr; that line is dropped: the sweep table names the job and its error)."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            _ = job_return.return_value  # re-raises the job's exception
        except BaseException as err:  # noqa: BLE001 - whatever the job raised, KeyboardInterrupt included
            return err
    raise ValueError(f"job {job_return.overrides} did not fail (status {job_return.status.name})")


@dataclass
class SweepRun:
    """One job of a sweep (one trial of a search), as the table and ``sweep_summary.json`` show it."""

    job: int
    overrides: list[str]
    run_dir: str
    status: str  # one of STATUSES
    value: float | None = None  # what train.py returned: the summary value named by optimized_metric
    params: dict[str, Any] = field(default_factory=dict)  # what the sweep varied (a search: the sampled values)
    duration_s: float | None = None
    error: str | None = None
    trial: int | None = None  # the Optuna trial number (searches only)
    summary: dict[str, Any] = field(default_factory=dict)  # the job's summary.json

    @classmethod
    def from_job(
        cls, job_return: JobReturn, params: dict[str, Any] | None = None, trial: int | None = None
    ) -> SweepRun:
        """What a launcher returned for one job; its ``summary.json`` is read from the job's output directory."""
        assert job_return.hydra_cfg is not None  # Hydra's launchers record each job's config
        hydra_cfg = job_return.hydra_cfg.hydra
        run_dir = str(hydra_cfg.runtime.output_dir)
        summary = TrainSummary.read(Path(run_dir) / SUMMARY_FILE)
        failed = job_return.status != JobStatus.COMPLETED
        value, error = None, None
        if failed:
            err = job_error(job_return)
            error = " ".join(str(err).split()) or type(err).__name__
        else:
            value = job_return.return_value
            if value is not None and not math.isfinite(float(value)):
                failed, error, value = True, f"returned {value}", None
        status = "failed" if failed else "pruned" if summary is not None and summary.status == "pruned" else "ok"
        return cls(
            job=int(hydra_cfg.job.num),
            overrides=list(job_return.overrides or []),
            run_dir=run_dir,
            status=status,
            value=None if value is None else float(value),
            params=dict(params or {}),
            duration_s=summary.total_time_s if summary else None,
            error=error,
            trial=trial,
            summary=summary.to_dict() if summary else {},
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SweepRecord:
    """Every run of one sweep, best ``optimized_metric`` first, and the command that reproduces the best."""

    sweep_dir: str
    optimized_metric: str | None
    runs: list[SweepRun] = field(default_factory=list)
    study: dict[str, Any] | None = None  # a search: study name, storage, direction, sampler, pruner
    # jobs that ended in this process while their batch runs (basic launcher): written at once, replaced by the
    # sweeper's rows when the launcher returns the batch
    pending: list[SweepRun] = field(default_factory=list)
    # stopped part way (Ctrl-C, SIGTERM): a grid's {"jobs": how many, "not_done": [job numbers]}, a search's
    # {"trials": n_trials, "done": trials counted towards it}
    stopped: dict[str, Any] | None = None

    def add_batch(self, runs: list[SweepRun]) -> None:
        self.pending.clear()
        self.runs.extend(runs)
        self.write()

    def ranked(self) -> list[SweepRun]:
        return rank_runs([*self.runs, *self.pending], self.optimized_metric)

    def best(self) -> SweepRun | None:
        return next((run for run in self.ranked() if run.status == "ok" and run.value is not None), None)

    def failed(self) -> list[SweepRun]:
        return [run for run in self.runs if run.status == "failed"]

    def reproduce_command(self, script: str = "python train.py") -> str | None:
        """The best run's command: its overrides without the sweep's own, and the CPU thread count it ran with when
        that differs from this process's (a launcher's ``cpus_per_task``): float sums are ordered by thread, so on a
        CPU another count trains to other weights."""
        best = self.best()
        if best is None:
            return None
        command = " ".join([script, *map(shlex.quote, reproducing_overrides(best.overrides))])
        threads = best.summary.get("cpu_threads")
        if threads is not None:
            import torch

            if int(threads) != torch.get_num_threads():
                command = f"OMP_NUM_THREADS={int(threads)} {command}"
        return command

    def to_dict(self) -> dict[str, Any]:
        best = self.best()
        return {
            "sweep_dir": self.sweep_dir,
            "optimized_metric": self.optimized_metric,
            "study": self.study,
            "runs": [run.to_dict() for run in self.ranked()],
            "counts": {status: sum(run.status == status for run in self.ranked()) for status in STATUSES},
            "failed": len(self.failed()),
            "best": None if best is None else best.to_dict(),
            "reproduce": self.reproduce_command(),
            "stopped": self.stopped,
        }

    def write(self) -> Path:
        path = Path(self.sweep_dir) / SWEEP_SUMMARY_FILE
        atomic_write_json(path, self.to_dict())
        return path


_ACTIVE: SweepRecord | None = None


def set_active_record(record: SweepRecord | None) -> None:
    """Called by reparam's sweepers in the launching process: the record the end-of-sweep callback prints."""
    global _ACTIVE
    _ACTIVE = record


def active_record() -> SweepRecord | None:
    return _ACTIVE


def reproducing_overrides(overrides: list[str]) -> list[str]:
    """A job's overrides without those that only say how the sweep ran (search preset, sweeper, launcher, dirs)."""
    return [o for o in overrides if not o.lstrip("+~").startswith(_SWEEP_ONLY)]


def rank_runs(runs: list[Any], metric: str | None) -> list[Any]:
    """Best ``summary[metric]`` first (higher or lower, as ``SUMMARY_METRICS`` says); runs without the value
    (failed, interrupted, or not measured) last; job order when no metric is named. ``runs`` are
    :class:`SweepRun` or dicts with a ``summary``."""
    if not metric:
        return list(runs)
    sign = -1.0 if SUMMARY_METRICS.get(metric, "max") == "max" else 1.0

    def key(run: Any) -> tuple[bool, float]:
        summary = run.summary if isinstance(run, SweepRun) else run["summary"]
        value = None if isinstance(run, SweepRun) and run.status in ("failed", "interrupted") else summary.get(metric)
        return value is None, sign * (value or 0.0)

    return sorted(runs, key=key)


class SweepSummary(Callback):
    """Prints the record of a multirun when it ends (see the module docstring) and exits 1 if a job failed."""

    def __init__(self) -> None:
        self.jobs: list[SweepRun] = []
        self.launching_pid = os.getpid()  # travels with this object when submitit pickles it for a job

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.jobs = []
        set_active_record(None)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or os.getpid() != self.launching_pid:
            return  # a job in a process of its own (submitit): the launcher returns it to the sweeper
        run = SweepRun.from_job(job_return)
        record = active_record()
        if record is not None:  # reparam's sweepers: on disk now, their own row when the batch returns
            record.pending.append(run)
            record.write()
        else:  # a sweeper that keeps no record (hydra/sweeper=basic)
            self.jobs.append(run)
            SweepRecord(str(config.hydra.sweep.dir), config.get("optimized_metric"), self.jobs).write()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        record = active_record()
        if record is None:
            if not self.jobs:
                return
            record = SweepRecord(str(config.hydra.sweep.dir), config.get("optimized_metric"), self.jobs)
        path = record.write()
        print_sweep_summary(record)
        console.print(f"sweep summary: {path}", soft_wrap=True, markup=False)
        command, best = record.reproduce_command(), record.best()
        if command and best is not None:
            console.print(f"best run (job {best.job}), to reproduce it: {command}", soft_wrap=True, markup=False)
        failed = record.failed()
        if failed:
            first = failed[0]
            print(
                f"error: {len(failed)} of {len(record.runs)} sweep jobs failed (job {first.job}: {first.error}); "
                f"see {path}",
                file=sys.stderr,
                flush=True,
            )
            # Hydra turns a callback's exceptions into warnings; SystemExit is no Exception and ends the process
            raise SystemExit(1)


def print_sweep_summary(record: SweepRecord) -> None:
    kind = "search" if record.study else "sweep"
    runs = record.ranked()
    if record.stopped is None:
        stopped = ""
    elif "not_done" in record.stopped:  # a grid: the jobs it did not start
        stopped = f", stopped before {len(record.stopped['not_done'])} more"
    else:  # a search: the trials counted towards n_trials
        stopped = f", stopped with {record.stopped['done']} of {record.stopped['trials']} trials done"
    # run directories named <sweep dir>/<job> (every launcher's default) are said once, below the table
    in_sweep_dir = all(Path(run.run_dir) == Path(record.sweep_dir) / str(run.job) for run in runs)
    table = Table(
        title=f"reparam: {kind} of {len(runs)} run{'' if len(runs) == 1 else 's'}{stopped} "
        f"(sorted by {record.optimized_metric or 'job'})",
        title_justify="left",
        caption=f"run directories: {record.sweep_dir}/<job>" if in_sweep_dir else None,
        caption_justify="left",
    )
    # the value column only where the metric is not one of the columns shown anyway
    shown = {"best_val_acc", "test_acc", "fusion_argmax_agreement"}
    value_column = [] if record.optimized_metric in shown else [record.optimized_metric or "value"]
    columns = (
        "job",
        "params" if record.study else "overrides",
        "status",
        *value_column,
        "best val\nacc",
        "test\nacc",
        "fused\nargmax\nagreement",
        "time",
        *([] if in_sweep_dir else ["run dir"]),
    )
    # the run directory is the row's last cell: cut off where it is said below the table
    rows = [_sweep_row(record, run, bool(value_column))[: len(columns)] for run in runs]
    for i, column in enumerate(columns):
        if column in ("params", "overrides", "status", "run dir"):  # words and paths fold where the width ends
            table.add_column(column, overflow="fold", min_width=6 if column == "status" else 10)
        else:  # numbers never break inside: the column keeps its widest cell's width
            widest = max((len(row[i]) for row in rows), default=1)
            table.add_column(column, no_wrap=True, min_width=widest, justify="right")
    for row in rows:  # overrides hold brackets ('imports=[my_blocks]') that rich would read as markup
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)


def print_stopped_sweep(record: SweepRecord, jobs: list[list[str]], swept: list[str], typed: list[str]) -> None:
    """What a grid sweep stopped part way (Ctrl-C, SIGTERM, a crash) did: the table of the jobs that ended, the
    jobs that did not, each by what the sweep varied, and the command that continues the sweep (``typed``: the
    sweep's command-line overrides, Hydra's included)."""
    done = {run.job for run in record.ranked()}
    left = [i for i in range(len(jobs)) if i not in done]
    if left:
        record.stopped = {"jobs": len(jobs), "not_done": left}
    if done:
        print_sweep_summary(record)
        console.print(f"sweep summary: {record.write()}", soft_wrap=True, markup=False)
    if not left:
        return
    shown = [f"job {i} ({' '.join(o for o in jobs[i] if o.partition('=')[0] in swept) or '-'})" for i in left[:10]]
    more = f" and {len(left) - 10} more" if len(left) > 10 else ""
    command = continue_command(typed, ["auto_resume=true", f"hydra.sweep.dir={record.sweep_dir}"])
    print(
        f"the sweep stopped with {len(done)} of {len(jobs)} jobs done; not done: {', '.join(shown)}{more}. "
        f"Continue it with: {command}",
        file=sys.stderr,
        flush=True,
    )


def continue_command(typed: Sequence[str], settings: list[str]) -> str:
    """``python train.py -m`` with a stopped sweep's overrides as typed (``typed``, Hydra's included), each of
    ``settings`` (``key=value``) put in place of the typed one with its key."""
    keys = tuple(setting.partition("=")[0] + "=" for setting in settings)
    kept = [o for o in typed if not o.startswith(keys)]
    return " ".join(["python train.py -m", *map(shlex.quote, [*kept, *settings])])


def done_runs(sweep_dir: Path, jobs: list[list[str]]) -> dict[int, SweepRun]:
    """The jobs of the grid sweep in ``sweep_dir`` that ended ok, by job number, from its ``sweep_summary.json``
    (none without one). A sweep there that ran other jobs (other overrides) is refused: continuing it would mix two
    sweeps in one table."""
    path = sweep_dir / SWEEP_SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        runs = json.loads(path.read_text())["runs"]
        previous = [SweepRun(**{f.name: run[f.name] for f in dataclasses.fields(SweepRun)}) for run in runs]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} cannot be read ({err}); continue the sweep in another hydra.sweep.dir") from err

    def same(overrides: list[str]) -> list[str]:
        return sorted(o for o in overrides if not o.startswith("auto_resume="))

    for run in previous:
        if run.job >= len(jobs) or same(run.overrides) != same(jobs[run.job]):
            expected = " ".join(jobs[run.job]) if run.job < len(jobs) else "none"
            raise UserError(
                f"{sweep_dir} holds another sweep: its job {run.job} ran {' '.join(run.overrides)}, this one's is "
                f"{expected}; continue it with the same overrides, or choose another hydra.sweep.dir"
            )
    return {run.job: run for run in previous if run.status == "ok"}


def _sweep_row(record: SweepRecord, run: SweepRun, with_value: bool) -> tuple[str, ...]:
    """One row of the sweep table, as text."""
    s = run.summary
    # sampled floats shortened for reading; sweep_summary.json and the reproducing command keep every digit
    varied = (
        " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in run.params.items())
        if record.study
        else " ".join(run.overrides)
    )
    status = f"{run.status}: {run.error}" if run.error else run.status
    value = [text(run.value if run.value is None else f"{run.value:.6g}")] if with_value else []
    return (
        text(run.job),
        varied or "-",
        status,
        *value,
        pct(s.get("best_val_acc")),
        pct(s.get("test_acc")),
        pct(s.get("fusion_argmax_agreement")),
        seconds(run.duration_s),
        run.run_dir,
    )
