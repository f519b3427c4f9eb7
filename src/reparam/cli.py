"""The one place user errors become one clear line and a non-zero exit, for both entry points."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from lightning.fabric.utilities.exceptions import MisconfigurationException

from .blocks import FormMismatchError
from .convert import EquivalenceError
from .errors import UserError

__all__ = ["guarded", "find_user_error", "EXIT_USER_ERROR"]

EXIT_USER_ERROR = 2
USER_ERRORS = (UserError, FormMismatchError, EquivalenceError, MisconfigurationException)
T = TypeVar("T")


def find_user_error(err: BaseException) -> BaseException | None:
    """The user error behind ``err``, looking through wrappers such as Hydra's InstantiationException."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, USER_ERRORS):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, MisconfigurationException):
        text = f"invalid trainer settings: {text} (check trainer.accelerator / trainer.devices; trainer=cpu runs anywhere)"
    elif isinstance(err, EquivalenceError):
        text = f"fused model failed verification: {text}"
    return text


def guarded(main: Callable[..., T]) -> Callable[..., T]:
    """Run ``main``; print a user error as ``error: ...`` on stderr and exit 2, without a traceback.

    Set ``REPARAM_DEBUG=1`` to get the full traceback instead. Bugs (anything else) keep theirs.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            user_error = find_user_error(err)
            if user_error is None or os.environ.get("REPARAM_DEBUG"):
                raise
            print(f"error: {_one_line(user_error)}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
