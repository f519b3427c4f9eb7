"""The record of one training run: what ``train()`` returns, ``summary.json`` holds and a sweep table ranks."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["TrainSummary", "SUMMARY_FILE", "SUMMARY_METRICS"]

SUMMARY_FILE = "summary.json"
# the numbers in a training summary that a sweep may rank by, and which way is better
SUMMARY_METRICS = {
    "best_val_acc": "max",
    "test_acc": "max",
    "fusion_argmax_agreement": "max",
    "epochs": "max",
    "fusion_fp32_max_abs_diff": "min",
    "fusion_fp64_max_abs_diff": "min",
    "train_images_per_s": "max",
    "time_to_best_s": "min",
    "total_time_s": "min",
}


@dataclass
class TrainSummary:
    """One run, as the end-of-run table and ``summary.json`` show it.

    ``status`` is ``completed``, ``interrupted`` (Ctrl-C, SIGTERM or a closed console; see ``error``), ``failed``
    (a user error) or ``pruned`` (a search trial its pruner stopped early; not tested).
    Times are wall-clock seconds; ``train_images_per_s`` counts training images over the time spent in training
    steps (validation excluded), ``time_to_best_s`` is the wall time from the start of fit to the end of the epoch
    whose checkpoint scored best. A resumed run (``ckpt_path``, ``auto_resume``, a restarted SLURM job) names the
    checkpoint it continued from in ``resumed_from``; its times count from that resume.
    """

    status: str
    run_dir: str
    epochs: int | None = None
    best_val_acc: float | None = None
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    fused_dir: str | None = None
    fused_weights: str | None = None  # which weights fused/ holds (a checkpoint path, or the final weights)
    # "EMA (decay 0.999)" when a weight-averaging callback ran; which weights the shipped checkpoint (test, fused/)
    # holds, "averaged" or "raw" (the better at its validation), and both weights' validation accuracy there
    averaged_weights: str | None = None
    shipped_weights: str | None = None
    val_acc_raw: float | None = None
    val_acc_averaged: float | None = None
    fusion_fp32_max_abs_diff: float | None = None
    fusion_fp64_max_abs_diff: float | None = None
    fusion_argmax_agreement: float | None = None
    # max |diff| / max |reference logit|: 3.0 on logits of 9e6 is float32 rounding, not a wrong fusion
    fusion_fp32_max_rel_diff: float | None = None
    fusion_fp64_max_rel_diff: float | None = None
    test_acc: float | None = None
    val_images: int | None = None  # how many images each accuracy is over (batch limits included)
    test_images: int | None = None
    test_split: str | None = None  # set when the test images also validated (chose the best checkpoint)
    tested_weights: str | None = None
    train_images_per_s: float | None = None
    time_to_best_s: float | None = None
    train_time_s: float | None = None
    total_time_s: float | None = None
    cpu_threads: int | None = None  # torch's intra-op threads (one per core the launcher gave the job)
    skipped_images: int | None = None  # unreadable files left out (data.skip_bad_images=true); None: none skipped
    resumed_from: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def value(self, name: str) -> float | None:
        """A rankable number by name (one of ``SUMMARY_METRICS``)."""
        value = getattr(self, name, None)
        return None if value is None else float(value)

    @classmethod
    def read(cls, path: str | Path) -> TrainSummary | None:
        """A run's ``summary.json`` (None when missing or unreadable); unknown keys (newer versions) are ignored."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or "status" not in data:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
