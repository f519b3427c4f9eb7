"""reparam's Hydra sweeper plugins (Hydra loads sweepers only from the ``hydra_plugins`` namespace package).

Both record what the launcher returns for every job in the launching process (``reparam.sweep.SweepRecord``), so the
end-of-sweep table holds every job whichever launcher ran them. Heavy imports (reparam, Optuna) wait for ``sweep()``:
Hydra imports this module at the start of every run.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

__all__ = ["FailTolerantSweeper", "OptunaSearchSweeper", "job_batches", "one_copy_of_submitit_lines"]


def job_batches(overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
    """The jobs of a grid sweep in Hydra's basic-sweeper order (the cartesian product, last key varying fastest),
    in batches of ``max_batch_size`` jobs (one batch when None)."""
    choices: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():  # as typed (auto_resume=true, not Hydra's auto_resume=True)
            choices[key] = [override.input_line or f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise HydraException(
                f"{key}: a grid sweep takes lists and ranges, not an interval (hparams_search=... does)"
            )
    jobs = [list(job) for job in itertools.product(*choices.values())]
    if max_batch_size is not None and max_batch_size < 1:
        raise HydraException(f"hydra.sweeper.max_batch_size must be at least 1, not {max_batch_size}")
    size = max_batch_size or max(len(jobs), 1)
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def one_copy_of_submitit_lines() -> None:
    """submitit's logging config (run at its first import) sends a warning to stdout and to stderr, and the root
    logger's console handler printed it a third time: a sweep on SLURM without accounting printed each "Bypassing
    sacct error" line three times. Warnings now go to stderr once, the rest to stdout once."""
    import logging

    import submitit  # noqa: F401  # its logging config, before it is changed here

    logger = logging.getLogger("submitit")
    logger.propagate = False
    for handler in logger.handlers:
        if handler.level < logging.WARNING:  # submitit's stdout handler
            handler.addFilter(lambda record: record.levelno < logging.WARNING)


