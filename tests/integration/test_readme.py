"""Every command and code snippet README.md shows, run the way a user types it.

Each ``bash`` block line of the README is run from a directory outside the checkout (a user's project directory that
holds CIFAR-10 in ./data, generated in the official format), in README order, with only these changes: the script
path (``python train.py`` -> ``python <checkout>/train.py``), placeholders (``<run>``, ``ckpt=...``, a data path),
one epoch and a few small batches (training, evaluation and the deploy benchmark; see ``BATCH_LIMITS`` and
``DEPLOY_LIMITS``: never a setting the line types itself). No ``hydra.run.dir`` / ``hydra.sweep.dir`` is added: runs
land where a user's would.
Lines whose comment starts with ``GPU`` run only where enough CUDA GPUs are visible (``make gpu-check`` runs them
there).
The ``python`` blocks are run as written, with ``<run>`` filled in.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import ROOT, write_fake_cifar

from reparam.data.synthetic import write_digits_folder

# the commands run once, in a module fixture (one xdist worker: --dist loadfile): the per-test timeout covers all of
# them. Not marked slow: make test runs every README command, as the README promises
pytestmark = pytest.mark.timeout(4800)

README = ROOT / "README.md"
BIN = Path(sys.executable).parent
# the only additions: one epoch, a few small batches (Lightning's limits), no sanity pass
LIMITS = [
    "++trainer.limit_train_batches=1",
    "++trainer.limit_val_batches=2",
    "++trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=0",
]
# small batches where the line sets none: RepVGG-A0 at CIFAR's 32x32 (stride plan [1,1,2,2,2]) costs about 1 GFLOP per
# image, so the default evaluation batch of 512 made each A0 command evaluate 2 TFLOP on one thread (minutes), and the
# fusion check's 256 images in float64 (no oneDNN kernels) took a minute or more per run
BATCH_LIMITS = {"data.batch_size": "32", "data.eval_batch_size": "32", "callbacks.reparameterize.verify_samples": "32"}
# deploy: the same limit on the benchmark (small batches, two short rounds: every target is still timed, with the
# spread of its rounds); each other setting (targets, INT8 calibration, export) as typed
DEPLOY_LIMITS = {"benchmark.batch_sizes": "[1,8]", "benchmark.rounds": "2", "benchmark.min_run_time": "0"}


def limited(argv: list[str], limits: dict[str, str]) -> list[str]:
    """``argv`` plus each limit the line does not set itself (a setting the user typed is run as typed) and its
    ``hparams_search=`` config does not search over (a fixed value would take it out of the search)."""
    typed = {a.lstrip("+").split("=", 1)[0] for a in argv if "=" in a}
    searched = {key for a in argv if a.startswith("hparams_search=") for key in searched_keys(a.split("=", 1)[1])}
    return argv + [f"++{key}={value}" for key, value in limits.items() if key not in typed | searched]


def searched_keys(search: str) -> set[str]:
    """The settings ``configs/hparams_search/<search>.yaml`` searches over (its sweeper's params)."""
    from omegaconf import OmegaConf

    params = OmegaConf.load(ROOT / "configs" / "hparams_search" / f"{search}.yaml").hydra.sweeper.params
    return {str(key) for key in params}


@dataclass(frozen=True)
class Command:
    line: str  # as README shows it
    comment: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.line)

    def gpus_needed(self) -> int | None:
        """None: runs anywhere; N: needs N CUDA GPUs (the comment starts with GPU); -1: needs several machines or a
        SLURM cluster (hydra/launcher=slurm...)."""
        if "num_nodes=" in self.line or "hydra/launcher=slurm" in self.line:
            return -1
        if not self.comment.startswith("GPU"):
            return None
        devices = re.search(r"trainer\.devices=(\d+)", self.line)
        return int(devices.group(1)) if devices else 1


def readme_commands() -> list[Command]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for raw in block.splitlines():
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue  # blank, or a comment continuing the line above
            line, _, comment = raw.partition("  # ")
            commands.append(Command(line.strip(), comment.strip()))
    return commands


def readme_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


