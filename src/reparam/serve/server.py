"""What ``python serve.py ckpt=...`` does: choose the target, describe it, and run LitServe with the input gate.

Processes: this one (LitServe's manager: it waits), one HTTP process (uvicorn + :class:`InputGate`: checks, decodes
and preprocesses) and ``workers_per_device`` inference workers per device (spawned: each rebuilds the target and
runs batches). SIGTERM drains: the HTTP process stops accepting and answers what it holds (the workers still run),
then everything stops and the process exits 0. When the HTTP process or a worker dies on its own, everything stops and
the process exits 1 with one line (:class:`_Watch`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import torch
from omegaconf import DictConfig, OmegaConf

from ..deploy.load import load_for_deploy
from ..deploy.machine import usable_cores
from ..deploy.report_index import weights_sha256
from ..device import resolve_device
from ..errors import EXIT_SIGINT, UserError, reraise_as_user_error
from ..preprocess import Preprocessing
from .api import WorkerSpec, setup_failure_lines
from .choice import agreement_share, choose_target
from .http_input import InputLimits, max_pixels_problem
from .model import recorded_preprocessing, with_class_names

if TYPE_CHECKING:  # litserve comes with the serve extra; imported when a server is built
    import litserve as ls

__all__ = ["ServeSettings", "Prepared", "prepare", "serve", "PAGE", "ServerProcessDied"]

PAGE = Path(__file__).with_name("page.html")
SAME_CTRL_C_S = 1.0  # SIGINTs closer than this are one Ctrl-C (see _note_ctrl_c)
UVICORN_DRAIN_S = 30  # what the HTTP process may take to answer the requests it holds after SIGTERM
FRESH_CONNECTION_S = 1.0  # how long a stopping server waits for a connection it took to start its request


class ServerProcessDied(UserError):
    """The HTTP process or an inference worker ended while nobody asked the server to stop."""

    exit_code = 1  # not the user's input (2): the server failed


@dataclass(frozen=True)
class ServeSettings:
    host: str
    port: int
    max_batch_size: int
    batch_timeout: float  # seconds a batch waits to fill
    workers_per_device: int
    timeout: float  # seconds a request may wait for a worker (504 after)
    limits: InputLimits
    top_k: int
    api_key_env: str
    threads: int | None
    log_level: str
    dry_run: bool
    fast_queue: bool

    @classmethod
    def from_config(cls, node: DictConfig) -> ServeSettings:
        s = cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))  # a mapping node gives a dict
        checks = {
            "serve.max_batch_size": s["max_batch_size"] >= 1,
            "serve.workers_per_device": s["workers_per_device"] >= 1,
            "serve.max_bytes": s["max_bytes"] >= 1,
            "serve.max_pixels": s["max_pixels"] >= 1,
            "serve.max_images": s["max_images"] >= 1,
            "serve.top_k": s["top_k"] >= 1,
            "serve.batch_timeout": s["batch_timeout"] >= 0,
            "serve.timeout": s["timeout"] > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise UserError(f"{bad[0]}={s[bad[0].split('.')[1]]} is out of range (sizes and counts >= 1, times >= 0)")
        problem = max_pixels_problem(int(s["max_pixels"]), "serve.max_pixels")
        if problem:
            raise UserError(problem)
        if s["host"] not in ("127.0.0.1", "0.0.0.0", "::"):
            raise UserError(
                f"serve.host={s['host']}: LitServe binds 127.0.0.1 (this machine only), 0.0.0.0 or :: (every interface)"
            )
        if not 1024 <= int(s["port"]) <= 65535:
            raise UserError(f"serve.port={s['port']} must be in 1024..65535")
        return cls(
            s["host"],
            int(s["port"]),
            int(s["max_batch_size"]),
            float(s["batch_timeout"]),
            int(s["workers_per_device"]),
            float(s["timeout"]),
            InputLimits(int(s["max_bytes"]), int(s["max_pixels"]), int(s["max_images"])),
            int(s["top_k"]),
            str(s["api_key_env"]),
            s["threads"],
            str(s["log_level"]),
            bool(s["dry_run"]),
            bool(s["fast_queue"]),
        )


@dataclass(frozen=True)
class Prepared:
    """Everything chosen before the server starts: what it serves, how, and what /info says."""

    worker: WorkerSpec
    preprocessing: Preprocessing
    device: torch.device
    settings: ServeSettings

    def info(self) -> dict[str, Any]:
        return {
            "target": self.worker.target.to_dict(),
            "checkpoint": self.worker.checkpoint,
            "weights_sha256": self.worker.weights_sha256,
            "classes": list(self.preprocessing.classes),
            "input": self.preprocessing.to_record(),
            "top_k": self.worker.top_k,
            "limits": asdict(self.settings.limits),
            "max_batch_size": self.settings.max_batch_size,
            "batch_timeout": self.settings.batch_timeout,
            "device": str(self.device),
            "threads": self.worker.threads,
        }

    def startup_line(self) -> str:
        t, s = self.worker.target, self.settings
        acc = (
            "accuracy not measured"
            if t.accuracy is None
            else f"test accuracy {t.accuracy:.2%}"
            + (f" ({t.correct}/{t.num_images}, deploy)" if t.correct is not None else " (recorded at training)")
        )
        key = f"; API key required (X-API-Key, from ${s.api_key_env})" if os.environ.get(s.api_key_env) else ""
        return (
            f"serving {t.name} ({t.label}) of {self.worker.checkpoint}: {acc}; starting at http://{s.host}:{s.port} "
            f"(POST /predict, GET /health, GET /info, page at /){key}\n  chosen: {t.chosen_because}"
        )


def _threads(requested: int | None, device: torch.device) -> int:
    if requested:
        return int(requested)
    # the HTTP process decodes on one core; the model gets the others (a pool thread waiting for a busy core
    # stalls the rest: docs/benchmarks.md)
    return max(1, usable_cores() - 1) if device.type == "cpu" else 1


def prepare(cfg: DictConfig) -> Prepared:
    if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt in (None, ""):
        raise UserError("ckpt is required: python serve.py ckpt=<run> (or <run>/checkpoints/last.ckpt, <run>/fused)")
    settings = ServeSettings.from_config(cfg.serve)
    with reraise_as_user_error("device", ValueError):
        device = resolve_device(cfg.device)
    loaded = load_for_deploy(str(cfg.ckpt))
    preprocessing = recorded_preprocessing(loaded)
    weights = weights_sha256(loaded.fused)
    served = choose_target(
        loaded.source,
        weights,
        device.type,
        target=cfg.serve.target,
        report=cfg.serve.report,
        max_batch_size=settings.max_batch_size,
        recorded_accuracy=loaded.recorded.get("test_acc"),
        min_agreement=agreement_share(cfg.serve.min_agreement, "serve.min_agreement"),
    )
    preprocessing = with_class_names(preprocessing, loaded)
    worker = WorkerSpec(
        str(loaded.source),
        served,
        preprocessing.to_record(),
        settings.top_k,
        _threads(settings.threads, device),
        weights,
        tuple(str(name) for name in cfg.get("imports") or ()),
    )
    return Prepared(worker, preprocessing, device, settings)


def build_server(prepared: Prepared) -> ls.LitServer:
    """The LitServer: the API, the input gate in front of it, and the page at ``/``."""
    import litserve as ls
    from fastapi.responses import HTMLResponse

    from .api import ClassifierAPI
    from .http_input import InputGate

    s = prepared.settings
    gate = {
        "limits": s.limits,
        "preprocessing": prepared.preprocessing.to_record(),
        "api_key": os.environ.get(s.api_key_env) or None,
    }
    server = ls.LitServer(
        ClassifierAPI(prepared.worker, s.max_batch_size, s.batch_timeout),
        accelerator="cuda" if prepared.device.type == "cuda" else "cpu",
        devices=1,
        workers_per_device=s.workers_per_device,
        timeout=s.timeout,
        model_metadata=prepared.info(),
        middlewares=[(InputGate, gate)],
        fast_queue=s.fast_queue,
    )
    page = PAGE.read_text()
    server.app.router.routes = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]
    server.app.add_api_route("/", lambda: HTMLResponse(page), methods=["GET"], include_in_schema=False)
    return server


def _accept_queue_length(sock: Any) -> int:
    """Connections the kernel has accepted on listening socket ``sock`` that the server has not taken yet (Linux:
    TCP_INFO's ``tcpi_unacked`` of a listener); 0 where that cannot be read."""
    import socket
    import struct

    try:
        return int(struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 24)[0])
    except (OSError, AttributeError, struct.error, TypeError):  # not Linux, not TCP, closed
        return 0


