"""The fused artifact: a folder holding ``model.safetensors``, ``config.json`` and ``verification.json``.

For a network whose fused form has no constructor (``model=custom``, fused by ``auto_fuse``; the model family's
``exports_program``) it also holds ``model.pt2``, a ``torch.export`` program of the fused graph, for runtimes that do
not have the network's source. reparam itself never loads the ``.pt2`` (``torch.export.load`` may fall back to full
unpickling): the family rebuilds the fused structure from the recorded spec and the safetensors weights load into it.

Written atomically: everything goes into a hidden temporary folder beside the target, is flushed to
disk, and only then renamed into place, so a crash leaves either the previous artifact or none,
never a partial one. Read back with safetensors and JSON only: nothing is unpickled.
"""

from __future__ import annotations

import copy
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
from .models import input_size, model_family

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FusedArtifact",
    "write_fused_artifact",
    "read_fused_artifact",
    "atomic_write_text",
    "atomic_write_json",
    "update_fused_metrics",
    "readable_by_umask",
]

FORMAT = "reparam.fused"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, VERIFICATION, PROGRAM = "model.safetensors", "config.json", "verification.json", "model.pt2"


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


def current_umask() -> int:
    """The process umask (os has no getter: set and restore)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def readable_by_umask(path: Path, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would: mkstemp/mkdtemp make 0600/0700 regardless of umask,
    which would hide results from teammates on a shared machine."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename; the file's mode follows the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        readable_by_umask(Path(tmp))
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


def write_fused_artifact(
    directory: str | Path,
    fused: torch.nn.Module,
    config: dict,
    verification: dict,
    example_inputs: torch.Tensor | None = None,
) -> Path:
    """Write a fused model as an artifact folder, atomically; replaces an existing one at ``directory``.

    ``config`` must hold ``model`` (the spec ``build_model`` takes); ``format``/``format_version``/``form``
    are added here. When the model family exports a program (a fused form without a constructor), the folder also
    gets ``model.pt2`` (exported with ``example_inputs``).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if "model" not in config:
        raise ValueError("config needs a 'model' entry (the spec build_model takes)")
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "form": "fused", **config}
    state = {k: v.detach().to("cpu").contiguous() for k, v in fused.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        readable_by_umask(tmp, directory=True)
        save_file(
            state, tmp / WEIGHTS, metadata={"format": FORMAT, "form": "fused", "format_version": str(FORMAT_VERSION)}
        )
        for name, obj in ((CONFIG, config), (VERIFICATION, verification)):
            (tmp / name).write_text(_json(obj))
        files = [WEIGHTS, CONFIG, VERIFICATION]
        if model_family(config["model"]).exports_program:
            _export_program(fused, config["model"], example_inputs, tmp / PROGRAM)
            files.append(PROGRAM)
        for name in files:
            readable_by_umask(tmp / name)  # safetensors writes 0600 whatever the umask
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


def _export_program(fused: torch.nn.Module, spec: dict, example_inputs: torch.Tensor | None, path: Path) -> None:
    """``fused`` as a torch.export program with a dynamic batch dimension, on the CPU."""
    param = next(fused.parameters(), None)
    if example_inputs is None:
        example_inputs = torch.zeros(2, *input_size(spec))
    example = example_inputs.to("cpu", param.dtype if param is not None else torch.float32)
    batch = torch.export.Dim("batch", min=1, max=4096)
    module = copy.deepcopy(fused).to("cpu").eval()
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def update_fused_metrics(directory: str | Path, metrics: dict) -> None:
    """Add metrics measured after fusing (e.g. the test accuracy) to ``config.json``, atomically."""
    path = Path(directory) / CONFIG
    config = json.loads(path.read_text())
    config.setdefault("metrics", {}).update(metrics)
    atomic_write_json(path, config)


@dataclass
class FusedArtifact:
    path: Path
    model: torch.nn.Module
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
            raise UserError(
                f"{directory} is not a fused artifact: {name} is missing (train.py writes it to <run>/fused/)"
            )
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(
            f"{directory / CONFIG} is not valid JSON ({err}); the artifact is damaged, re-export it"
        ) from err
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
    model = _fused_skeleton(directory, config["model"])
    try:
        model.load_state_dict(state, strict=True)
    except (ValueError, KeyError, RuntimeError, FormMismatchError) as err:
        raise UserError(f"{directory}: weights do not match the recorded model ({str(err).splitlines()[0]})") from err
    verification_path = directory / VERIFICATION
    verification = json.loads(verification_path.read_text()) if verification_path.is_file() else {}
    return FusedArtifact(directory, model.to(map_location).eval(), config, verification)


def _fused_skeleton(directory: Path, spec: dict) -> torch.nn.Module:
    """The fused model's structure, weights still to load, from the model family of the recorded spec."""
    try:
        return model_family(spec).fused_skeleton(spec)
    except (ValueError, KeyError, TypeError) as err:
        # a custom network's class may be missing here; its exported program runs without it
        elsewhere = (
            f", or run {directory / PROGRAM} with a torch.export runtime" if (directory / PROGRAM).is_file() else ""
        )
        why = str(err).splitlines()[0]
        own = (
            ""  # an unknown block kind's message says it already
            if "imports=[" in why
            else "; code of your own that defines it is imported first, as when training (in Python: import it; "
            "deploy.py and serve.py: imports=[<module>])"
        )
        raise UserError(f"{directory}: the recorded model cannot be built ({why}){own}{elsewhere}") from err