COMMANDS = readme_commands()
# the GPU lines carry the gpu marker: `pytest -m gpu` (make gpu-check) runs them on a GPU machine
CASES = [pytest.param(c, id=c.line[:80], marks=[pytest.mark.gpu] if c.gpus_needed() else []) for c in COMMANDS]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    """A user's working directory outside the checkout, with CIFAR-10 where the default config looks (./data)."""
    where = tmp_path_factory.mktemp("user")
    # more training images than the default validation hold-out (5,000), as in the real dataset
    write_fake_cifar(where / "data", "cifar10", per_batch=1100, n_test=200)
    # "Train on your own images": a folder of image files, and timm weights in a local file (random, not downloaded)
    write_digits_folder(where / "my_images", per_class=12, splits=("train", "val", "test"))
    write_timm_weights(where / "repvgg_a0.safetensors", "repvgg_a0")
    # the user's own image files for `deploy.py predict=photos/`: two images and a file that is not one
    from PIL import Image

    (where / "photos").mkdir()
    for name, size in (("cat.png", (32, 32)), ("big.jpg", (120, 90))):
        Image.effect_noise(size, 50).convert("RGB").save(where / "photos" / name)
    (where / "photos" / "notes.txt").write_text("not an image")
    return where


def write_timm_weights(path: Path, name: str) -> None:
    import timm
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}, str(path))


@pytest.fixture(scope="module")
def env() -> dict:
    # two commands run at a time (see `outcomes`), one CPU thread each: the cores are shared, not oversubscribed
    return {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "WANDB_SILENT": "true",
        "MPLBACKEND": "Agg",
    }


@dataclass
class Outcome:
    what: str  # the line as README shows it, or what ran
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # wall time, printed by the fixture: where this test's minutes go

    def explain(self) -> str:
        return f"{self.what}\n(ran: {shlex.join(self.argv)})\n{self.stderr[-4000:]}"


def execute(what: str, argv: list[str], cwd: Path, env: dict) -> Outcome:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    return Outcome(what, argv, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)


def skip_reason(command: Command) -> str | None:
    needs = command.gpus_needed()
    if needs == -1:
        return "multi-node or SLURM: runs on a cluster"
    if needs and torch.cuda.device_count() < needs:
        return f"needs {needs} CUDA GPU(s); `make gpu-check` (pytest -m gpu) runs the GPU lines on a GPU machine"
    if command.argv[:2] == ["make", "test"]:
        return "make test runs this suite (CI runs it through .ci/run)"
    if command.argv[0] == "curl":
        return "asks a running server: tests/integration/test_serve.py runs this line against one (a real serve.py)"
    return None


def needs_a_run(text: str) -> bool:
    return "<run>" in text or "ckpt=..." in text


def as_run(command: Command, user_dir: Path, run: Path | None) -> list[str]:
    """The argv to execute: the checkout's script or console command, placeholders filled, epochs and batches cut."""
    argv = command.argv
    if argv[:2] == ["python", "-c"]:  # a one-liner: run as typed, with this environment's python
        return [sys.executable, *argv[1:]]
    if argv[0] == "python":
        argv = [sys.executable, str(ROOT / argv[1]), *argv[2:]]
    elif argv[0].startswith("reparam-"):
        argv = [str(BIN / argv[0]), *argv[1:]]
    else:
        raise AssertionError(f"README shows a command this test does not know how to run: {command.line}")
    if run is not None:  # <run>: the run of the README's first training command (python train.py)
        rel = run.relative_to(user_dir)
        argv = [a.replace("logs/train/runs/<run>", str(rel)) for a in argv]
        argv = [f"ckpt={rel}/checkpoints/last.ckpt" if a == "ckpt=..." else a for a in argv]
    argv = [a.replace("/elsewhere/cifar", str(user_dir / "data")) for a in argv]  # a data path
    if "serve.py" in argv[1] or argv[0].endswith("reparam-serve"):
        argv.append(
            "serve.dry_run=true"
        )  # the startup line, then exit: tests/integration/test_serve.py serves for real
    if "train.py" in argv[1] or argv[0].endswith("reparam-train"):
        argv = [re.sub(r"^trainer\.max_epochs=\d+$", "trainer.max_epochs=1", a) for a in argv]
        if not any(a.startswith("trainer.max_epochs=") for a in argv):
            argv.append("trainer.max_epochs=1")
        argv = limited(argv + LIMITS, BATCH_LIMITS)
    if "deploy.py" in argv[1] or argv[0].endswith("reparam-deploy"):
        argv = limited(argv, {} if any(a.startswith("predict=") for a in argv) else DEPLOY_LIMITS)
    return argv


