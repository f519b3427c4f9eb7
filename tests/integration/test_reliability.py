"""Nothing lost, nothing unsafe loaded: interruption, determinism, divergence, crashes while writing."""

import csv
import json
import os
import pickle
import shlex
import stat
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_SPEC, InjectNaN, compose_config, run_entry
from safetensors.torch import load_file

from reparam.artifact import read_fused_artifact, write_fused_artifact
from reparam.callbacks import DivergenceError
from reparam.deploy.load import load_for_deploy
from reparam.errors import UserError
from reparam.training import train

pytestmark = pytest.mark.slow

# 3 epochs of 4 steps, deterministic kernels, standard DataLoader path in-process (num_workers=0)
RUN = [
    "model=repvgg_tiny",
    "model.widths=[8,8,16,16,32]",
    "debug=limit",
    "trainer.max_epochs=3",
    "data.val_size=40",
    "data.batch_size=16",
    "trainer.deterministic=true",
    "test=false",
    "seed=7",
]


def fused_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "fused" / "model.safetensors")


def learned_metrics(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without the speed/* columns (wall-clock rates differ between any two runs), row by row."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = [{k: v for k, v in row.items() if not k.startswith("speed/")} for row in csv.DictReader(f)]
    assert rows and all("epoch" in row for row in rows)
    return [row for row in rows if any(v for k, v in row.items() if k not in ("epoch", "step"))]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def uninterrupted(cifar_root, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    train(compose_config("train", [*RUN, f"paths.data_dir={cifar_root}"], run_dir=run_dir))
    return run_dir


EXIT_CODES = {"SIGTERM": 143, "SIGINT": 130}  # 128 + the signal: what SLURM and shells expect (not 1, 2 or 0)


# how the run is resumed: the user's auto_resume=true, or SLURM restarting the requeued job (auto_resume left null)
SLURM_RESTART = {"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "1"}


@pytest.mark.parametrize(
    ("signal_name", "resume_by"),
    [
        ("SIGKILL", "auto_resume=true"),
        ("SIGTERM", "auto_resume=true"),
        ("SIGINT", "auto_resume=true"),
        ("SIGTERM", "a SLURM restart"),
    ],
)
def test_killed_run_resumes_to_the_same_fused_model(
    signal_name, resume_by, uninterrupted, cifar_root, tmp_path, run_env
) -> None:
    run_env = {**run_env, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), run_env.get("PYTHONPATH", "")])}
    args = [*RUN, f"paths.data_dir={cifar_root}", f"hydra.run.dir={tmp_path}", "data.num_workers=0"]
    # killed in the middle of epoch 1 (global step 6 of 12); last.ckpt holds the end of epoch 0
    killed = run_entry(
        "train.py",
        [
            *args,
            "+callbacks.kill._target_=helpers.KillAtStep",
            "+callbacks.kill.step=6",
            f"+callbacks.kill.signal={signal_name}",
        ],
        run_env,
    )
    assert killed.returncode != 0
    if signal_name in EXIT_CODES:
        how = {"SIGTERM": "SIGTERM", "SIGINT": "Ctrl-C"}[signal_name]
        assert killed.returncode == EXIT_CODES[signal_name], killed.stderr[-2000:]
        errors = [line for line in killed.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and f"training stopped by {how} at epoch 1, global step 6" in errors[0]
        # the whole command, with the run's own overrides: without them last.ckpt holds another network
        assert errors[0].endswith(f"auto_resume=true hydra.run.dir={tmp_path}")
        printed = shlex.split(errors[0].split("Resume with: python train.py ", 1)[1])
        assert printed[: len(args) - 1] == [a for a in args if not a.startswith("hydra.run.dir=")]
        assert "Traceback" not in killed.stderr
        assert "error: " + errors[0][7:] in (tmp_path / "train.log").read_text()  # the log says it too
    assert not (tmp_path / "fused").exists()
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    if resume_by == "a SLURM restart":  # from the run's own last.ckpt, even with the ckpt_path the job began from
        (began,) = (tmp_path / "checkpoints").glob("epoch000*.ckpt")
        resumed = run_entry("train.py", [*args, f"ckpt_path={began}"], {**run_env, **SLURM_RESTART})
        last = tmp_path / "checkpoints" / "last.ckpt"
        said = f"SLURM restarted this job (restart 1): resuming from {last}; it began from ckpt_path={began}"
        assert said in resumed.stderr, resumed.stderr[-3000:]
    elif signal_name in EXIT_CODES:  # the command the error printed, less this test's own kill callback
        resumed = run_entry("train.py", [a for a in printed if not a.startswith("+callbacks.kill")], run_env)
    else:  # SIGKILL: nothing was printed
        resumed = run_entry("train.py", [*args, "auto_resume=true"], run_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.stdout + resumed.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["resumed_from"] == str(
        tmp_path / "checkpoints" / "last.ckpt"
    )
    assert_same_weights(fused_weights(uninterrupted), fused_weights(tmp_path))
    # the resumed run continued its metrics: every epoch once, as in the run that was never stopped
    assert learned_metrics(tmp_path) == learned_metrics(uninterrupted)
    # the speed of every epoch too (epoch 0's row, logged at the checkpoint's step, was dropped on resuming)
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        timed = [float(row["epoch"]) for row in csv.DictReader(f) if row.get("speed/epoch_time_s")]
    assert timed == [0.0, 1.0, 2.0]


def test_a_run_with_persistent_workers_resumes_to_the_same_fused_model(cifar_root, tmp_path, run_env) -> None:
    """DataLoader workers (the default: 2, persistent) are seeded once when they start: the resumed run's new
    workers augmented the replayed epoch otherwise than the uninterrupted run's (a new user's CIFAR run: epoch 2's
    losses differed from its second step, fused weights by up to 0.25). Each image now carries its own seed."""
    run_env = {**run_env, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), run_env.get("PYTHONPATH", "")])}
    args = [*RUN, f"paths.data_dir={cifar_root}", "data.num_workers=2", "data.persistent_workers=true"]
    whole = run_entry("train.py", [*args, f"hydra.run.dir={tmp_path / 'whole'}"], run_env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    stopped = [*args, f"hydra.run.dir={tmp_path / 'stopped'}"]
    kill = ["+callbacks.kill._target_=helpers.KillAtStep", "+callbacks.kill.step=6", "+callbacks.kill.signal=SIGKILL"]
    assert run_entry("train.py", [*stopped, *kill], run_env).returncode != 0
    resumed = run_entry("train.py", [*stopped, "auto_resume=true"], run_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["resumed_from"]
    assert_same_weights(fused_weights(tmp_path / "whole"), fused_weights(tmp_path / "stopped"))
    assert learned_metrics(tmp_path / "stopped") == learned_metrics(tmp_path / "whole")


def test_sigterm_to_the_whole_process_group_stops_cleanly(cifar_root, tmp_path, run_env) -> None:
    """SLURM ends a job by sending SIGTERM to all its processes: the DataLoader workers died first and training
    failed with exit 1 and a traceback ('DataLoader worker ... is killed by signal: Terminated')."""
    import subprocess
    import sys

    run_env = {**run_env, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), run_env.get("PYTHONPATH", "")])}
    args = [*RUN, f"paths.data_dir={cifar_root}", "data.num_workers=2", f"hydra.run.dir={tmp_path}"]
    kill = ["+callbacks.kill._target_=helpers.KillAtStep", "+callbacks.kill.step=6", "+callbacks.kill.signal=SIGTERM"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, *kill, "+callbacks.kill.group=true"],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,  # its own process group, which it signals
    )
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "killed by signal" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "training stopped by SIGTERM at epoch 1, global step 6" in errors[0], errors
    assert "Resume with: python train.py" in errors[0]
    # the run's record says so too (before: no summary.json, as if it were still training)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], f"error: {summary['error']}", summary["epochs"]) == ("interrupted", errors[0], 1)
    assert Path(summary["best_checkpoint"]).is_file() and summary["fused_dir"] is None


def test_ctrl_c_during_the_test_phase_still_writes_the_summary(cifar_root, tmp_path, run_env) -> None:
    run_env = {**run_env, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), run_env.get("PYTHONPATH", "")])}
    args = [
        *RUN,
        "trainer.max_epochs=1",
        "test=true",
        f"paths.data_dir={cifar_root}",
        f"hydra.run.dir={tmp_path}",
        "+callbacks.kill._target_=helpers.KillAtStep",
        "+callbacks.kill.phase=test",
        "+callbacks.kill.signal=SIGINT",
    ]
    proc = run_entry("train.py", args, run_env)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "the test phase stopped by Ctrl-C" in errors[0]
    assert f"python deploy.py ckpt={tmp_path / 'fused'}" in errors[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["fused_dir"] == str(tmp_path / "fused")
    assert summary["test_acc"] is None and summary["fusion_argmax_agreement"] == 1.0


def test_resuming_with_a_checkpoint_of_another_network_is_one_clear_line(uninterrupted, cifar_root, tmp_path) -> None:
    last = uninterrupted / "checkpoints" / "last.ckpt"  # a 10-class network, resumed into a 100-class config
    with pytest.raises(UserError, match=r"holds another network than this config builds \(size mismatch for head") as e:
        train(
            compose_config(
                "train", [*RUN, f"paths.data_dir={cifar_root}", "data=cifar100", f"ckpt_path={last}"], run_dir=tmp_path
            )
        )
    # the command that trained it, recorded in the checkpoint (the run's .hydra/ may have been overwritten since)
    # ...and the checkpoint again: without ckpt_path= the pasted command started a new run instead of resuming
    trained_with = " ".join(shlex.quote(o) for o in [*RUN, f"paths.data_dir={cifar_root}", f"ckpt_path={last}"])
    assert f"resume with the settings it was trained with: python train.py {trained_with}, or drop" in str(e.value)


def test_ckpt_path_naming_a_run_folder_says_which_file_to_give(uninterrupted, cifar_root, tmp_path) -> None:
    """ckpt_path=<run dir> said 'does not exist' of a folder that exists."""
    cfg = compose_config("train", [*RUN, f"paths.data_dir={cifar_root}", f"ckpt_path={uninterrupted}"], tmp_path)
    with pytest.raises(UserError) as e:
        train(cfg)
    last = uninterrupted / "checkpoints" / "last.ckpt"
    assert str(e.value) == (
        f"ckpt_path={uninterrupted} is a folder, not a checkpoint file; resume with ckpt_path={last}, or continue "
        f"that run in its own directory: auto_resume=true hydra.run.dir={uninterrupted}"
    )


def test_deterministic_runs_are_identical(uninterrupted, cifar_root, tmp_path) -> None:
    train(compose_config("train", [*RUN, f"paths.data_dir={cifar_root}"], run_dir=tmp_path))
    assert_same_weights(fused_weights(uninterrupted), fused_weights(tmp_path))
    assert learned_metrics(uninterrupted) == learned_metrics(tmp_path)


def test_nan_loss_stops_training_with_the_step_and_writes_nothing(cifar_root, tmp_path) -> None:
    cfg = compose_config("train", [*RUN, f"paths.data_dir={cifar_root}"], run_dir=tmp_path)
    from reparam import training

    original = training.instantiate_group
    training.instantiate_group = lambda group: original(group) + ([InjectNaN(step=5)] if group is cfg.callbacks else [])
    try:
        with pytest.raises(DivergenceError, match=r"loss became nan at epoch 1, batch 1 \(global step 5\)"):
            train(cfg)
    finally:
        training.instantiate_group = original
    assert not (tmp_path / "fused").exists()
    # summary.json records the failure and what the run got to (before: nothing), and deploy says which weights
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs"] == 1 and summary["fused_dir"] is None
    assert summary["error"].startswith("training diverged: the loss became nan at epoch 1, batch 1 (global step 5)")
    best = Path(summary["best_checkpoint"])
    assert best.is_file() and best.parent == tmp_path / "checkpoints"
    loaded = load_for_deploy(str(tmp_path))
    assert loaded.source == best
    assert loaded.chosen_because == "the best checkpoint so far (summary.json: training failed before the end)"


def test_crash_while_writing_leaves_the_previous_artifact_or_none(tmp_path, monkeypatch) -> None:
    from reparam import artifact
    from reparam.models import build_model

    model = build_model({"variant": None, "widths": [4, 4, 4, 4, 4], "depths": [1, 1, 1, 1, 1]}, deploy=True)
    target = tmp_path / "fused"
    write_fused_artifact(target, model, {"model": model.spec.to_dict()}, {"ok": True})
    before = (target / "model.safetensors").read_bytes()

    def crash(state, path, metadata=None):
        Path(path).write_bytes(b"partial")  # half-written, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        write_fused_artifact(target, model, {"model": model.spec.to_dict()}, {"ok": True})
    assert (target / "model.safetensors").read_bytes() == before  # the previous artifact is intact
    assert read_fused_artifact(target).model.is_fused
    assert [p.name for p in tmp_path.iterdir()] == ["fused"]  # no temporary folder left behind
    with pytest.raises(KeyboardInterrupt):
        write_fused_artifact(tmp_path / "new", model, {"model": model.spec.to_dict()}, {})
    assert not (tmp_path / "new").exists()


def test_callback_refuses_an_artifact_that_fails_verification(cifar_root, tmp_path, monkeypatch) -> None:
    from reparam import callbacks

    real = callbacks.fuse_model

    def broken(spec, model, example_inputs=None):  # a fusion bug: the fused head is off by one
        fused = real(spec, model, example_inputs)
        with torch.no_grad():
            fused.head.bias.add_(1.0)
        return fused

    monkeypatch.setattr(callbacks, "fuse_model", broken)
    from reparam.convert import EquivalenceError

    with pytest.raises(EquivalenceError, match="fused model differs") as info:
        train(compose_config("train", [*RUN, f"paths.data_dir={cifar_root}", "trainer.max_epochs=1"], run_dir=tmp_path))
    assert str(info.value).endswith("; every block alone fuses exactly: the difference is outside the blocks")
    assert not (tmp_path / "fused").exists()


def test_resume_from_a_malicious_checkpoint_is_refused(cifar_root, tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Exploit()}, evil, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(UserError, match="refusing to load"):
        train(compose_config("train", [*RUN, f"paths.data_dir={cifar_root}", f"ckpt_path={evil}"], run_dir=tmp_path))
    assert not marker.exists()


def test_corrupt_cifar_file_from_the_command_line(cifar_root, tmp_path, run_env) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(cifar_root / "cifar-10-batches-py", data / "cifar-10-batches-py")
    path = data / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:1000])
    proc = run_entry("train.py", [*RUN, f"paths.data_dir={data}", f"hydra.run.dir={tmp_path / 'run'}"], run_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data_batch_2 is not a readable CIFAR pickle" in proc.stderr


def test_results_follow_the_umask(tmp_path) -> None:
    """Atomic writes use mkstemp/mkdtemp (0600/0700); the results must still be readable as the umask allows."""
    from reparam.artifact import atomic_write_json, write_fused_artifact
    from reparam.models import build_model

    old = os.umask(0o022)
    try:
        report = atomic_write_json(tmp_path / "report.json", {"a": 1})
        fused = write_fused_artifact(tmp_path / "fused", build_model(TINY_SPEC, deploy=True), {"model": TINY_SPEC}, {})
        os.umask(0o027)
        private = atomic_write_json(tmp_path / "team.json", {"b": 2})
    finally:
        os.umask(old)
    assert stat.S_IMODE(report.stat().st_mode) == 0o644
    assert stat.S_IMODE(fused.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in fused.iterdir())
    assert stat.S_IMODE(private.stat().st_mode) == 0o640


def test_a_resumed_ema_run_ends_with_the_same_averaged_weights(cifar_root, tmp_path) -> None:
    # a constant learning rate: the schedule of a 1-epoch run and of a 2-epoch run must not differ
    args = [*RUN, f"paths.data_dir={cifar_root}", "callbacks=ema", "callbacks.ema.decay=0.9", "scheduler=constant"]
    train(compose_config("train", [*args, "trainer.max_epochs=2"], run_dir=tmp_path / "whole"))
    train(compose_config("train", [*args, "trainer.max_epochs=1"], run_dir=tmp_path / "first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    train(compose_config("train", [*args, "trainer.max_epochs=2", f"ckpt_path={last}"], run_dir=tmp_path / "resumed"))
    assert_same_weights(fused_weights(tmp_path / "whole"), fused_weights(tmp_path / "resumed"))
    ckpt = lambda d: torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)  # noqa: E731
    whole, resumed = ckpt(tmp_path / "whole"), ckpt(tmp_path / "resumed")
    assert_same_weights(whole["state_dict"], resumed["state_dict"])  # what the checkpoint ships
    assert_same_weights(whole["averaged_model_state"], resumed["averaged_model_state"])  # the average, its BN stats
    assert_same_weights(whole["current_model_state"], resumed["current_model_state"])  # the raw weights
    assert whole["weight_averaging"] == resumed["weight_averaging"]
    assert whole["global_step"] == resumed["global_step"] == 8  # last.ckpt is the last step, not the best epoch


@pytest.mark.parametrize("then", ["nothing", "SIGTERM"])
def test_a_sweep_whose_console_went_away_stops_instead_of_failing_job_after_job(then, tmp_path, run_env) -> None:
    """``train.py -m ... | tee log`` with ``tee`` killed, or a parent that captured the output and died: before, the
    job's first write raised BrokenPipeError, the job counted as failed, the sweep started the next one, and a SIGTERM
    then was lost with its error line (the print raised). Now the sweep ends as SIGPIPE would (141), or with 143."""
    import signal
    import subprocess
    import sys
    import time

    sweep = tmp_path / "sweep"
    args = [
        "experiment=demo",
        "trainer.max_epochs=50",
        "logger=none",
        "optimizer.lr=0.05,0.1",
        "callbacks.reparameterize.verify_samples=8",
        f"hydra.sweep.dir={sweep}",
    ]
    # one pipe for stdout and stderr, drained as the console would be until its reader goes away
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", *args],
        cwd=tmp_path,
        env=run_env,
        stdout=write_end,
        stderr=write_end,
    )
    os.close(write_end)
    os.set_blocking(read_end, False)
    deadline = time.monotonic() + 300
    while not (sweep / "0" / "checkpoints" / "last.ckpt").exists():  # inside the first job, 49 epochs to go
        assert proc.poll() is None and time.monotonic() < deadline, "the first job never finished an epoch"
        try:
            while os.read(read_end, 1 << 16):
                pass
        except BlockingIOError:
            time.sleep(0.05)
    os.close(read_end)  # the reader goes away
    if then == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    returncode = proc.wait(timeout=120)
    # with a SIGTERM too, whichever comes first ends it: the signal (143) or the next write (141)
    assert returncode in ({141} if then == "nothing" else {141, 143})
    assert not (sweep / "1").exists(), "the sweep went on to the next job"
    log = (sweep / "0" / "train.log").read_text()
    if returncode == 141:
        assert "error: stopped: the console this run wrote to was closed" in log
        summary = json.loads((sweep / "0" / "summary.json").read_text())
        assert summary["status"] == "interrupted" and "console this run wrote to was closed" in summary["error"]
    else:  # the SIGTERM's own line, in the log though not on the console
        assert "error: training stopped by SIGTERM at epoch" in log
        summary = json.loads((sweep / "0" / "summary.json").read_text())
        assert summary["status"] == "interrupted" and "training stopped by SIGTERM" in summary["error"]
    # training's record, with how far it got (not the sweep's bare one, which has the status alone)
    assert summary["epochs"] >= 1 and Path(summary["last_checkpoint"]).is_file(), summary
