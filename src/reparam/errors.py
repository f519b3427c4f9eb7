"""User-facing errors: one clear line (or paragraph) that says what is wrong and how to fix it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "UserError",
    "DataNotFoundError",
    "Stopped",
    "Preempted",
    "Interrupted",
    "reraise_as_user_error",
    "EXIT_USER_ERROR",
    "EXIT_SIGTERM",
    "EXIT_SIGINT",
    "EXIT_SIGPIPE",
]

EXIT_USER_ERROR = 2
EXIT_SIGTERM = 143  # 128 + SIGTERM: what schedulers (SLURM) and Lightning expect from a terminated job
EXIT_SIGINT = 130  # 128 + SIGINT: what shells expect after Ctrl-C
EXIT_SIGPIPE = 141  # 128 + SIGPIPE: what a shell reports when a process's output pipe was closed by its reader


class UserError(Exception):
    """A mistake in the input (config, path, file) rather than a bug; shown without a traceback."""

    exit_code = EXIT_USER_ERROR


class Stopped(UserError):
    """The process was told to stop; it ends the whole process, a ``-m`` sweep included."""


class Preempted(Stopped):
    """The run received SIGTERM (preemption, scancel, timeout); checkpoints allow resuming."""

    exit_code = EXIT_SIGTERM


class Interrupted(Stopped):
    """The user pressed Ctrl-C (SIGINT); checkpoints allow resuming."""

    exit_code = EXIT_SIGINT


class DataNotFoundError(UserError):
    """The dataset is not where the config says it is."""


@contextmanager
def reraise_as_user_error(context: str, *types: type[BaseException]) -> Iterator[None]:
    """Turn validation errors raised while building ``context`` into a :class:`UserError`."""
    catch = types or (ValueError,)
    try:
        yield
    except UserError:
        raise
    except catch as err:
        raise UserError(f"{context}: {err}") from err