def _take_queued_connections_before_stopping() -> None:
    """Make uvicorn take the connections already waiting in the kernel's accept queue before it stops accepting.

    A client's connection is made by the kernel, not by the server: while the HTTP process is busy (decoding a large
    request), connections wait in the accept queue. uvicorn's shutdown closes its listener at once, and those
    connections, requests sent, were reset when the server exited (24 of 48 requests in a user's test, with exit 0).
    LitServe creates the ``uvicorn.Server`` itself, so its ``shutdown`` is wrapped here, before LitServe forks the HTTP
    processes: it waits (up to ``UVICORN_DRAIN_S``, and not after a second Ctrl-C) until the queue is empty, while
    the server still accepts and answers, then shuts down as before (whoever sent the signal: serve.py's drain, the
    whole process group, Ctrl-C)."""
    import asyncio

    import uvicorn

    original = uvicorn.Server.shutdown
    if getattr(original, "takes_queued_connections", False):
        return

    async def shutdown(self: uvicorn.Server, sockets: list[Any] | None = None) -> None:
        listeners = [*(sockets or []), *(s for server in getattr(self, "servers", []) for s in server.sockets)]
        deadline = time.monotonic() + UVICORN_DRAIN_S
        queue_empty_at = None
        while not self.force_exit and time.monotonic() < deadline:
            if any(map(_accept_queue_length, listeners)):
                queue_empty_at = None
            else:
                # a connection just taken has not started its request yet (its bytes are read on the next turns
                # of the loop), and uvicorn closes such a connection as idle: wait for those, a moment at most (a
                # client may also connect and send nothing)
                queue_empty_at = queue_empty_at or time.monotonic()
                fresh = [c for c in self.server_state.connections if getattr(c, "cycle", False) is None]
                if not fresh or time.monotonic() - queue_empty_at > FRESH_CONNECTION_S:
                    break
            await asyncio.sleep(0.02)
        await original(self, sockets)

    shutdown.takes_queued_connections = True  # type: ignore[attr-defined]
    uvicorn.Server.shutdown = shutdown  # type: ignore[method-assign]


