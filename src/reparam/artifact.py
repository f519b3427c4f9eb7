"""The fused artifact: a folder holding ``model.safetensors``, ``config.json`` and ``verification.json``.

Written atomically: everything goes into a hidden temporary folder beside the target, is flushed to
disk, and only then renamed into place, so a crash leaves either the previous artifact or none,
never a partial one. Read back with safetensors and JSON only: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .blocks import FormMismatchError
from .errors import UserError
from .models import RepVGG, build_model

__all__ = ["FORMAT", "FORMAT_VERSION", "FusedArtifact", "write_fused_artifact", "read_fused_artifact", "atomic_write_text",
           "atomic_write_json", "update_fused_metrics"]

FORMAT = "reparam.fused"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, VERIFICATION = "model.safetensors", "config.json", "verification.json"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def atomic_write_json(path: str | Path, obj: dict) -> Path:
    """Write ``obj`` as indented JSON to ``path`` through a temporary file and a rename."""
    return atomic_write_text(path, _json(obj))


def write_fused_artifact(directory: str | Path, fused: torch.nn.Module, config: dict, verification: dict) -> Path:
    """Write a fused model as an artifact folder, atomically; replaces an existing one at ``directory``.

    ``config`` must hold ``model`` (the spec ``build_model`` takes); ``format``/``format_version``/``form``
    are added here.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if "model" not in config:
        raise ValueError("config needs a 'model' entry (the spec build_model takes)")
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "form": "fused", **config}
    state = {k: v.detach().to("cpu").contiguous() for k, v in fused.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file(state, tmp / WEIGHTS, metadata={"format": FORMAT, "form": "fused", "format_version": str(FORMAT_VERSION)})
        for name, obj in ((CONFIG, config), (VERIFICATION, verification)):
            (tmp / name).write_text(_json(obj))
        for name in (WEIGHTS, CONFIG, VERIFICATION):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{time.time_ns()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        _fsync_dir(directory.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def update_fused_metrics(directory: str | Path, metrics: dict) -> None:
    """Add metrics measured after fusing (e.g. the test accuracy) to ``config.json``, atomically."""
    path = Path(directory) / CONFIG
    config = json.loads(path.read_text())
    config.setdefault("metrics", {}).update(metrics)
    atomic_write_json(path, config)


@dataclass
class FusedArtifact:
    path: Path
    model: RepVGG
    config: dict
    verification: dict


def read_fused_artifact(directory: str | Path, map_location: str | torch.device = "cpu") -> FusedArtifact:
    """Load a fused artifact folder into a ``deploy=True`` model, in eval mode.

    Raises :class:`UserError` with what is wrong (missing file, unknown format, corrupt weights,
    weights that do not fit the recorded architecture).
    """
    directory = Path(directory)
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).is_file():
            raise UserError(f"{directory} is not a fused artifact: {name} is missing (train.py writes it to <run>/fused/)")
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{directory / CONFIG} is not valid JSON ({err}); the artifact is damaged, re-export it") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{directory / CONFIG} is not a reparam fused-model config (format != '{FORMAT}')")
    if config.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{directory} has format version {config.get('format_version')}; this reparam reads version "
            f"{FORMAT_VERSION}: use the matching reparam release"
        )
    try:
        state = load_file(directory / WEIGHTS, device=str(map_location))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{directory / WEIGHTS} cannot be read ({err}); the artifact is damaged, re-export it") from err
    try:
        model = build_model(config["model"], deploy=True)
        model.load_state_dict(state, strict=True)
    except (ValueError, KeyError, RuntimeError, FormMismatchError) as err:
        raise UserError(f"{directory}: weights do not match the recorded model ({str(err).splitlines()[0]})") from err
    verification_path = directory / VERIFICATION
    verification = json.loads(verification_path.read_text()) if verification_path.is_file() else {}
    return FusedArtifact(directory, model.to(map_location).eval(), config, verification)
