"""Load what training produced, in either form, without unpickling anything unsafe."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..artifact import CONFIG, WEIGHTS, read_fused_artifact
from ..blocks import FormMismatchError
from ..checkpoint import model_spec_of, net_state, read_checkpoint
from ..errors import UserError
from ..models import RepVGG, build_model, fuse_model

__all__ = ["Loaded", "load_for_deploy", "plain_vgg_like"]


@dataclass
class Loaded:
    """Both forms where available, and what the training run recorded."""

    source: Path
    kind: str  # "checkpoint" | "fused"
    fused: nn.Module
    train_form: nn.Module | None
    spec: dict
    data: dict = field(default_factory=dict)  # the training run's datamodule hyperparameters
    recorded: dict = field(default_factory=dict)  # metrics recorded at training time
    input_info: dict = field(default_factory=dict)
    chosen_because: str = "given on the command line"  # why these weights, when a run directory was given


def _recorded(path: Path, key: str) -> str | None:
    """``key`` of the JSON object in ``path``; None when the file is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text()).get(key)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _in_this_run(directory: Path, recorded: str) -> Path:
    """Where a path recorded by a run (absolute, in the directory the run was trained in) is in ``directory``: a run
    directory copied or moved elsewhere holds its own files at the same places, and those are the ones named, not
    the original's (which may still exist, and whose deploy reports are not this copy's)."""
    path = Path(recorded)
    trained_in = _recorded(directory / "summary.json", "run_dir")
    if trained_in is None and path.parent.name == "checkpoints":  # no summary: the usual <run>/checkpoints/ layout
        trained_in = str(path.parent.parent)
    if trained_in is None or not path.is_relative_to(trained_in):
        return path  # a checkpoint kept outside the run (callbacks.model_checkpoint.dirpath): where it was
    return directory.absolute() / path.relative_to(trained_in)


def _weights_in_run(directory: Path) -> tuple[Path | None, str]:
    """The weights of a run directory that ``fused/`` was built from, so deploy and the artifact agree.

    ``fused/config.json`` names its source checkpoint (the best one by default); without a fused folder the best
    checkpoint of ``summary.json``, then ``last.ckpt``. ``(None, why)`` means: use ``fused/`` itself. Recorded paths
    are taken inside ``directory`` (:func:`_in_this_run`), so a copied run directory deploys its own files.
    """
    recorded = _recorded(directory / "fused" / CONFIG, "source_checkpoint")
    if recorded:
        source = _in_this_run(directory, recorded)
        if source.is_file():
            return source, f"the checkpoint fused/ was built from ({source.name})"
        return None, f"fused/ was built from {source}, which is not a checkpoint file here: evaluating fused/"
    recorded = _recorded(directory / "summary.json", "best_checkpoint")
    best = _in_this_run(directory, recorded) if recorded else None
    status = _recorded(directory / "summary.json", "status")
    # training's record of a run that ended early (its error says why)
    ended_early = {"failed": "training failed", "interrupted": "training was interrupted"}.get(status or "")
    if best is not None and best.is_file():
        if ended_early:
            return best, f"the best checkpoint so far (summary.json: {ended_early} before the end)"
        return best, "the best checkpoint (summary.json)"
    unfinished = (
        f"; {ended_early} before the end (summary.json)"
        if ended_early
        else ""
        if status is not None
        else "; the run wrote no summary: still training or stopped"
    )
    for candidate in (directory / "last.ckpt", directory / "checkpoints" / "last.ckpt"):
        if candidate.is_file():
            return candidate, f"last.ckpt (no fused/ or best checkpoint recorded{unfinished})"
    ckpts = sorted(directory.glob("*.ckpt")) + sorted(directory.glob("checkpoints/*.ckpt"))
    return (ckpts[-1], f"the newest checkpoint{unfinished}") if ckpts else (None, "no checkpoint: evaluating fused/")