def _drain_on_sigterm(watch: _Watch) -> None:
    """SIGTERM: the HTTP processes take the connections already made, stop accepting and finish what they hold
    (:func:`_take_queued_connections_before_stopping`), then LitServe shuts down as after Ctrl-C (workers stopped,
    queues closed) and ``run`` returns."""

    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            if not multiprocessing.current_process().name.startswith("LitServer-") and os.getppid() == owner:
                return  # LitServe's queue manager, sent SIGTERM with the whole group (systemd, scancel): the
                # requests in flight still pass through it; LitServe ends it at the end of the shutdown (an orphan,
                # whose server was killed, ends on SIGTERM)
            # an HTTP process inherited this handler: uvicorn re-raises SIGTERM once drained, or LitServe's
            # shutdown terminates it while it ends after a Ctrl-C: either way it has served; a SystemExit raised
            # there would unwind asyncio's teardown with a logged traceback
            _end_forked_process()
        watch.stopping.set()
        http = [p for p in multiprocessing.active_children() if p.name.startswith("LitServer-")]
        for process in http:
            if process.pid is not None:  # started: active_children() lists only started processes
                os.kill(process.pid, signal.SIGTERM)
        for process in http:
            process.join(UVICORN_DRAIN_S + 5)
        watch.forget_ended_http()  # drained as asked: LitServe's shutdown would warn "Already not alive" for each
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _end_forked_process() -> NoReturn:
    """End a process LitServe forked, which inherited one of our signal handlers: its output flushed, exit 0, no
    unwinding (Python's teardown of its event loop would log tracebacks)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _note_ctrl_c(stopping: threading.Event) -> None:
    """Ctrl-C reaches every process of the group at once: mark the stop as asked for before the HTTP process ends,
    so :class:`_Watch` does not report it. An ignored SIGINT (a background job of a script) stays ignored.

    A SIGINT within ``SAME_CTRL_C_S`` of the first is the same Ctrl-C delivered twice (the terminal sends it to the
    group, and a wrapper such as ``timeout`` forwards its own copy): ignored, where raising again would break off
    LitServe's shutdown and leave its processes to die with tracebacks. A later one, while the shutdown still runs,
    stops everything at once."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return
    owner = os.getpid()
    first: list[float] = []

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a process LitServe forked inherited this handler: the Ctrl-C ends it quietly
            # (uvicorn re-raises the SIGINT it captured once it has stopped; a KeyboardInterrupt would end the
            # process with a traceback); the manager stops the rest
            _end_forked_process()
        if not first:
            first.append(time.monotonic())
            stopping.set()
            raise KeyboardInterrupt
        if time.monotonic() - first[0] < SAME_CTRL_C_S:
            return
        for process in multiprocessing.active_children():
            process.kill()
        print(
            "server stopped at once by a second Ctrl-C: its processes were killed, requests in flight got no answer",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_SIGINT)  # nothing to save; unwinding LitServe's half-done shutdown would only add tracebacks

    signal.signal(signal.SIGINT, handler)


