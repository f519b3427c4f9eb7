"""The user's own modules, imported before anything is built: ``imports=[my_blocks]`` on any entry point.

A block kind (``reparam.register_block``), a deploy target (``reparam.deploy.register_target``) or a dataset source
registered in one's own file exists only once that file is imported; ``train.py`` / ``deploy.py`` / ``serve.py`` (and
every job of a ``-m`` sweep, every DDP process) import the modules named here first. A name is a module on the path
(the current directory included, as ``python -m`` has it) or a ``.py`` file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from .errors import UserError

__all__ = ["import_user_modules"]


def import_user_modules(names: Iterable[str] | None) -> list[ModuleType]:
    """Import each of ``names`` (module names or ``.py`` files), in order; a failure is one :class:`UserError`."""
    modules = []
    for name in names or []:
        name = str(name)
        try:
            modules.append(_import_file(Path(name)) if name.endswith(".py") else _import_module(name))
        except UserError:
            raise
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(f"{err.name}.")):
                raise _failed(name, err) from err  # the user's module imports something missing
            raise UserError(
                f"imports: no module '{name}' here (looked in the current directory {os.getcwd()} and on "
                f"PYTHONPATH); name a module, as imports=[my_blocks] for my_blocks.py, or a file, as "
                f"imports=[path/to/my_blocks.py]"
            ) from err
        except Exception as err:  # noqa: BLE001 - anything the user's module raises while importing
            raise _failed(name, err) from err
    return modules


def _failed(name: str, err: BaseException) -> UserError:
    detail = " ".join(str(err).split()) or type(err).__name__
    return UserError(f"imports: importing '{name}' failed: {type(err).__name__}: {detail}")


def _import_module(name: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` has it; scripts get their own folder instead
    return importlib.import_module(name)


def _import_file(path: Path) -> ModuleType:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise UserError(f"imports: {path} does not exist; name a .py file or a module (imports=[my_blocks])")
    name = f"reparam_user_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py file always gets a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