def make_target(target: str, user_dir: Path, env: dict) -> Outcome:
    """``make <target>`` minus the install (this suite runs inside that install): the commands ``make -n`` prints,
    with the output folder in ``user_dir`` and one epoch. Returns the first failure, or the last success."""
    # a make that runs this suite (make test) passes MAKELEVEL/MAKEFLAGS down, and a nested make then prints
    # "make[1]: Entering directory" lines; this make is a top-level one, as the user's is
    top_level = {k: v for k, v in env.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"DEMO_DIR={user_dir / 'demo-make'}"],
        cwd=ROOT,
        env=top_level,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    outcome = None
    for line in dry.splitlines():
        argv = shlex.split(line)
        if not argv or "pip" in argv or "venv" in argv or argv[0] == "rm":
            continue  # the install and the clean-up
        assert argv[0].endswith("bin/python"), f"make {target} runs something this test does not know: {line}"
        argv = [sys.executable, *argv[1:]]
        if argv[1] == "train.py":
            argv = limited([*argv, "trainer.max_epochs=1", *LIMITS], BATCH_LIMITS)
        if argv[1] == "deploy.py":
            argv = limited(argv, DEPLOY_LIMITS)
        outcome = execute(f"make {target}: {line}", argv, ROOT, env)
        if outcome.returncode != 0:
            return outcome
    assert outcome is not None, f"make {target} ran nothing:\n{dry}"
    return outcome


def run_dir_of(outcome: Outcome) -> Path:
    found = re.search(r"next: .*? ckpt=(\S+)/fused", outcome.stdout)
    assert found, f"no run directory in the output of {outcome.what}:\n{outcome.stdout[-2000:]}"
    return Path(found.group(1))


@pytest.fixture(scope="module")
def outcomes(user_dir: Path, env: dict) -> dict[str, Outcome]:
    """Every runnable README command and snippet, run once, two at a time; those with ``<run>`` after the first
    training run. Commands sharing the MLflow store (logs/mlflow.db) take turns."""
    mlflow_store = threading.Lock()
    searched = threading.Event()  # a search resumed (hparams_search.resume=true) waits for the search it resumes
    snippets = dict(enumerate(readme_snippets()))

    def command_task(command: Command, run: Path | None) -> Outcome:
        if command.argv[0] == "make":
            return make_target(command.argv[1], user_dir, env)
        argv = as_run(command, user_dir, run)
        if "logger=mlflow" in command.line:
            with mlflow_store:
                return execute(command.line, argv, user_dir, env)
        if "hparams_search.resume=true" in command.line:
            searched.wait()
        try:
            return execute(command.line, argv, user_dir, env)
        finally:
            if "hparams_search=" in command.line:
                searched.set()

    def snippet_task(index: int, run: Path | None) -> Outcome:
        code = snippets[index]
        if run is not None:
            code = code.replace("logs/train/runs/<run>", str(run))
        return execute(f"README python snippet {index}", [sys.executable, "-c", code], user_dir, env)

    runnable = [c for c in COMMANDS if skip_reason(c) is None]
    first = next(c for c in runnable if c.line == "python train.py")
    results: dict[str, Outcome] = {}
    # a line whose ckpt= is the fixed hydra.run.dir= of another line runs after that one
    fixed_dirs = {a.split("=", 1)[1]: c for c in runnable for a in c.argv if a.startswith("hydra.run.dir=")}

    def producer(command: Command) -> Command | None:
        return next(
            (
                fixed_dirs[a.split("=", 1)[1]]
                for a in command.argv
                if a.startswith("ckpt=") and a.split("=", 1)[1] in fixed_dirs
            ),
            None,
        )

    def after(future, command: Command) -> Outcome:
        future.result()
        return command_task(command, None)

    with ThreadPoolExecutor(max_workers=2) as pool:
        head = pool.submit(command_task, first, None)
        independent = [c for c in runnable if c is not first and not needs_a_run(c.line) and producer(c) is None]
        started = {c.line: pool.submit(command_task, c, None) for c in independent}
        later = {future: line for line, future in started.items()}
        later |= {
            pool.submit(after, started[producer(c).line], c): c.line
            for c in runnable
            if c is not first and not needs_a_run(c.line) and producer(c) is not None
        }
        later |= {
            pool.submit(snippet_task, i, None): f"snippet {i}" for i, code in snippets.items() if not needs_a_run(code)
        }
        results[first.line] = head.result()
        run = run_dir_of(results[first.line]) if results[first.line].returncode == 0 else None
        if run is not None:
            later |= {pool.submit(command_task, c, run): c.line for c in runnable if needs_a_run(c.line)}
            later |= {
                pool.submit(snippet_task, i, run): f"snippet {i}" for i, code in snippets.items() if needs_a_run(code)
            }
        for future, key in later.items():
            results[key] = future.result()
    # shown with `pytest -rP` (captured setup output): the slowest commands first
    for key, outcome in sorted(results.items(), key=lambda item: -item[1].seconds):
        print(f"{outcome.seconds:7.1f}s  {key}")
    return results