class _Watch:
    """Ends the server when its HTTP process or an inference worker dies while no stop was asked for.

    LitServe's manager (this process) binds the port and then only waits: without this, a server whose HTTP process
    died (e.g. a Ctrl-C that the manager ignored, started with SIGINT ignored) kept the port and answered nothing.
    It takes the place of LitServe's own monitor thread, which watches only the workers and, after a normal stop,
    asked the manager process it had just shut down whether to go on (a BrokenPipeError traceback after
    "server stopped").
    """

    def __init__(self, server: ls.LitServer, poll_s: float = 0.5, grace_s: float = 1.0, failures: str = "") -> None:
        self.server = server
        self.failures = failures  # where a worker whose setup failed wrote why (WorkerSpec.failures)
        self.poll_s, self.grace_s = poll_s, grace_s
        self.stopping = threading.Event()  # set on SIGTERM / Ctrl-C: processes ending then are expected
        self.died: str | None = None  # what ended, for the error line
        self.http: dict[int, Any] = {}  # LitServe's own record of its HTTP processes, which its shutdown walks
        # LitServe calls this with the started HTTP processes once the workers are up, where it would start its own
        server._start_worker_monitoring = self.start

    def start(self, manager: Any, http: dict[int, Any]) -> None:
        self.http = http
        for worker in self.server.inference_workers:  # they ignore SIGTERM (ClassifierAPI.setup); LitServe's
            # shutdown ends them after the HTTP processes, when nothing is in flight, so SIGKILL loses nothing
            worker.terminate = worker.kill
        threading.Thread(target=self._watch, args=(http,), name="reparam-watch", daemon=True).start()

    def forget_ended_http(self) -> None:
        """Take HTTP processes that have ended out of LitServe's record (its shutdown warns about each)."""
        for key in [k for k, p in self.http.items() if not p.is_alive()]:
            self.http.pop(key, None)

    def _watch(self, http: dict[int, Any]) -> None:
        processes: list[tuple[str, int | None, Any]] = [("HTTP process", k, p) for k, p in http.items()]
        processes += [("inference worker", None, p) for p in self.server.inference_workers]
        while not self.stopping.wait(self.poll_s):
            dead = next(((what, k, p) for what, k, p in processes if not p.is_alive()), None)
            if dead is None:
                continue
            if self.stopping.wait(self.grace_s):  # a Ctrl-C's KeyboardInterrupt may be a moment behind
                return
            what, key, process = dead
            if key is not None:  # LitServe's shutdown would log "Already not alive" for it; the error line says it
                self.forget_ended_http()
            code = getattr(process, "exitcode", None)
            if code is not None and code < 0:
                how = f"was killed by {signal.Signals(-code).name}"
            elif code == 0 and what == "HTTP process":  # uvicorn ends cleanly on a SIGINT of its own
                how = (
                    "ended on its own (exit code 0), as after a Ctrl-C that serve.py ignored (a script's background "
                    "job ignores SIGINT: stop the server with SIGTERM, kill <pid>)"
                )
            else:
                how = f"exited with code {code}"
            notes = setup_failure_lines(self.failures) if what == "inference worker" else []
            if notes:  # a second worker that failed to start after the first one was ready
                how = f"could not start: {notes[0]}"
            self.died = f"the server's {what} (pid {getattr(process, 'pid', '?')}) {how}"
            try:
                self.server._shutdown_event.set()  # run() stops everything else and returns
            except (OSError, EOFError):  # the manager process is gone too: run()'s wait on it fails and stops it
                pass
            return


