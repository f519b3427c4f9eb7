"""Every GPU path of reparam, end to end on one GPU, on generated CIFAR-format data: ``make gpu-check``.

Trains a few hundred steps with each speed preset and the standard pipeline (and DDP on one GPU, a custom model
through auto_fuse), then deploys with each device option, and runs the test suite's CUDA-only tests. Stops at the
first failure, naming the step and showing the end of its output; exit 0 means every step passed. The CPU test suite
cannot see device-placement bugs (a CUDA model fed a CPU tensor): this is where they show.

    python scripts/gpu_check.py [--keep DIR] [--only SUBSTRING] [--jobs N] [--keep-going]

Steps run in three phases (training runs, deploys of those runs, the GPU tests); within a phase up to ``--jobs``
steps share the GPU at once. The deploy reports' speed figures are therefore not clean measurements: time with
``deploy.py`` alone, or ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# a few hundred steps per training run: 5,000 training images at batch 128 = 39 steps an epoch
EPOCHS = ["trainer.max_epochs=6"]
TRAIN_BASE = ["model=repvgg_a0", "data.num_workers=2", *EPOCHS]


@dataclass
class Step:
    name: str
    phase: str  # "train", "deploy" (needs the training runs) or "tests"
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # a check on the finished step (its combined output), returning an error message or None
    check: object = None


def train(name: str, run: str, *overrides: str, env: dict[str, str] | None = None, check=None) -> Step:
    argv = [sys.executable, str(ROOT / "train.py"), *TRAIN_BASE, *overrides, f"hydra.run.dir={run}"]
    return Step(name, "train", argv, env or {}, check)


def deploy(name: str, ckpt: str, out: str, *overrides: str) -> Step:
    return Step(
        name,
        "deploy",
        [
            sys.executable,
            str(ROOT / "deploy.py"),
            f"ckpt={ckpt}",
            "device=cuda",
            "benchmark.batch_sizes=[1,256]",
            "benchmark.min_run_time=0.3",
            *overrides,
            f"hydra.run.dir={out}",
        ],
    )


def no_skipped_cudagraphs(output: str) -> str | None:
    """TORCH_LOGS=cudagraphs says when torch falls back to running without CUDA graphs."""
    skipped = [line for line in output.splitlines() if "skipping cudagraphs" in line.lower()]
    return f"CUDA graphs were skipped: {skipped[0].strip()[:300]}" if skipped else None


def steps(work: Path) -> list[Step]:
    data = f"paths.data_dir={work / 'data'}"
    runs = {name: str(work / name) for name in ("standard", "fast", "compiled", "ddp", "custom", "qarepvgg")}
    out = lambda name: str(work / "deploy" / name)  # noqa: E731
    compiled_env = {"TORCH_LOGS": "cudagraphs"}
    return [
        train("train: standard pipeline, fp32", runs["standard"], data, "trainer=gpu"),
        train("train: speed=fast", runs["fast"], data, "speed=fast"),
        train(
            "train: speed=compiled (CUDA graphs)",
            runs["compiled"],
            data,
            "speed=compiled",
            env=compiled_env,
            check=no_skipped_cudagraphs,
        ),
        train("train: DDP on one GPU", runs["ddp"], data, "trainer=ddp", "trainer.devices=1"),
        train(
            "train: model=custom (auto_fuse on a CUDA model)",
            runs["custom"],
            data,
            "model=custom",
            "trainer=gpu",
            "data.pipeline=fast",
        ),
        train("train: model.block=qarepvgg, speed=fast", runs["qarepvgg"], data, "model.block=qarepvgg", "speed=fast"),
        deploy("deploy: run dir, fp32", runs["standard"], out("fp32")),
        deploy(
            "deploy: checkpoint, bfloat16 + channels_last",
            f"{runs['fast']}/checkpoints/last.ckpt",
            out("bf16"),
            "benchmark.dtype=bfloat16",
            "benchmark.channels_last=true",
        ),
        deploy("deploy: fused/ folder, float16", f"{runs['compiled']}/fused", out("fp16"), "benchmark.dtype=float16"),
        deploy(
            "deploy: compile (shorthand for compiled_bf16)",
            runs["fast"],
            out("compile"),
            "benchmark.compile=true",
            "benchmark.dtype=bfloat16",
        ),
        deploy(
            "deploy: targets=[auto,compiled,onnxruntime_fp32]",
            runs["standard"],
            out("targets"),
            "targets=[auto,compiled,onnxruntime_fp32]",
        ),
        deploy(
            "deploy: quantize=int8 (ORT on CPU next to torch on CUDA)", runs["qarepvgg"], out("int8"), "quantize=int8"
        ),
        deploy("deploy: custom model (auto_fuse) from its run dir", runs["custom"], out("custom")),
        # the tests marked gpu: CUDA-only unit tests and the README's GPU lines, run as typed
        Step("tests: pytest -m gpu", "tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", str(ROOT / "tests")]),
    ]


RUNNING: set[subprocess.Popen] = set()  # the steps' processes, ended with gpu-check when it is stopped


def _stop(signum: int, frame) -> None:
    for proc in list(RUNNING):
        proc.kill()
    print(f"error: gpu-check stopped by signal {signum}; its running steps were ended", file=sys.stderr)
    os._exit(128 + signum)


def run_step(step: Step, log: Path) -> tuple[bool, float, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}
    started = time.perf_counter()
    proc = subprocess.Popen(
        step.argv, cwd=log.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    RUNNING.add(proc)
    try:
        output, _ = proc.communicate(timeout=900)
        problem = None if proc.returncode == 0 else f"exit code {proc.returncode}"
    except subprocess.TimeoutExpired:
        proc.kill()
        output, problem = proc.communicate()[0], "timed out after 900 s"
    finally:
        RUNNING.discard(proc)
    log.write_text(" ".join(step.argv) + "\n\n" + output)
    if problem is None and step.check is not None:
        problem = step.check(output)
    # on failure the output's tail ends with the reason, so the last line names it
    return problem is None, time.perf_counter() - started, output if problem is None else f"{output}\n{problem}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (runs, reports, logs)")
    parser.add_argument("--only", help="run only the steps whose name contains this")
    parser.add_argument("--jobs", type=int, default=4, help="steps of one phase that share the GPU at once")
    parser.add_argument("--keep-going", action="store_true", help="run every phase even after a failure")
    parser.add_argument("--phases", default="train,deploy,tests", help="which phases to run (comma-separated)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    import torch

    if not torch.cuda.is_available():
        print(
            "error: gpu-check needs a CUDA GPU and none is visible (torch.cuda.is_available() is False)",
            file=sys.stderr,
        )
        return 2
    from reparam.data.synthetic import write_cifar_like

    work = args.keep or Path(tempfile.mkdtemp(prefix="reparam-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    write_cifar_like(work / "data", "cifar10", per_batch=2000, n_test=1000)
    print(f"gpu-check on {torch.cuda.get_device_name()} (torch {torch.__version__}), work dir {work}", flush=True)
    total = time.perf_counter()
    chosen = [(i, step) for i, step in enumerate(steps(work)) if not args.only or args.only in step.name]
    failures: list[tuple[Step, str]] = []
    for phase in args.phases.split(","):
        batch = [(i, step) for i, step in chosen if step.phase == phase]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda item: run_step(item[1], work / f"step{item[0]:02d}.log"), batch))
        for (_, step), (ok, seconds, detail) in zip(batch, results, strict=True):
            print(f"  {'ok  ' if ok else 'FAIL'} {seconds:6.1f} s  {step.name}", flush=True)
            if not ok:
                failures.append((step, detail))
        if failures and not args.keep_going:
            break
    if failures:
        step, detail = failures[0]
        tail = "\n".join(detail.strip().splitlines()[-25:])
        print(
            f"\nerror: gpu-check failed at '{step.name}' ({len(failures)} step(s) failed): "
            f"{tail.splitlines()[-1] if tail else ''}\ncommand: {' '.join(step.argv)}\n"
            f"--- end of its output ---\n{tail}",
            file=sys.stderr,
        )
        return 1
    for report in sorted((work / "deploy").glob("*/report.json")):
        data = json.loads(report.read_text())
        print(f"  {report.parent.name}: disagreements {data.get('disagreements')}, speedup {data.get('speedup')}")
    print(f"gpu-check passed in {time.perf_counter() - total:.0f} s")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