@pytest.mark.parametrize("command", CASES)
def test_readme_command_runs_as_typed(command: Command, outcomes: dict[str, Outcome]) -> None:
    reason = skip_reason(command)
    if reason:
        pytest.skip(reason)
    if command.line not in outcomes:
        pytest.fail(f"not run: {command.line} needs <run>, and the README's first training command failed")
    outcome = outcomes[command.line]
    assert outcome.returncode == 0, outcome.explain()
    assert "Traceback" not in outcome.stderr, outcome.explain()
    if command.argv[1:2] == ["-m"]:  # a sweep: every job ran, and the table names its summary file
        found = re.search(r"sweep summary: (\S+)", outcome.stdout)
        assert found, outcome.stdout[-2000:]
        report = json.loads(Path(found.group(1)).read_text())
        assert report["failed"] == 0 and all(r["status"] == "ok" for r in report["runs"])
        assert len(report["runs"]) == sweep_size(command.line)


def sweep_size(line: str) -> int:
    """Runs a -m line makes: the product of its comma lists, or a search's hparams_search.n_trials."""
    trials = re.search(r"hparams_search\.n_trials=(\d+)", line)
    if trials:
        return int(trials.group(1))
    size = 1
    for arg in shlex.split(line):
        if "=" in arg and "," in arg.split("=", 1)[1] and "[" not in arg:
            size *= len(arg.split("=", 1)[1].split(","))
    return size


@pytest.mark.parametrize("index", range(len(readme_snippets())))
def test_readme_python_snippet_runs(index: int, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes.get(f"snippet {index}")
    if outcome is None:
        pytest.fail("not run: the snippet needs <run>, and the README's first training command failed")
    assert outcome.returncode == 0, outcome.explain()


def test_the_readme_shows_what_this_test_runs() -> None:
    """The parser sees the two commands, the sweeps, the deploy lines and the snippets (a silent parse is no test)."""
    lines = [c.line for c in COMMANDS]
    assert lines[:2] == ["make demo", "make test"]
    assert "python train.py" in lines
    assert sweep_size("python train.py -m a=1,2 b=x,y,z c=[1,2]") == 6
    assert sweep_size("python train.py -m hparams_search=demo hparams_search.n_trials=5 'a=choice(1,2)'") == 5
    assert any(line.startswith("python train.py -m ") for line in lines)
    assert any(line.startswith("python deploy.py ") for line in lines)
    assert any(needs_a_run(line) for line in lines) and len(readme_snippets()) >= 2
    # the test digit for the curl example runs as typed; the curl line itself needs a server
    digit = next(c for c in COMMANDS if c.line.startswith("python -c ") and "digit.png" in c.line)
    assert as_run(digit, ROOT, None) == [sys.executable, "-c", digit.argv[2]] and skip_reason(digit) is None
    assert [skip_reason(c) is not None for c in COMMANDS if c.argv[0] == "curl"] == [True]
    assert "data.batch_size" in searched_keys("demo")  # a search's own settings get no limit
    assert "++data.batch_size=32" not in limited(["hparams_search=demo"], BATCH_LIMITS)
    assert [c.gpus_needed() for c in COMMANDS if "trainer=ddp" in c.line] == [4, -1]
    assert [c.gpus_needed() for c in COMMANDS if "hydra/launcher=slurm" in c.line] == [-1]