def _say_when_ready(settings: ServeSettings, wait_s: float = 600.0) -> threading.Thread:
    """Print ``ready: <url>`` once ``/health`` answers 200 (the workers have loaded the model): the startup line comes
    before the port is open, and a user who copies the URL at once would get "connection refused"."""
    local = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    request = urllib.request.Request(f"http://{local}:{settings.port}/health")
    key = os.environ.get(settings.api_key_env)
    if key:
        request.add_header("X-API-Key", key)

    def watch() -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        print(f"ready: http://{settings.host}:{settings.port}", flush=True)
                        return
            except OSError:  # refused while starting; HTTPError (503) while the workers load
                pass
            time.sleep(0.25)

    thread = threading.Thread(target=watch, name="reparam-ready", daemon=True)
    thread.start()
    return thread


def check_port_free(host: str, port: int) -> None:
    """One clear line when ``host:port`` cannot be bound (uvicorn's own error comes after the startup line, exit 3).
    The socket is set up as uvicorn sets up its own (``SO_REUSEADDR``), so a port a stopped server left in TIME_WAIT
    counts as free, as it is for uvicorn."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            why = "is in use (another server, or one still stopping)" if err.errno == errno.EADDRINUSE else err.strerror
            raise UserError(f"serve.port={port}: {host}:{port} {why}; choose another port with serve.port=...") from err


def serve(cfg: DictConfig) -> Prepared:
    torch.set_num_threads(1)  # this process only waits; its forked HTTP process must not inherit a thread pool
    settings = ServeSettings.from_config(cfg.serve)
    check_port_free(settings.host, settings.port)  # before loading the model: a taken port is said at once
    prepared = prepare(cfg)
    print(prepared.startup_line(), flush=True)
    if prepared.settings.dry_run:
        return prepared
    failures = tempfile.mkdtemp(prefix="reparam-serve-")
    try:
        _run(dataclasses.replace(prepared, worker=dataclasses.replace(prepared.worker, failures=failures)), failures)
    finally:
        shutil.rmtree(failures, ignore_errors=True)
    print("server stopped", file=sys.stderr, flush=True)
    return prepared


def _run(prepared: Prepared, failures: str) -> None:
    server = build_server(prepared)
    server.uvicorn_graceful_timeout = UVICORN_DRAIN_S
    watch = _Watch(server, failures=failures)
    s = prepared.settings
    _drain_on_sigterm(watch)
    _take_queued_connections_before_stopping()
    _note_ctrl_c(watch.stopping)
    _say_when_ready(s)
    try:
        server.run(host=s.host, port=s.port, log_level=s.log_level, generate_client_file=False)
    except RuntimeError:
        notes = setup_failure_lines(failures)
        if not notes:
            raise
        for process in multiprocessing.active_children():  # the other workers and LitServe's manager: nothing served
            process.kill()
        raise ServerProcessDied(
            f"the inference worker could not start, so the server did not: {notes[0]}"
            + (f" (and {len(notes) - 1} more workers alike)" if len(notes) > 1 else "")
        ) from None
    finally:
        watch.stopping.set()
    if watch.died:
        raise ServerProcessDied(f"{watch.died}; the server stopped and freed port {s.port} (start it again)")
