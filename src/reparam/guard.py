"""The one place user errors become one clear line and a non-zero exit, for both entry points.

A single run exits at once (2 for a user error, 143 after SIGTERM, 130 after Ctrl-C). Inside a ``-m`` sweep the error
instead ends only its own job: the line is printed, the job's ``summary.json`` says ``failed``, and :class:`JobFailed`
tells Hydra the job failed, so the sweep (or search: a failed trial) goes on; the sweep summary ends the process
non-zero once every job has run. Ctrl-C and SIGTERM end the whole sweep at once (in a job that submitit's local
executor runs in a process of its own, they fail that job alone), and so does a console that went
away (the reader of a pipe the output went to exited: exit 141, as SIGPIPE would; the run's log file keeps the rest),
instead of failing every remaining job on its first write.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import MissingMandatoryValue

from .blocks import FormMismatchError
from .convert import EquivalenceError
from .errors import EXIT_SIGINT, EXIT_SIGPIPE, EXIT_USER_ERROR, Stopped, UserError

__all__ = ["guarded", "find_user_error", "JobFailed", "EXIT_USER_ERROR"]

USER_ERRORS = (UserError, FormMismatchError, EquivalenceError, MisconfigurationException)
T = TypeVar("T")


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    """``err``, then the exceptions it was raised from or while handling (``__cause__``, else ``__context__``)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        yield err
        seen.add(id(err))
        err = err.__cause__ or err.__context__


# what a setting the configs leave for the user (``???``) takes, said when it was not given
REQUIRED_VALUES = {"data.data_dir": "<folder holding train/<class>/<images>>"}


def find_user_error(err: BaseException | None) -> BaseException | None:
    """The user error behind ``err``, looking through wrappers such as Hydra's InstantiationException; a setting
    left ``???`` (the user's to give: ``data.data_dir`` with ``data=imagefolder``) is one too."""
    chain = list(_chain(err))
    found = next((e for e in chain if isinstance(e, USER_ERRORS)), None)
    missing = next((e for e in chain if isinstance(e, MissingMandatoryValue)), None)
    if found is None and missing is not None:
        key = str(getattr(missing, "full_key", "") or "") or "a required setting"
        found = UserError(
            f"{key} has no value and this command needs one: add {key}={REQUIRED_VALUES.get(key, '<value>')}"
        )
    if found is None:
        found = _disk_full(chain)
    if found is None:
        found = _tracking_store_refused(chain)
    return found


def _tracking_store_refused(chain: list[BaseException]) -> UserError | None:
    """MLflow refusing the store a user named (``logger.mlflow.tracking_uri=file:./mlruns``: MLflow 3 keeps the file
    store in maintenance mode and raises), as one line instead of a traceback."""
    refused = next((e for e in chain if type(e).__name__ == "MlflowException"), None)
    if refused is None:
        return None
    reason = " ".join(str(getattr(refused, "message", refused)).split())
    return UserError(
        f"logger=mlflow: MLflow refused the tracking store: {reason} (the default, a SQLite file, needs no server: "
        "logger.mlflow.tracking_uri=sqlite:///<folder>/mlflow.db)"
    )


# what torch's zip writer (torch.save, checkpoints, .pt2) says when a write comes short: the disk filled up
_SHORT_WRITE = ("unexpected pos", "file write failed", "No space left on device")


def _disk_full(chain: list[BaseException]) -> UserError | None:
    """A write that failed for lack of space, as one line saying so and how much is free (deploy ended in torch's
    ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ...`` on a full disk)."""
    if any(isinstance(e, RuntimeError) and "unable to write to file </torch_" in str(e) for e in chain):
        # DataLoader workers hand batches over in shared memory
        return UserError(
            "shared memory (/dev/shm) is full: DataLoader workers pass batches through it; use fewer workers or "
            "smaller batches (data.num_workers=0, data.batch_size=...), or give the container more (docker "
            "--shm-size=8g)"
        )
    full = any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in chain)
    short = any(isinstance(e, RuntimeError) and any(s in str(e) for s in _SHORT_WRITE) for e in chain)
    if not (full or short):
        return None
    folder = _written_folder(chain)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    room = f" ({free / 2**20:.0f} MB free in {folder})" if free is not None else ""
    cause = "the disk is full" if full else "a file could not be written whole: the disk is likely full"
    return UserError(
        f"{cause}{room}; free some space, or write elsewhere (hydra.run.dir=<folder on a larger disk>), and run again"
    )


def _written_folder(chain: list[BaseException]) -> str:
    """Where the failed write went: the file an OSError names, else the run's output folder (which Hydra's
    ``hydra.run.dir`` can put on another disk than the working directory), else the working directory."""
    from hydra.core.hydra_config import HydraConfig

    named = next((e.filename for e in chain if isinstance(e, OSError) and isinstance(e.filename, str)), None)
    if named is None and HydraConfig.initialized():
        named = HydraConfig.get().runtime.output_dir
    path = os.path.abspath(named or os.getcwd())
    while not os.path.isdir(path) and os.path.dirname(path) != path:  # a file, or a folder not made yet
        path = os.path.dirname(path)
    return path


def console_lost(err: BaseException | None) -> bool:
    """``err`` is, or came from, a write to a pipe whose reader exited (``| head``, a killed ``tee`` or parent)."""
    return any(isinstance(e, BrokenPipeError) for e in _chain(err))


