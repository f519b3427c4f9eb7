"""The LitServe API: one inference worker's model, batching of requests that each hold one or more images.

Requests reach it already checked and preprocessed by :class:`~reparam.serve.http_input.InputGate` (in the HTTP
process), so nothing here depends on the client's input being well formed: a batch never fails because of one bad
request. ``max_batch_size`` counts requests; a request with several images adds them all to the batch.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
import torch

from ..preprocess import Preprocessing
from .choice import ServedTarget
from .http_input import unpack
from .model import Classifier, Prediction, build_target

__all__ = ["WorkerSpec", "ClassifierAPI", "setup_failure_lines"]


@dataclass(frozen=True)
class WorkerSpec:
    """What a (spawned) inference worker needs to rebuild the served model: only paths, names and numbers."""

    checkpoint: str  # the weights deploy loaded (load_for_deploy's source)
    target: ServedTarget
    preprocessing: dict  # the recorded rule (Preprocessing.to_record): classes, input size, normalization
    top_k: int
    threads: int  # CPU threads of the target
    weights_sha256: str
    imports: tuple[str, ...] = ()  # the user's modules (imports=[...]): a spawned worker imports them again
    failures: str = ""  # a folder where a worker whose setup fails writes why, for the server's one line


def setup_failure_lines(folder: str | Path) -> list[str]:
    """What the workers that could not start wrote (see :meth:`ClassifierAPI.setup`), one line each."""
    return [p.read_text().strip() for p in sorted(Path(folder).glob("worker-*.txt"))] if str(folder) else []


class _QuietSetupError(logging.Filter):
    """Drops LitServe's traceback for a failed worker setup: the server reports it as one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Error setting up worker")


@dataclass
class _Batch:
    images: torch.Tensor
    counts: list[int]  # images per request, in order


def _ends_only_an_orphan(server_pid: int) -> Callable[[int, Any], None]:
    """A SIGTERM handler that ignores the signal while the server process lives (it stops the worker itself, once
    the requests in flight are answered), and ends the worker once the server is gone (killed with SIGKILL, say):
    an orphan must still stop on a plain ``kill``."""

    def handler(signum: int, frame: Any) -> None:
        if os.getppid() != server_pid:
            os._exit(0)

    return handler


class ClassifierAPI(ls.LitAPI):
    def __init__(self, worker: WorkerSpec, max_batch_size: int = 1, batch_timeout: float = 0.0) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.worker = worker  # not "spec": LitAPI.spec is its OpenAI-style API spec

    def setup(self, device: str) -> None:
        try:
            self._setup(device)
        except Exception as err:  # noqa: BLE001 - whatever stops a worker, the server says it in one line
            if not self.worker.failures:
                raise
            from ..errors import UserError

            detail = " ".join(str(err).split())
            why = detail if isinstance(err, UserError) else f"{type(err).__name__}: {detail or 'no message'}"
            worker = os.environ.get("LITSERVE_WORKER_ID", str(os.getpid()))
            note = Path(self.worker.failures, f"worker-{worker}.txt")
            note.write_text(f"building {self.worker.target.name} on {device} failed: {why}\n")
            logging.getLogger("litserve.loops.loops").addFilter(_QuietSetupError())
            raise

    def _setup(self, device: str) -> None:
        from ..deploy.load import load_for_deploy
        from ..user_modules import import_user_modules

        import_user_modules(self.worker.imports)  # a block kind or target of the user's own, registered again here

        # Ctrl-C reaches every process of the terminal's group: the manager stops the workers itself, so a worker
        # interrupted mid-wait only printed a KeyboardInterrupt traceback before "server stopped"
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # likewise a SIGTERM sent to the whole group (systemd, scancel): the server drains first, then ends the workers
        # (with SIGKILL, see server._Watch.start); dying here would fail the requests in flight with 500s
        signal.signal(signal.SIGTERM, _ends_only_an_orphan(os.getppid()))
        torch.set_num_threads(self.worker.threads)
        loaded = load_for_deploy(self.worker.checkpoint)
        preprocessing = Preprocessing.from_record(self.worker.preprocessing)
        self.classifier = Classifier(
            build_target(self.worker.target, loaded, device, self.worker.threads), preprocessing, self.worker.top_k
        )
        # the first call of a runtime is slow (allocations, compilation): pay it before /health says ready
        size = (preprocessing.channels, *preprocessing.size)
        self.classifier.probabilities(torch.zeros(max(1, self.max_batch_size), *size, dtype=torch.uint8))

    def authorize(self) -> None:
        """The API key is checked by InputGate, before the body is read; LitServe's own check would repeat it."""

    def decode_request(self, request: dict) -> torch.Tensor:
        return unpack(request)

    def batch(self, inputs: list[torch.Tensor]) -> _Batch:
        return _Batch(torch.cat(inputs), [len(x) for x in inputs])

    def predict(self, x: _Batch | torch.Tensor) -> list[list[Prediction]] | list[Prediction]:
        batch = x if isinstance(x, _Batch) else _Batch(x, [len(x)])
        predictions = self.classifier(batch.images)
        per_request, start = [], 0
        for count in batch.counts:
            per_request.append(predictions[start : start + count])
            start += count
        return per_request if isinstance(x, _Batch) else per_request[0]

    def unbatch(self, output: list[list[Prediction]]) -> list[list[Prediction]]:
        return output

    def encode_response(self, output: list[Prediction]) -> dict:
        return {
            "predictions": [p.to_dict() for p in output],
            "target": self.worker.target.name,
            "weights_sha256": self.worker.weights_sha256,
        }
