"""Test helpers for serve.py: a trained-and-deployed digits run, the real server in a subprocess on 127.0.0.1 with a
free port, and the test split as PNG files."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from helpers import ROOT, compose_config
from PIL import Image

# a tiny RepVGG on the embedded digits: one short epoch, the full test split (360 images) for the accuracy checks
TRAIN = [
    "experiment=demo",
    "model.widths=[8,8,16,16,32]",
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=6",
    "++trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
]
DEPLOY = [
    "quantize=int8",
    "quantize.calibration_images=64",
    "benchmark.batch_sizes=[1,32]",
    "benchmark.min_run_time=0.05",
    "benchmark.rounds=1",
    "export.check_batch_size=8",
]


def train_and_deploy(tmp: Path) -> tuple[Path, dict]:
    """A run directory and the report.json of a deploy of it (recorded in the run's index, as deploy.py does)."""
    from reparam.deploy import deploy
    from reparam.training import train

    run = tmp / "run"
    summary = train(compose_config("train", TRAIN, run_dir=run))
    assert summary.fused_dir, summary
    report = deploy(compose_config("deploy", [f"ckpt={run}", *DEPLOY], run_dir=tmp / "deploy"))
    return run, json.loads(Path(report.report_path).read_text())


def fastest_passing(report: dict, batch_size: str = "32") -> str:
    """What serve.py must choose by default, computed here from the report on its own."""
    passing = {
        n: t["throughput"][batch_size]
        for n, t in report["targets"].items()
        if t["gate"]["passed"] and n != "train_form"
    }
    return max(passing, key=passing.get)


def split_pngs() -> tuple[list[bytes], np.ndarray]:
    from reparam.data.sources import load_source

    arrays = load_source("digits", ".")
    images = []
    for image in arrays.test_images:
        out = io.BytesIO()
        Image.fromarray(image).save(out, "PNG")
        images.append(out.getvalue())
    return images, np.asarray(arrays.test_labels)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def children(self) -> list[tuple[int, int, str]]:
        """(start time, pid, command line) of each process the server started, oldest first (read from /proc)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_text().replace("\0", " ").strip()
            except OSError:  # ended meanwhile
                continue
            if int(fields[1]) == self.process.pid:  # the parent pid; field 22 of stat is the start time
                found.append((int(fields[19]), int(entry.name), command))
        return sorted(found)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


def start_server(
    ckpt: Path,
    out: Path,
    *overrides: str,
    env: dict | None = None,
    ready_s: float = 300,
    ignore_sigint: bool = False,
    wrapper: tuple[str, ...] = (),
) -> Server:
    """``python serve.py ckpt=...`` on a free port; returns once GET /health answers 200. ``ignore_sigint``: started
    with SIGINT ignored, as a script's background job (``serve.py ... &``) is; ``wrapper``: a command it runs under
    (``("timeout", "600")``)."""
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "server.log"
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [
                *wrapper,
                sys.executable,
                str(ROOT / "serve.py"),
                f"ckpt={ckpt}",
                f"serve.port={port}",
                f"hydra.run.dir={out / 'hydra'}",
                *overrides,
            ],
            cwd=out,
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own: a test can press "Ctrl-C" (SIGINT to the group)
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    headers = {"X-API-Key": environment["LIT_SERVER_API_KEY"]} if environment.get("LIT_SERVER_API_KEY") else {}
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve.py exited {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/health", headers=headers, timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"serve.py was not ready in {ready_s} s:\n{server.output()}")