def _recorded_test(checkpoint: Path) -> dict:
    """The test accuracy the run recorded for this very checkpoint (``summary.json``'s ``tested_weights``), if the
    checkpoint is in a run directory and was the one tested: other weights of the run were not tested."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    tested, acc = (
        (summary.get("tested_weights"), summary.get("test_acc")) if isinstance(summary, dict) else (None, None)
    )
    if not isinstance(tested, str) or not isinstance(acc, float) or not tested.endswith(".ckpt"):
        return {}
    if _in_this_run(run, tested).resolve() != checkpoint.resolve():
        return {}
    images = summary.get("test_images")
    return {"test_acc": acc, **({"test_images": images} if isinstance(images, int) else {})}


def _load_train_form(ckpt: dict, path: Path) -> tuple[nn.Module, dict]:
    spec = model_spec_of(ckpt["hyper_parameters"]) or {}  # read_checkpoint made sure there is one
    try:
        model = build_model(spec)
    except ValueError as err:
        raise UserError(f"{path}: its model spec cannot be built ({err})") from err
    state = net_state(ckpt)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, FormMismatchError) as err:
        raise UserError(
            f"{path}: weights do not fit the model it describes ({str(err).splitlines()[0][:200]}); "
            "the checkpoint is from another model or class count"
        ) from err
    return model.eval(), spec


def _run_input(checkpoint: Path) -> dict:
    """The preprocessing recorded by the run a checkpoint belongs to (``<run>/fused/config.json``), if any: the
    same run, the same data."""
    config = checkpoint.parent.parent / "fused" / CONFIG
    try:
        record = json.loads(config.read_text()).get("input") if checkpoint.parent.name == "checkpoints" else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return {}
    return dict(record) if isinstance(record, dict) else {}


# the three forms deploy (and serve) take, named wherever no ckpt was given
CKPT_REQUIRED = (
    "ckpt is required: python deploy.py ckpt=logs/train/runs/<run> (a run directory; "
    "or <run>/checkpoints/last.ckpt, or <run>/fused)"
)


def load_for_deploy(path: str | Path) -> Loaded:
    """Load a ``.ckpt`` (train form, fused here), a fused folder, or a run directory (its last.ckpt).

    From a checkpoint both forms are returned; from a fused folder only the fused form exists. Whether the model fits
    the test data is checked in one place, ``deploy_datamodule``.
    """
    if path is None or str(path).strip() in ("", "None", "???"):
        raise UserError(CKPT_REQUIRED)
    source = Path(str(path)).expanduser()
    if not source.exists():
        raise UserError(
            f"ckpt={source} does not exist; pass a run directory (logs/train/runs/<run>), a .ckpt file "
            "(<run>/checkpoints/last.ckpt) or a fused/ folder (<run>/fused) written by train.py"
        )
    chosen_because = "given on the command line"
    if source.is_dir() and not (source / WEIGHTS).exists():  # a run directory: the weights fused/ was built from
        found, chosen_because = _weights_in_run(source)
        if found is None and not (source / "fused" / WEIGHTS).exists():
            started = (source / ".hydra").is_dir() or (source / "train.log").is_file()
            raise UserError(
                f"{source} holds no checkpoint (*.ckpt) and no fused model ({WEIGHTS} + {CONFIG})"
                + (
                    ": the run saved none yet (it is still in its first epoch, or was stopped before the end of it); "
                    "deploy it once it has written checkpoints/last.ckpt or fused/"
                    if started
                    else "; pass a run directory of train.py, ckpt=<run>/checkpoints/last.ckpt or ckpt=<run>/fused"
                )
            )
        source = found or source / "fused"
    if source.is_dir():
        artifact = read_fused_artifact(source)
        config = artifact.config
        loaded = Loaded(
            source,
            "fused",
            artifact.model,
            None,
            dict(config["model"]),
            dict(config.get("data", {})),
            dict(config.get("metrics", {})),
            dict(config.get("input", {})),
        )
    else:
        ckpt = read_checkpoint(source)
        train_form, spec = _load_train_form(ckpt, source)
        loaded = Loaded(
            source,
            "checkpoint",
            fuse_model(spec, train_form),
            train_form,
            spec,
            dict(ckpt.get("datamodule_hyper_parameters") or {}),
            {"epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step"), **_recorded_test(source)},
            _run_input(source),
        )
    loaded.chosen_because = chosen_because
    return loaded


def plain_vgg_like(fused: nn.Module) -> nn.Sequential:
    """One flat ``Sequential`` of the fused model's convs and activations, then pool and head: its speed limit.

    Works for every block kind (a mobileone block contributes its depthwise and pointwise convs). It carries
    the fused weights (not random ones: random weights through 20+ layers without BN drive activations into
    denormal floats, which are many times slower on CPUs and would make the limit a lie), so it also computes
    exactly the fused model's function.
    """
    import copy

    if not isinstance(fused, RepVGG):
        raise ValueError(f"plain_vgg_like needs a fused RepVGG-family model, got {type(fused).__name__}")
    if not fused.is_fused or any(isinstance(m, _BatchNorm) for m in fused.stages.modules()):
        raise ValueError("plain_vgg_like needs a fused model; call reparameterize_model first")
    layers = [copy.deepcopy(m) for m in fused.stages.modules() if not list(m.children())]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), copy.deepcopy(fused.head)]
    return nn.Sequential(*layers).eval()