def _detach_console() -> None:
    """Point stdout and stderr at /dev/null, so nothing more (not even the interpreter's last flush) writes to the
    closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):  # no file descriptor (replaced by a wrapper): nothing of ours to redirect
            pass
    os.close(devnull)


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, MisconfigurationException):
        text = (
            f"invalid trainer settings: {text} (check trainer.accelerator / trainer.devices; trainer=cpu runs anywhere"
            "; DDP without GPUs: trainer=ddp_sim, processes on the CPU)"
        )
    elif isinstance(err, EquivalenceError):
        text = f"fused model failed verification: {text.removeprefix('fused model differs from the reference: ')}"
    return text


# Messages that say nothing about the user's run: a deprecation inside Lightning's own code, and advertisements.
_NOISE_WARNINGS = [r"`isinstance\(treespec, LeafSpec\)` is deprecated"]
_NOISE_LOG_PREFIXES = ("\N{ELECTRIC LIGHT BULB} Tip:",)


def quiet_known_noise() -> None:
    """Silence messages a user reads as a problem but can do nothing about (real warnings stay)."""
    for pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropPrefixes) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropPrefixes(_NOISE_LOG_PREFIXES))


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def _say(line: str) -> None:
    """The one ``error:`` line, on stderr and in the run's log file (``train.log`` / ``deploy.log``)."""
    logging.getLogger("reparam.file").error(f"error: {line}")
    try:
        print(f"error: {line}", file=sys.stderr, flush=True)
    except OSError:  # the console went away: the log file has the line, and what follows (an exit) must still happen
        _detach_console()


CONSOLE_CLOSED = (
    "stopped: the console this run wrote to was closed (the reader of its output pipe exited); the log file "
    "beside the run has everything until then"
)


def _end_without_console() -> None:
    """The output pipe's reader exited: stop the run (in a sweep, the whole sweep) as SIGPIPE would, saying why in the
    log file and, in a sweep, in the job's ``summary.json`` (``interrupted``: checkpoints allow resuming)."""
    line = CONSOLE_CLOSED
    logging.getLogger("reparam.file").error(f"error: {line}")
    job_dir = _multirun_output_dir()
    if job_dir is not None:
        _write_job_summary(job_dir, "interrupted", line)
    sys.exit(EXIT_SIGPIPE)


def _write_job_summary(job_dir: str, status: str, error: str) -> None:
    """A sweep job's ``summary.json`` for a run that ended before training could write one (training writes its own,
    with the epochs and checkpoints it got to: kept)."""
    from pathlib import Path

    from .artifact import atomic_write_json
    from .run_summary import SUMMARY_FILE, TrainSummary

    written = TrainSummary.read(Path(job_dir) / SUMMARY_FILE)
    if written is not None and (written.status, written.error) == (status, error):
        return
    atomic_write_json(Path(job_dir) / SUMMARY_FILE, TrainSummary(status, job_dir, error=error).to_dict())


class JobFailed(Exception):
    """One job of a ``-m`` sweep failed with a user error (already printed); Hydra records it as FAILED."""


def _multirun_output_dir() -> str | None:
    """This job's directory when running inside a Hydra multirun, else ``None``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    config = HydraConfig.get()
    return config.runtime.output_dir if config.mode == RunMode.MULTIRUN else None


def _stops_this_job_alone() -> bool:
    """Whether a Ctrl-C or SIGTERM ends only this job: one that submitit's local executor runs in a process of its own
    (``hydra/launcher=local``, ``submitit_local``). It fails like any job, so submitit hands the sweep a result (an exit
    without one ended the sweep, and a search lost the batch's completed trials); the sweep's own process, if it was
    stopped too, ends the sweep. Not a SLURM job: SLURM's own requeue (preemption) sends the same SIGTERM, and the
    requeued job gives the result."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "local"


def guarded(main: Callable[..., T]) -> Callable[..., T]:
    """Run ``main``; print a user error as ``error: ...`` on stderr and exit with its code, without a traceback.

    In a multirun the job fails instead of the process (see the module docstring). Set ``REPARAM_DEBUG=1`` to get the
    full traceback. Bugs (anything else) keep theirs.
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        quiet_known_noise()
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:  # Ctrl-C outside training (which says more: reparam.training)
            if os.environ.get("REPARAM_DEBUG"):
                raise
            _say(
                "stopped by Ctrl-C before it finished; run the same command again (results are written atomically: "
                "nothing half-written was left)"
            )
            sys.exit(EXIT_SIGINT)
        except Exception as err:  # noqa: BLE001
            if console_lost(err) and not os.environ.get("REPARAM_DEBUG"):
                _detach_console()
                _end_without_console()
            user_error = find_user_error(err)
            if user_error is None or os.environ.get("REPARAM_DEBUG"):
                raise
            line = one_line(user_error)
            _say(line)
            job_dir = _multirun_output_dir()
            if job_dir is None or (isinstance(user_error, Stopped) and not _stops_this_job_alone()):
                sys.exit(getattr(user_error, "exit_code", EXIT_USER_ERROR))  # Ctrl-C / SIGTERM end a whole sweep
            _write_job_summary(job_dir, "interrupted" if isinstance(user_error, Stopped) else "failed", line)
            raise JobFailed(line) from None

    return wrapper
