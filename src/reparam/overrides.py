"""A hint after Hydra refuses a command line: which override names a setting the config does not have, and the
setting it most likely meant.

Hydra answers a misspelled key (``trainer.max_epoch`` for ``trainer.max_epochs``) with "Could not override ...
To append to your config use +...", which would add a setting nothing reads (or make the Trainer fail later). The
entry points wrap Hydra's ``main`` in :func:`override_hints`: when Hydra exits with its error (code 1), the overrides
are checked against the config composed with the command line's own config group choices, and each unknown key gets
one line naming the closest setting (``difflib``, over the node's keys and its ``_target_``'s arguments), or the
settings that node has.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["override_hints", "unknown_key_hints"]

# Hydra's own flags that name another config: the hints would check the wrong one
_OTHER_CONFIG_FLAGS = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir")
_ABSENT = object()


def unknown_key_hints(config_dir: Path, config_name: str, args: Sequence[str]) -> list[str]:
    """One line per override (of ``args``, a command line after the script) whose key the config lacks."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if any(a.split("=", 1)[0] in _OTHER_CONFIG_FLAGS for a in args):
        return []
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except OverrideParseException:  # a syntax error: Hydra's own message says where
        return []
    groups, values, added = [], [], []
    for o in overrides:
        key = o.key_or_group
        if key.startswith("hydra") or o.package is not None:
            continue
        if "." not in key and (config_dir / key).is_dir():
            try:
                choice = next(iter(o.sweep_string_iterator())) if o.is_sweep_override() else _line(o).split("=", 1)[1]
            except HydraException:  # a glob(...) of options: only Hydra's config loader can expand it
                return []
            groups.append(f"{_line(o).split('=', 1)[0]}={choice}")
        elif o.type == OverrideType.CHANGE:
            values.append(o)
        else:
            added.append(key)
    if not values:
        return []
    GlobalHydra.instance().clear()  # the failed hydra.main may have left its instance
    try:
        with initialize_config_dir(str(config_dir.resolve()), version_base="1.3", job_name="override_hints"):
            cfg = compose(config_name, overrides=groups)
    except (HydraException, OmegaConfBaseException):  # e.g. a group choice that does not exist: Hydra lists them
        return []
    finally:
        GlobalHydra.instance().clear()
    hints = []
    for o in values:
        key = o.key_or_group
        if any(key == a or key.startswith(a + ".") for a in added):
            continue
        if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False) is not _ABSENT:
            continue
        parts = key.split(".")
        parent, depth = cfg, 0
        while depth < len(parts) - 1:
            child = parent.get(parts[depth]) if isinstance(parent, DictConfig) else None
            if not isinstance(child, DictConfig):
                break
            parent, depth = child, depth + 1
        if not isinstance(parent, DictConfig):
            continue
        where = ".".join(parts[:depth]) or "the config"
        missing, value = parts[depth], _line(o).split("=", 1)[1]
        keys = [str(k) for k in parent.keys()]
        # the key exists (a value still ??? included), what is under it does not (a list index): Hydra's message says
        if missing in keys:
            continue
        names = [k for k in keys if not k.startswith("_")]
        target = parent.get("_target_") or _ARGUMENTS_OF.get((config_name, where))
        arguments = _target_arguments(target, parent)
        added_path = ".".join([*parts[:depth], "{}", *parts[depth + 1 :]])
        if missing in arguments:  # an argument of the node's _target_ the config does not set: Hydra's "+" is right
            hints.append(
                f"hint: {where} does not set '{missing}', an argument of {target}: add it with "
                f"+{added_path.format(missing)}={value}"
            )
            continue
        if not names and not arguments:  # a free-form mapping left empty ({}), e.g. model.block_options
            hints.append(f"hint: {where} holds no settings yet: add it with +{added_path.format(missing)}={value}")
            continue
        close = difflib.get_close_matches(missing, names + [a for a in arguments if a not in names], n=1, cutoff=0.6)
        if close:
            plus = "" if close[0] in names else "+"
            hints.append(
                f"hint: {where} has no setting '{missing}': did you mean {plus}{added_path.format(close[0])}={value} ?"
            )
        else:
            shown = ", ".join(names[:15]) + (", ..." if len(names) > 15 else "")
            unset = set(arguments) - set(names)
            more = f"; other arguments of {target} are added with +{where}.<name>=..." if unset else ""
            hints.append(f"hint: {where} has no setting '{missing}' (its settings: {shown}{more})")
    return hints


def _line(override) -> str:  # noqa: ANN001
    return override.input_line or ""


# nodes without a _target_ whose keys are another's arguments: deploy.py's data.* go to the training run's datamodule
_ARGUMENTS_OF = {("deploy", "data"): "reparam.data.ImageDataModule"}


def _target_arguments(target, node) -> list[str]:  # noqa: ANN001
    """The keyword arguments ``target`` accepts for ``node`` (none when there is no target or it cannot be imported).
    A target with ``config_arguments(dataset)`` says them itself (the datamodule: those of the node's dataset)."""
    import inspect

    from hydra.utils import get_method

    if not isinstance(target, str):
        return []
    try:
        owner = get_method(target)
        own = getattr(owner, "config_arguments", None)
        if callable(own):
            return list(own(node.get("dataset")))
        parameters = inspect.signature(owner).parameters.values()
    except (ImportError, ValueError, TypeError):
        return []
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in keyword and p.name != "self"]


@contextmanager
def override_hints(config_dir: Path, config_name: str) -> Iterator[None]:
    """Around a Hydra ``main()``: after Hydra's own error (exit code 1), print a hint for each unknown key."""
    try:
        yield
    except SystemExit as stop:
        if stop.code == 1:
            try:
                hints = unknown_key_hints(config_dir, config_name, sys.argv[1:])
            except Exception:  # noqa: BLE001 - a hint must never hide Hydra's message or change the exit code
                hints = []
            if hints:
                print("\n".join(hints), file=sys.stderr)
        raise
