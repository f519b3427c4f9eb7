"""Where deploy's reports are: every deploy run adds a line to ``deploy_reports.jsonl`` in the training run's
directory, so ``serve.py`` / ``deploy.py predict=...`` find the newest report made from the same weights.

The run directory is the folder that holds ``checkpoints/`` and ``fused/`` (``<run>/checkpoints/x.ckpt`` and
``<run>/fused`` both give ``<run>``); for weights elsewhere, the folder they sit in. A line names the report, the
weights it was made from (path and a hash of the fused weights, so ``ckpt=<run>`` and ``ckpt=<run>/fused`` find each
other's reports) and the device. The file is rewritten atomically, never appended to in place.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..artifact import atomic_write_text

__all__ = ["INDEX_FILE", "IndexEntry", "run_dir_of", "weights_sha256", "record_report", "find_reports"]

INDEX_FILE = "deploy_reports.jsonl"


@dataclass(frozen=True)
class IndexEntry:
    report: str  # absolute path of report.json
    checkpoint: str  # absolute path of the weights deploy loaded
    weights_sha256: str  # of the fused fp32 weights (weights_sha256)
    device: str  # where deploy's torch targets ran: cpu, cuda, cuda:0
    created: float  # seconds since the epoch

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]


def run_dir_of(source: str | Path) -> Path:
    """The training run directory of a checkpoint file or a fused folder (see the module docstring)."""
    source = Path(source).resolve()
    if source.is_file() and source.parent.name == "checkpoints":
        return source.parent.parent
    return source.parent


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state: every tensor's name, dtype, shape and bytes, in name order (CPU float32 copies
    of the same weights give the same hash wherever they were loaded from)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes of another size
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _read(path: Path) -> list[IndexEntry]:
    entries = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        try:
            entries.append(IndexEntry(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue  # a line from another version: skipped, not fatal
    return entries


def record_report(report_path: str | Path, checkpoint: str | Path, weights: str, device: str) -> Path | None:
    """Add a deploy run's report to the index of its weights' run directory; None when it cannot be written
    (a read-only run directory must not fail the deploy that already wrote its report)."""
    index = run_dir_of(checkpoint) / INDEX_FILE
    entry = IndexEntry(
        str(Path(report_path).resolve()), str(Path(checkpoint).resolve()), weights, str(device), time.time()
    )
    entries = [e for e in _read(index) if e.report != entry.report] + [entry]
    try:
        atomic_write_text(index, "".join(json.dumps(asdict(e)) + "\n" for e in entries))
    except OSError:
        return None
    return index


def find_reports(checkpoint: str | Path, weights: str, device_type: str) -> list[IndexEntry]:
    """The recorded reports made from these weights (same file, or same fused weights) on this kind of device whose
    report.json still exists, newest first."""
    source = str(Path(checkpoint).resolve())
    entries = [
        e
        for e in _read(run_dir_of(checkpoint) / INDEX_FILE)
        if (e.checkpoint == source or e.weights_sha256 == weights)
        and e.device_type == device_type
        and Path(e.report).is_file()
    ]
    return sorted(entries, key=lambda e: e.created, reverse=True)
