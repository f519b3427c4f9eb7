"""Deploy targets: every way of running the fused model, one class each, in a registry keyed by name."""

from . import pytorch  # noqa: F401, I001 - registers the torch targets first: targets=[auto] keeps this order
from . import ort, ov  # noqa: F401
from .base import TARGETS, Cost, Target, TargetContext, TargetUnavailable, register_target
from .ort import OnnxRuntimeTarget
from .pytorch import TorchTarget
from .selection import (
    AUTO,
    REFERENCE,
    TRAIN_FORM,
    Selection,
    build_targets,
    check_runs_here,
    select_targets,
    shorthand_targets,
)

__all__ = [
    "AUTO",
    "REFERENCE",
    "TRAIN_FORM",
    "TARGETS",
    "Cost",
    "OnnxRuntimeTarget",
    "Selection",
    "Target",
    "TargetContext",
    "TargetUnavailable",
    "TorchTarget",
    "build_targets",
    "check_runs_here",
    "register_target",
    "select_targets",
    "shorthand_targets",
]
