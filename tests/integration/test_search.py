"""Sweeps and searches as a user runs them: real submitit processes, a real Optuna study in SQLite, a real SIGTERM.

Every job is the offline demo made tiny (a narrow network, a few batches, two epochs): the launcher, the study and the
collection of results are what is tested, and they are the real ones.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from helpers import ROOT, run_entry
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

TINY = [
    "experiment=demo",
    "model.widths=[8,8,16,16,32]",
    "debug=limit",
    "data.batch_size=16",
    "data.eval_batch_size=64",
    "trainer.limit_train_batches=3",
    "logger=none",
]


def report(sweep: Path) -> dict:
    return json.loads((sweep / "sweep_summary.json").read_text())


def study(sweep: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep / 'optuna.db'}")


def span(run_dir: Path) -> tuple[float, float]:
    """When a job started (Hydra writes .hydra/ first) and ended (summary.json, written last)."""
    return (run_dir / ".hydra" / "config.yaml").stat().st_mtime, (run_dir / "summary.json").stat().st_mtime


def test_submitit_local_sweep_runs_two_jobs_at_a_time_and_the_table_collects_all(tmp_path: Path, run_env) -> None:
    sweep = tmp_path / "sweep"
    proc = run_entry(
        "train.py",
        [
            "-m",
            *TINY,
            "optimizer.lr=0.02,0.05,0.1,0.2",
            "hydra/launcher=local",
            "hydra.sweeper.max_batch_size=2",
            f"hydra.sweep.dir={sweep}",
        ],
        run_env,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = report(sweep)["runs"]
    assert sorted(r["job"] for r in runs) == [0, 1, 2, 3] and {r["status"] for r in runs} == {"ok"}
    for run in runs:  # collected from the launcher's returns although each job ran in a process of its own
        assert run["summary"] == json.loads((sweep / str(run["job"]) / "summary.json").read_text())
        assert run["value"] == run["summary"]["best_val_acc"]
        assert run["summary"]["cpu_threads"] == 1  # hydra/launcher=local gives each job one core
    assert any((sweep / ".submitit").iterdir())  # submitit's job folders: the jobs were its processes
    spans = [span(sweep / str(job)) for job in range(4)]
    for a, b in ((0, 1), (2, 3)):  # the two jobs of a batch overlap in time ...
        assert max(spans[a][0], spans[b][0]) < min(spans[a][1], spans[b][1])
    assert min(spans[2][0], spans[3][0]) >= max(spans[0][1], spans[1][1]) - 1  # ... and batches follow each other
    # each job ran with one thread: the command that reproduces the best says so (where one is not the default)
    threads = "OMP_NUM_THREADS=1 " if torch.get_num_threads() != 1 else ""
    assert "sweep of 4 runs" in proc.stdout and f"to reproduce it: {threads}python train.py" in proc.stdout


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_grid_sweep_stopped_in_a_job_shows_the_jobs_done_and_continues_with_the_command_it_prints(
    signal_name, tmp_path: Path, run_env
) -> None:
    """Ctrl-C or SIGTERM in job 1 of 3 (the job sends itself the signal at step 4; job 0 runs to its end): the table
    of job 0, sweep_summary.json with it, and one line naming jobs 1 and 2 by what the sweep varied, with the command
    that continues the sweep; that command, as printed, keeps job 0, resumes job 1 from its last.ckpt, runs job 2."""
    sweep = tmp_path / "sweep"
    env = {**run_env, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), run_env.get("PYTHONPATH", "")])}
    overrides = [
        *TINY,
        "+callbacks.kill._target_=helpers.KillAtStep",
        f"+callbacks.kill.signal={signal_name}",
        f"+callbacks.kill.once={tmp_path / 'killed'}",  # the continued sweep runs with the same overrides
        "+callbacks.kill.step=1000,4,1000",  # job 0 never reaches step 1000; job 1 stops in epoch 1
    ]
    proc = run_entry("train.py", ["-m", *overrides, f"hydra.sweep.dir={sweep}"], env, cwd=tmp_path)
    assert proc.returncode == {"SIGINT": 130, "SIGTERM": 143}[signal_name], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "reparam: sweep of 1 run, stopped before 2 more" in proc.stdout
    # the last line: the stopped job's progress bar is closed where it stopped, not printed again at exit
    assert proc.stdout.rstrip().splitlines()[-1] == f"sweep summary: {sweep / 'sweep_summary.json'}"
    assert [r["job"] for r in report(sweep)["runs"]] == [0] and report(sweep)["counts"]["ok"] == 1
    assert report(sweep)["stopped"] == {"jobs": 3, "not_done": [1, 2]}
    lines = proc.stderr.splitlines()
    (stopped_job,) = [line for line in lines if line.startswith("error: training stopped by")]
    # the job points to the sweep's way on, not to resuming itself alone (which would leave the sweep's table)
    assert stopped_job.endswith(
        "The sweep's last line gives the command that continues the sweep (this job resumes from its checkpoint)."
    )
    stopped, _, command = lines[-1].partition(". Continue it with: python train.py ")
    assert stopped == (
        "the sweep stopped with 1 of 3 jobs done; not done: job 1 (+callbacks.kill.step=4), "
        "job 2 (+callbacks.kill.step=1000)"
    )
    assert command.endswith(f"auto_resume=true hydra.sweep.dir={sweep}"), lines[-1]
    assert not (sweep / "2").exists()
    job0 = (sweep / "0" / "summary.json").stat().st_mtime_ns
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()  # epoch 0 of job 1

    again = run_entry("train.py", shlex.split(command), env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing the sweep in {sweep}: 1 of 3 jobs done before" in again.stdout
    assert "reparam: sweep of 3 runs (sorted by" in again.stdout and "stopped before" not in again.stdout
    summary = report(sweep)
    assert sorted(r["job"] for r in summary["runs"]) == [0, 1, 2] and summary["counts"]["ok"] == 3
    assert summary["stopped"] is None
    assert (sweep / "0" / "summary.json").stat().st_mtime_ns == job0  # kept, not trained again
    job1 = next(r for r in summary["runs"] if r["job"] == 1)  # went on from its epoch 0
    assert job1["summary"]["resumed_from"] == str(sweep / "1" / "checkpoints" / "last.ckpt")
    assert next(r for r in summary["runs"] if r["job"] == 2)["summary"]["resumed_from"] is None


def test_local_launcher_gives_each_job_running_at_once_a_gpu_of_its_own(tmp_path: Path, run_env) -> None:
    """submitit_local alone gives every job the first GPUs; hydra/launcher=local slices the machine's (here the ids
    CUDA_VISIBLE_DEVICES names: the jobs train on the CPU, the ids are what each job was given)."""
    sweep = tmp_path / "sweep"
    args = [*TINY, "trainer=cpu", "hydra/launcher=local", "hydra.sweeper.max_batch_size=2"]
    args += ["hydra.launcher.gpus_per_node=1", f"hydra.sweep.dir={sweep}"]
    proc = run_entry("train.py", ["-m", *args, "optimizer.lr=0.05,0.1"], {**run_env, "CUDA_VISIBLE_DEVICES": "2,3"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert {r["status"] for r in report(sweep)["runs"]} == {"ok"} and len(report(sweep)["runs"]) == 2
    given = [line for log in (sweep / ".submitit").glob("*/*_log.err") for line in log.read_text().splitlines()]
    assert sorted(line for line in given if line.startswith("reparam: job")) == [
        "reparam: job 0 uses CUDA_VISIBLE_DEVICES=2 of the GPUs 2,3",
        "reparam: job 1 uses CUDA_VISIBLE_DEVICES=3 of the GPUs 2,3",
    ]
    spans = [span(sweep / str(job)) for job in range(2)]
    assert max(spans[0][0], spans[1][0]) < min(spans[0][1], spans[1][1])  # at the same time, on different GPUs

    # no GPU to give: one line, before any job starts
    none = run_entry("train.py", ["-m", *args, "optimizer.lr=0.05,0.1"], {**run_env, "CUDA_VISIBLE_DEVICES": ""})
    errors = [line for line in none.stderr.splitlines() if line.startswith("error: ")]
    assert none.returncode == 2 and "Traceback" not in none.stderr, none.stderr[-3000:]
    assert len(errors) == 1 and "hydra.launcher.gpus_per_node=1 but this machine shows 0 GPUs" in errors[0]


def local_search(tmp_path: Path, run_env: dict, *overrides: str, kill: str | None = None):
    """``train.py -m`` with an Optuna search (study ``s``, no pruning) through ``hydra/launcher=local``, in
    ``tmp_path/search``; with ``kill``, the first trial to end step 1 sends itself that signal (once)."""
    killing = [
        "+callbacks.kill._target_=helpers.KillAtStep",
        "+callbacks.kill.step=1",
        f"+callbacks.kill.signal={kill}",
        f"+callbacks.kill.once={tmp_path / 'killed'}",
    ]
    sweep = tmp_path / "search"
    proc = run_entry(
        "train.py",
        [
            "-m",
            *TINY,
            "hparams_search=optuna",
            "hparams_search.study_name=s",
            "hparams_search.pruner=none",
            "hydra/launcher=local",
            *overrides,
            *(killing if kill else []),
            f"hydra.sweep.dir={sweep}",
        ],
        {**run_env, "PYTHONPATH": str(ROOT / "tests")} if kill else run_env,
        timeout=1200,
    )
    return sweep, proc


def test_optuna_search_through_submitit_local_records_every_trial(tmp_path: Path, run_env) -> None:
    sweep, proc = local_search(
        tmp_path, run_env, "hparams_search.n_trials=4", "hparams_search.n_jobs=2", "optimizer.lr=interval(0.02,0.2)"
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = study(sweep, "s").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    runs = {r["trial"]: r for r in report(sweep)["runs"]}
    assert sorted(runs) == [0, 1, 2, 3]
    for trial in trials:
        run = runs[trial.number]
        assert run["status"] == "ok" and run["value"] == trial.value == run["summary"]["best_val_acc"]
        assert run["params"] == trial.params and run["run_dir"] == str(sweep / str(trial.number))
        assert f"optimizer.lr={trial.params['optimizer.lr']!r}" in run["overrides"]
    best = max(trials, key=lambda t: t.value)
    assert report(sweep)["best"]["trial"] == best.number
    assert f"optimizer.lr={best.params['optimizer.lr']!r}" in report(sweep)["reproduce"]
    assert "search of 4 runs" in proc.stdout


def test_a_trial_whose_job_alone_gets_sigterm_is_failed_and_the_search_goes_on(tmp_path: Path, run_env) -> None:
    """`scancel` of one trial's SLURM job (SIGTERM to that job alone): the job exited 143 without a result for
    submitit, and the search waited for it for good (a cluster without accounting) or ended with the trials of that
    batch lost, the completed one included. Here a submitit job process sends itself SIGTERM, as scancel does."""
    sweep, proc = local_search(
        tmp_path, run_env, "hparams_search.n_trials=3", "optimizer.lr=interval(0.05,0.2)", kill="SIGTERM"
    )
    trials = study(sweep, "s").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE], proc.stderr[-3000:]
    runs = {r["trial"]: r for r in report(sweep)["runs"]}
    assert [runs[n]["status"] for n in range(3)] == ["failed", "ok", "ok"]
    assert runs[0]["error"].startswith("training stopped by SIGTERM at epoch 0, global step ")
    assert "The search records this trial as failed and goes on" in runs[0]["error"]
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "interrupted"
    assert proc.returncode == 1 and "1 of 3 sweep jobs failed" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_a_trial_killed_outright_keeps_the_finished_trials_of_its_batch(tmp_path: Path, run_env) -> None:
    """A job SIGKILLed (out of memory, a lost node) leaves submitit no result and the launcher raises for the whole
    batch: the trial that finished beside it was counted as interrupted and trained again on resume."""
    sweep, proc = local_search(
        tmp_path,
        run_env,
        "trainer.max_epochs=4",
        "hparams_search.n_trials=2",
        "hparams_search.n_jobs=2",
        "optimizer.lr=interval(0.05,0.2)",
        kill="SIGKILL",
    )
    assert proc.returncode != 0, proc.stdout[-3000:]
    states = {t.number: t.state for t in study(sweep, "s").trials}
    killed = next(n for n in (0, 1) if not (sweep / str(n) / "summary.json").exists())
    finished = 1 - killed
    # the killed one is queued to run again (WAITING) when the search resumes
    assert states == {finished: TrialState.COMPLETE, killed: TrialState.FAIL, 2: TrialState.WAITING}, proc.stderr
    runs = {r["trial"]: r for r in report(sweep)["runs"]}
    assert runs[finished]["status"] == "ok" and runs[finished]["value"] == runs[finished]["summary"]["best_val_acc"]
    assert runs[killed]["status"] == "interrupted"
    assert "the search stopped with 1 of 2 trials done" in proc.stderr


def test_search_records_pruned_and_failed_trials_and_goes_on(tmp_path: Path, run_env) -> None:
    sweep = tmp_path / "search"
    # seeded, the sampler tries a rate that diverges (failed), then 0.1, then one too small to learn anything: behind
    # the completed trial after its first epoch, it is pruned
    proc = run_entry(
        "train.py",
        [
            "-m",
            *TINY,
            "trainer.limit_train_batches=20",
            "hparams_search=optuna",
            "hparams_search.study_name=s",
            "hparams_search.n_trials=3",
            "hparams_search.n_startup_trials=5",
            "hparams_search.seed=2",
            "+hparams_search.pruner_options.n_startup_trials=1",
            "+hparams_search.pruner_options.n_warmup_steps=0",
            "optimizer.lr=choice(0.1,1e-9,1e9)",
            f"hydra.sweep.dir={sweep}",
        ],
        run_env,
        timeout=1200,
    )
    trials = study(sweep, "s").trials
    states = {t.params["optimizer.lr"]: t.state for t in trials}
    assert len(trials) == 3 and set(states) == {0.1, 1e-9, 1e9}, [(t.params, t.state) for t in trials]
    assert states[0.1] == TrialState.COMPLETE and states[1e-9] == TrialState.PRUNED and states[1e9] == TrialState.FAIL
    runs = report(sweep)["runs"]
    for trial in trials:
        run = next(r for r in runs if r["trial"] == trial.number)
        assert (
            run["status"]
            == {TrialState.COMPLETE: "ok", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}[trial.state]
        )
        summary = json.loads((sweep / str(trial.number) / "summary.json").read_text())
        assert summary["status"] == {"ok": "completed", "pruned": "pruned", "failed": "failed"}[run["status"]]
        if run["status"] == "pruned":
            assert summary["epochs"] < 2 and summary["test_acc"] is None  # stopped early, not tested
            assert summary["fused_dir"] is None and not (sweep / str(trial.number) / "fused").exists()  # nor fused
        if run["status"] == "ok":
            assert (sweep / str(trial.number) / "fused" / "model.safetensors").is_file()
    assert proc.returncode == 1 and "sweep jobs failed" in proc.stderr and "diverged" in proc.stderr
    assert report(sweep)["best"]["params"] == {"optimizer.lr": 0.1}


def test_search_killed_mid_trial_resumes_without_counting_a_trial_twice(tmp_path: Path, run_env) -> None:
    sweep = tmp_path / "search"
    args = [
        str(ROOT / "train.py"),
        "-m",
        *TINY,
        "hparams_search=optuna",
        "hparams_search.study_name=s",
        "hparams_search.n_trials=3",
        "hparams_search.pruner=none",
        "optimizer.lr=interval(0.05,0.2)",
        "trainer.max_epochs=20",
        f"hydra.sweep.dir={sweep}",
    ]
    search = subprocess.Popen(
        [sys.executable, *args], cwd=tmp_path, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 600
    # inside the second trial: its first epoch's last.ckpt is written and 19 epochs remain (a fixed sleep raced a
    # fast machine, where the whole trial ended before the signal)
    while not (sweep / "1" / "checkpoints" / "last.ckpt").exists() and search.poll() is None:
        assert time.monotonic() < deadline, "the second trial never started"
        time.sleep(0.02)
    search.send_signal(signal.SIGTERM)
    stdout, stderr = search.communicate(timeout=300)
    # 143: Lightning's handler turned it into reparam's Preempted; -15: it came before fit installed that handler
    assert search.returncode in (143, -signal.SIGTERM), stderr[-3000:]
    continuing = [*args, "hparams_search.resume=true"]
    if search.returncode == 143:  # the search's way on, not the single-run resume that would leave the study
        # the trials so far, as the end of a search shows them: the one done and the one stopped
        assert "reparam: search of 2 runs, stopped with 1 of 3 trials done" in stdout
        assert f"sweep summary: {sweep / 'sweep_summary.json'}" in stdout
        (line,) = [line for line in stderr.splitlines() if line.startswith("error: training stopped by SIGTERM")]
        assert line.endswith(
            "Continue the search with its command and hparams_search.resume=true: finished trials "
            "are kept and this one runs again"
        )
        last = stderr.splitlines()[-1]
        assert last.startswith("the search stopped with 1 of 3 trials done; continue it with: python train.py -m ")
        assert last.endswith(" hparams_search.resume=true") and f"hydra.sweep.dir={sweep}" in last
        continuing = [str(ROOT / "train.py"), *shlex.split(last.partition("python train.py ")[2])]  # as printed
        stopped = report(sweep)
        assert stopped["stopped"] == {"trials": 3, "done": 1} and stopped["counts"]["interrupted"] == 1
        # the stopped trial is marked at once (not only when the search resumes), and queued to run again
        states = [t.state for t in study(sweep, "s").trials]
        assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    else:  # killed before Lightning's handler: the resumed search marks it
        assert [t.state for t in study(sweep, "s").trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert (
        not (sweep / "1" / "summary.json").exists()
        or json.loads((sweep / "1" / "summary.json").read_text())["status"] != "completed"
    )

    again = subprocess.run([sys.executable, *args], cwd=tmp_path, env=run_env, capture_output=True, text=True)
    assert (
        again.returncode == 2
        and "study 's' already exists" in again.stderr
        and "hparams_search.resume=true" in again.stderr
        and "Traceback" not in again.stderr
    )

    resumed = subprocess.run(
        [sys.executable, *continuing],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    said = "1 of 3 trials done, 1 interrupted trial(s) to run again with the same parameters; 2 to go"
    assert f"resuming study 's' (sqlite:///{sweep / 'optuna.db'}): {said}" in resumed.stdout, resumed.stdout[-3000:]
    trials = study(sweep, "s").trials
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(completed) == 3  # as many as a search never stopped
    killed = trials[1]
    assert killed.state == TrialState.FAIL and killed.user_attrs["interrupted"]
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 1)
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE
    data = report(sweep)
    assert data["counts"] == {"ok": 3, "pruned": 0, "failed": 0, "interrupted": 1}
    (interrupted,) = [r for r in data["runs"] if r["status"] == "interrupted"]
    assert interrupted["run_dir"] == str(sweep / "1")  # what it left there
    ok = [r for r in data["runs"] if r["status"] == "ok"]
    assert sorted(r["trial"] for r in ok) == sorted(t.number for t in completed)
    assert len({r["run_dir"] for r in ok}) == 3 and str(sweep / "1") not in {r["run_dir"] for r in ok}
    assert os.path.isfile(sweep / str(retry.number) / "fused" / "model.safetensors")


def slurm_partition() -> str | None:
    """The default partition of a SLURM cluster this machine can submit to (Debian's slurm-wlm + munge will do)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return None
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format=%P %a"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    up = [line.split()[0] for line in proc.stdout.splitlines() if line.split()[1:] == ["up"]]
    chosen = [p for p in up if p.endswith("*")] or up  # the default partition is starred
    return chosen[0].rstrip("*") if chosen else None


def on_slurm() -> list[str]:
    """The SLURM launcher on this machine's cluster: its default partition, one core and no GPU per job."""
    return [
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={slurm_partition()}",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=null",
    ]


@pytest.mark.skipif(slurm_partition() is None, reason="no SLURM cluster here (sinfo/sbatch missing or not answering)")
def test_slurm_sweep_runs_each_job_as_a_slurm_job_and_collects_both(tmp_path: Path, run_env) -> None:
    sweep = tmp_path / "sweep"
    proc = run_entry(
        "train.py",
        [
            "-m",
            *TINY,
            "optimizer.lr=0.05,0.1",
            *on_slurm(),
            f"hydra.sweep.dir={sweep}",
        ],
        run_env,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = report(sweep)["runs"]
    assert sorted(r["job"] for r in runs) == [0, 1] and {r["status"] for r in runs} == {"ok"}
    assert all(r["summary"]["cpu_threads"] == 1 for r in runs)  # SLURM_CPUS_PER_TASK
    tasks = [p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name)]
    assert len(tasks) == 2  # one sbatch job array, one SLURM task per run
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")
    assert "#SBATCH --array=0-1" in script.read_text() and "#SBATCH --cpus-per-task=1" in script.read_text()


@pytest.mark.skipif(slurm_partition() is None, reason="no SLURM cluster here (sinfo/sbatch missing or not answering)")
def test_a_job_slurm_refuses_is_one_line_that_says_which_settings(tmp_path: Path, run_env) -> None:
    """The SLURM preset asks one GPU per job; on this cluster of CPUs sbatch refuses it: that was submitit's
    traceback, exit 1."""
    gpu_jobs = [o for o in on_slurm() if not o.startswith("hydra.launcher.gpus_per_node=")]
    proc = run_entry(
        "train.py", ["-m", *TINY, "optimizer.lr=0.05,0.1", *gpu_jobs, f"hydra.sweep.dir={tmp_path}"], run_env
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: SLURM refused the sweep's jobs (sbatch: error: "), line
    assert line.endswith("on one without GPUs: hydra.launcher.gpus_per_node=0")


def _slurm_job_state(job: str) -> dict[str, str]:
    """``scontrol show job``'s fields of one job (JobState, Restarts, ...)."""
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    return dict(field.split("=", 1) for field in shown.split() if "=" in field)


def _requeued_and_released(job: str, restarts: int, deadline: float) -> None:
    """Wait until SLURM has put ``job`` back in the queue for the ``restarts``-th time, then let it start at once
    (SLURM holds a requeued job for a while: BeginTime)."""
    while not (
        _slurm_job_state(job).get("Restarts") == str(restarts) and _slurm_job_state(job).get("JobState") == "PENDING"
    ):
        assert time.monotonic() < deadline, f"job {job} was not requeued: {_slurm_job_state(job)}"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)


@pytest.mark.skipif(slurm_partition() is None, reason="no SLURM cluster here (sinfo/sbatch missing or not answering)")
def test_a_requeued_slurm_job_resumes_from_its_own_last_checkpoint(tmp_path: Path, run_env) -> None:
    """Preempted twice, as a cluster does it: submitit's SIGUSR2 (sent before the time limit, or on preemption), which
    requeues the job through submitit, then SLURM's own requeue (SIGTERM). Each restart continues from the run's
    last.ckpt with the default auto_resume (null) and the sweep ends with the run complete and collected."""
    sweep, epochs = tmp_path / "sweep", 400
    log = sweep / "0" / "train.log"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *TINY,
        "optimizer.lr=0.05",
        f"trainer.max_epochs={epochs}",
        *on_slurm(),
        f"hydra.sweep.dir={sweep}",
    ]
    sweep_proc = subprocess.Popen(command, cwd=tmp_path, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    try:
        while not (sweep / "0" / "checkpoints" / "last.ckpt").exists():  # training is under way
            assert sweep_proc.poll() is None and time.monotonic() < deadline, "the job never saved a checkpoint"
            time.sleep(0.1)
        (job,) = {p.name.split("_")[0] for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)}
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
        _requeued_and_released(job, 1, deadline)
        while "Restored all states" not in (log.read_text() if log.exists() else ""):  # the restart is training
            assert sweep_proc.poll() is None and time.monotonic() < deadline, "the requeued job did not resume"
            time.sleep(0.1)
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
        _requeued_and_released(job, 2, deadline)
        stdout, stderr = sweep_proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if sweep_proc.poll() is None:
            sweep_proc.kill()
            subprocess.run(["scancel", "--name=train"], timeout=30)
    assert sweep_proc.returncode == 0, stderr.decode()[-4000:]
    (run,) = report(sweep)["runs"]
    assert run["status"] == "ok" and run["summary"]["epochs"] == epochs and run["summary"]["status"] == "completed"
    assert run["summary"]["resumed_from"] == str(sweep / "0" / "checkpoints" / "last.ckpt")
    lines = log.read_text()
    assert "training stopped by submitit's requeue of this SLURM job" in lines  # not "by Ctrl-C"
    assert "training stopped by SIGTERM" in lines
    assert (
        lines.count("The requeued job resumes from") == 1
        and "if SLURM requeues this job, it resumes from there by itself" in lines
    )
    for restart in (1, 2):
        assert f"SLURM restarted this job (restart {restart}): resuming from {sweep / '0' / 'checkpoints'}" in lines
    assert lines.count(f"Restored all states from the checkpoint at {sweep / '0' / 'checkpoints' / 'last.ckpt'}") == 2
    assert (sweep / "0" / "fused" / "model.safetensors").is_file()
