"""Loggers whose files survive a resumed run.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` whenever its directory is not empty, so a run resumed in its own
directory (``auto_resume=true`` or ``ckpt_path=<run>/checkpoints/last.ckpt``) kept only the epochs after the resume.
:class:`CSVLogger` here keeps the rows logged up to the checkpoint and appends after them; rows of the part that is
replayed (an interrupted epoch) are dropped, so every epoch appears once.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = ["CSVLogger", "ResumePoint"]


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run starts again: the checkpoint's (completed) epoch and global step."""

    epoch: int
    global_step: int

    def logged_before(self, row: dict[str, str]) -> bool:
        """Whether a metrics row was logged before the checkpoint (so it is not logged again after the resume)."""
        epoch = row.get("epoch") or ""
        if epoch.strip():
            return float(epoch) <= self.epoch
        step = row.get("step") or ""
        return not step.strip() or int(float(step)) < self.global_step


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume: ResumePoint | None) -> None:
        self._resume = resume
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if self._resume is None or not os.path.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()  # a new run in a used directory starts a new file (Lightning's rule)
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if self._resume.logged_before(row)]
        tmp = f"{self.metrics_file_path}.tmp"
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_file_path)
        self.metrics_keys = sorted(header)  # later rows extend this header instead of replacing it


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger; after :meth:`resume_at`, ``metrics.csv`` is continued instead of deleted."""

    _resume: ResumePoint | None = None

    def resume_at(self, point: ResumePoint) -> None:
        """Call before the first log call of a run resumed from a checkpoint at ``point``."""
        if self._experiment is not None:
            raise RuntimeError("CSVLogger.resume_at must be called before anything is logged")
        self._resume = point

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir, self._resume)
        assert isinstance(self._experiment, ExperimentWriter)  # Lightning types it as Fabric's base writer
        return self._experiment
