"""Which targets a deploy run builds: ``targets=[...]``, ``auto`` per device, and the older switches that add one.

``auto`` expands to every registered target whose ``auto_devices`` include the deploy device (CPU: train form,
fused, plain-VGG limit, ONNX Runtime fp32; GPU: the same torch forms and the fused model in bf16 and fp16). A target
``auto`` brought in that cannot run here is left out with its reason; one the user named is an error. The fused
target is always there: it is the reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import UserError
from .base import TARGETS, Target, TargetContext, TargetUnavailable

__all__ = [
    "AUTO",
    "REFERENCE",
    "TRAIN_FORM",
    "Selection",
    "select_targets",
    "shorthand_targets",
    "build_targets",
    "check_runs_here",
]

AUTO = "auto"
REFERENCE = "fused"
# the multi-branch network the checks compare against: what fusion replaces, never what one ships or serves
TRAIN_FORM = "train_form"
HALF_TARGETS = {"bfloat16": "bf16", "float16": "fp16"}


@dataclass
class Selection:
    names: list[str]  # in build order, the reference first
    explicit: set[str]  # named on the command line (or by a switch): failing to build them is an error
    skipped: dict[str, str] = field(default_factory=dict)  # left out, and why


def shorthand_targets(dtype: str = "float32", compile: bool = False, quantize: str | None = None) -> list[str]:
    """The targets added by ``benchmark.dtype``, ``benchmark.compile`` and ``quantize=int8``."""
    if dtype != "float32" and dtype not in HALF_TARGETS:
        raise UserError(f"benchmark.dtype must be float32, bfloat16 or float16, got '{dtype}'")
    if quantize not in (None, "int8"):
        raise UserError(f"quantize.mode must be int8 or null, got '{quantize}' (deploy.py quantize=int8)")
    names = []
    if compile or dtype in HALF_TARGETS:
        base = "compiled" if compile else "fused"
        names.append(f"{base}_{HALF_TARGETS[dtype]}" if dtype in HALF_TARGETS else base)
    if quantize == "int8":
        names.append("onnxruntime_int8")
    return names


def select_targets(requested: Sequence[str], device: torch.device, onnx_export: bool) -> Selection:
    """The target names to build, in order; unknown names are one clear error listing the valid ones."""
    unknown = [name for name in requested if name != AUTO and name not in TARGETS]
    if unknown:
        raise UserError(
            f"unknown target '{unknown[0]}'; choose from {', '.join([AUTO, *TARGETS])} "
            f"(e.g. targets=[auto,onnxruntime_int8])"
        )
    explicit = {name for name in requested if name != AUTO}
    for name in explicit:
        check_runs_here(name, device)
    selection = Selection([REFERENCE], explicit)
    for name in requested:
        expanded = _auto(device, onnx_export, selection.skipped) if name == AUTO else [name]
        selection.names += [n for n in expanded if n not in selection.names]
    return selection


def check_runs_here(name: str, device: torch.device, named_as: str | None = None) -> None:
    """One clear error when target ``name`` cannot run on ``device``; ``named_as``: how the user named it (e.g.
    ``serve.target=fused_fp16``), by default ``target <name>``."""
    try:
        TARGETS[name].check_device(device)
    except TargetUnavailable as err:
        raise UserError(f"{named_as or f'target {name}'} cannot run here: {err}") from err


def _auto(device: torch.device, onnx_export: bool, skipped: dict[str, str]) -> list[str]:
    names = []
    for name, cls in TARGETS.items():
        if device.type not in cls.auto_devices:
            continue
        if cls.needs_onnx and not onnx_export:
            skipped[name] = "the ONNX export is off (export.onnx is false)"
            continue
        try:
            cls.check_device(device)
        except TargetUnavailable as err:
            skipped[name] = str(err)
            continue
        names.append(name)
    return names


def build_targets(
    selection: Selection, context: TargetContext, settings: Mapping[str, Mapping[str, Any]]
) -> list[Target]:
    """Each selected target, built once; an ``auto`` one that cannot run here is recorded in ``selection.skipped``."""
    targets = []
    for name in selection.names:
        try:
            # a target without an entry of its own reads the node its settings_key names (tolerance: float32 forms)
            entry = settings.get(name)
            targets.append(
                TARGETS[name].build(
                    context, entry if entry is not None else settings.get(TARGETS[name].settings_key) or {}
                )
            )
        except KeyError as err:  # a settings entry without a key its target reads
            raise UserError(
                f"target {name} needs the setting {TARGETS[name].settings_key}.{err.args[0]}; see "
                "target_settings in configs/deploy.yaml"
            ) from err
        except TargetUnavailable as err:
            if name in selection.explicit or name == REFERENCE:
                raise UserError(f"target {name} cannot run here: {err}") from err
            selection.skipped[name] = str(err)
    # the table, the plot and the report tell targets apart by label: one that reads like an earlier target's (a
    # registered variant the words do not describe, e.g. channels_last) is named
    labels: set[str] = set()
    for target in targets:
        if target.label in labels:
            target.label_note = target.name
        labels.add(target.label)
    return targets