class _LaunchingSweeper(Sweeper):
    """What both sweepers share: the launcher Hydra configured, built in ``setup``, and an overrides parser."""

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        """The sweep (``_sweep``); a user error of the sweep itself (the study, the launcher's settings) ends it with
        one ``error:`` line and exit 2, as a job's does (jobs' own errors stay inside their jobs)."""
        from reparam.errors import UserError

        if "submitit" in type(self.launcher).__module__ or "reparam_launcher" in type(self.launcher).__module__:
            one_copy_of_submitit_lines()
        try:
            return self._sweep(arguments)
        except UserError as err:
            print(f"error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
            sys.exit(err.exit_code)
        except Exception as err:
            if not _launch_failure(err):
                raise
            print(f"error: {_launch_failure_line(err)}", file=sys.stderr, flush=True)
            sys.exit(2)

    def _sweep(self, arguments: list[str]) -> Any:
        raise NotImplementedError

    def _set_up(self) -> tuple[DictConfig, Launcher, OverridesParser]:
        """The config, the launcher and an overrides parser (``setup()`` ran: Hydra calls it before ``sweep``)."""
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        return self.config, self.launcher, OverridesParser.create(config_loader=self.hydra_context.config_loader)


class FailTolerantSweeper(_LaunchingSweeper):
    """A grid sweep like Hydra's basic sweeper without its re-raise of the first failed job: every job runs, the
    sweep ends normally. Built on Hydra's public ``Sweeper`` plugin interface (its basic sweeper is internal)."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = params or {}

    def _sweep(self, arguments: list[str]) -> Any:
        from reparam.sweep import SweepRecord, SweepRun, done_runs, print_stopped_sweep, set_active_record

        config, launcher, parser = self._set_up()
        configured = [f"{key}={value}" for key, value in self.params.items()]
        overrides = parser.parse_overrides([*configured, *arguments])
        swept = [o.get_key_element() for o in overrides if o.is_sweep_override()]
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        batches = job_batches(overrides, self.max_batch_size)
        jobs = [job for batch in batches for job in batch]
        # auto_resume=true in a sweep directory that has a record: a stopped sweep goes on; its jobs that ended ok
        # are kept, the interrupted one resumes from its last.ckpt, the others run
        done = done_runs(sweep_dir, jobs) if config.get("auto_resume") is True else {}
        OmegaConf.save(config, sweep_dir / "multirun.yaml")
        record = SweepRecord(str(sweep_dir), config.get("optimized_metric"))
        if done:
            record.add_batch(list(done.values()))
            print(f"continuing the sweep in {sweep_dir}: {len(done)} of {len(jobs)} jobs done before", flush=True)
        set_active_record(record)
        returns, first = [], 0
        try:
            for batch in batches:
                self.validate_batch_is_legal(batch)
                for start, segment in _not_done(batch, first, done):
                    results = launcher.launch(segment, initial_job_idx=start)
                    runs = [SweepRun.from_job(result) for result in results]
                    for run in runs:
                        run.params = {k: v for o in run.overrides for k, _, v in [o.partition("=")] if k in swept}
                    record.add_batch(runs)  # on disk after every batch: it survives whatever happens to the sweep
                    returns.append(results)
                first += len(batch)
        except BaseException as err:  # Ctrl-C, SIGTERM, a crash: what ended and what did not, as a sweep's end does
            if record.ranked() or not _launch_failure(err):  # a launcher that ran nothing: its error line says why
                with contextlib.suppress(Exception):
                    print_stopped_sweep(record, jobs, swept, _command_line(config, arguments))
            raise
        return returns


def _command_line(config: DictConfig, arguments: list[str]) -> list[str]:
    """The sweep's command-line overrides as typed: Hydra's own (``hydra/launcher=...``, ``hydra.sweep.dir=...``)
    and the task's (``arguments``), for a command that continues the sweep."""
    typed = [str(o) for o in config.hydra.overrides.hydra if not str(o).startswith("hydra.mode=")]
    return [*typed, *arguments]


def _launch_failure(err: BaseException) -> bool:
    """Whether ``err`` is submitit's: a job it could not submit (sbatch refused it) or that ended outside its own
    code (killed, out of memory, lost by the scheduler). A job's own errors come back as failed jobs instead."""
    try:
        from submitit.core.utils import UncompletedJobError
    except ImportError:  # no submitit: no submitit launcher ran
        return False
    return isinstance(err, UncompletedJobError)


def _launch_failure_line(err: BaseException) -> str:
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    if "sbatch" in first:
        return (
            f"SLURM refused the sweep's jobs ({first}); check hydra.launcher.partition, gpus_per_node, cpus_per_task, "
            "mem_gb and timeout_min against the cluster (sinfo); on one without GPUs: hydra.launcher.gpus_per_node=0"
        )
    return f"a job of the sweep ended outside its own code ({first[:300]}); its logs are in the sweep's .submitit/"


def _not_done(batch: list[list[str]], first: int, done: dict[int, Any]) -> list[tuple[int, list[list[str]]]]:
    """The runs of consecutive jobs of ``batch`` (numbered from ``first``) not in ``done``: (first job, jobs)."""
    segments: list[tuple[int, list[list[str]]]] = []
    for i, job in enumerate(batch, start=first):
        if i in done:
            continue
        if segments and segments[-1][0] + len(segments[-1][1]) == i:
            segments[-1][1].append(job)
        else:
            segments.append((i, [job]))
    return segments


class OptunaSearchSweeper(_LaunchingSweeper):
    """An Optuna (>= 4) search through any Hydra launcher: ask a batch of ``n_jobs`` trials, launch them, tell the
    study each result (value, failed or pruned). Settings: the ``hparams_search`` node (``reparam.search``)."""

    def __init__(self, params: DictConfig | None = None) -> None:
        super().__init__()
        self.params: DictConfig | dict[str, Any] = params or {}

    def _sweep(self, arguments: list[str]) -> Any:
        from reparam.search import run_search

        config, launcher, parser = self._set_up()
        configured = [f"{key!s}={value}" for key, value in self.params.items()]
        overrides = parser.parse_overrides([*configured, *arguments])
        return run_search(config, launcher, overrides, _command_line(config, arguments))
