"""Ranking a sweep's runs: best first in the metric's own direction, missing values last; the best run's command."""

import json
from pathlib import Path

import pytest
import torch

from reparam.sweep import SweepRecord, SweepRun, rank_runs, reproducing_overrides


def runs(**values: float | None) -> list[dict]:
    return [
        {"job": i, "summary": {} if v is None else {"m": v, "best_val_acc": v, "fusion_fp32_max_abs_diff": v}}
        for i, v in enumerate(values.values())
    ]


def jobs(ranked: list[dict]) -> list[int]:
    return [r["job"] for r in ranked]


def test_accuracy_ranks_highest_first_and_missing_last() -> None:
    assert jobs(rank_runs(runs(a=0.5, b=None, c=0.9, d=0.0), "best_val_acc")) == [2, 0, 3, 1]


def test_fusion_error_ranks_lowest_first() -> None:
    assert jobs(rank_runs(runs(a=1e-6, b=None, c=0.0, d=3e-5), "fusion_fp32_max_abs_diff")) == [2, 0, 3, 1]


def test_no_metric_keeps_job_order() -> None:
    assert jobs(rank_runs(runs(a=0.1, b=0.9), None)) == [0, 1]


def sweep_run(job: int, status: str, acc: float | None, overrides: list[str] | None = None) -> SweepRun:
    return SweepRun(
        job=job,
        overrides=overrides or [f"optimizer.lr=0.{job}"],
        run_dir=f"d/{job}",
        status=status,
        value=acc,
        summary={} if acc is None else {"best_val_acc": acc},
    )


def test_record_ranks_ok_and_pruned_by_value_and_failed_last(tmp_path: Path) -> None:
    record = SweepRecord(
        str(tmp_path),
        "best_val_acc",
        [
            sweep_run(0, "failed", None),
            sweep_run(1, "pruned", 0.3),
            sweep_run(2, "ok", 0.8),
            sweep_run(3, "ok", 0.9),
            sweep_run(4, "interrupted", None),
        ],
    )
    assert [r.job for r in record.ranked()] == [3, 2, 1, 0, 4]
    assert record.best().job == 3 and [r.job for r in record.failed()] == [0]
    data = record.to_dict()
    assert data["counts"] == {"ok": 2, "pruned": 1, "failed": 1, "interrupted": 1}
    assert [r["job"] for r in data["runs"]] == [3, 2, 1, 0, 4] and data["best"]["job"] == 3


def test_a_pruned_run_is_never_the_best(tmp_path: Path) -> None:
    record = SweepRecord(str(tmp_path), "best_val_acc", [sweep_run(0, "pruned", 0.9), sweep_run(1, "ok", 0.5)])
    assert record.best().job == 1


def test_best_run_is_reproduced_without_the_sweep_settings(tmp_path: Path) -> None:
    overrides = [
        "experiment=demo",
        "hparams_search=demo",
        "hparams_search.trial=7",
        "hydra/launcher=local",
        "hydra.sweeper.max_batch_size=2",
        "hydra.launcher.cpus_per_task=1",
        "optimizer.lr=0.0123",
        "model.block=dbb",
        "+trainer.limit_train_batches=2",
        "hydra.sweep.dir=/x",
        "note='a b'",
    ]
    assert reproducing_overrides(overrides) == [
        "experiment=demo",
        "optimizer.lr=0.0123",
        "model.block=dbb",
        "+trainer.limit_train_batches=2",
        "note='a b'",
    ]
    record = SweepRecord(str(tmp_path), "best_val_acc", [sweep_run(0, "ok", 0.9, overrides)])
    assert record.reproduce_command() == (
        "python train.py experiment=demo optimizer.lr=0.0123 model.block=dbb "
        "+trainer.limit_train_batches=2 'note='\"'\"'a b'\"'\"''"
    )


def test_the_command_reproducing_a_run_keeps_its_cpu_thread_count(tmp_path: Path) -> None:
    """A job given one core (hydra/launcher=local) trains with one thread; rerun with this process's count, its float
    sums would be ordered otherwise and the weights differ on a CPU."""
    run = sweep_run(0, "ok", 0.9, ["experiment=demo", "optimizer.lr=0.1"])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run.summary["cpu_threads"] = 1
        record = SweepRecord(str(tmp_path), "best_val_acc", [run])
        assert record.reproduce_command() == "OMP_NUM_THREADS=1 python train.py experiment=demo optimizer.lr=0.1"
        run.summary["cpu_threads"] = 2  # as this process: nothing to add
        assert record.reproduce_command() == "python train.py experiment=demo optimizer.lr=0.1"
    finally:
        torch.set_num_threads(before)


def test_a_job_ended_mid_batch_is_on_disk_until_its_batch_returns(tmp_path: Path) -> None:
    record = SweepRecord(str(tmp_path), "best_val_acc")
    record.pending.append(sweep_run(0, "ok", 0.5))
    record.write()
    on_disk = lambda: json.loads((tmp_path / "sweep_summary.json").read_text())  # noqa: E731
    assert [r["job"] for r in on_disk()["runs"]] == [0]
    record.add_batch([sweep_run(0, "ok", 0.5), sweep_run(1, "failed", None)])
    assert [r["job"] for r in on_disk()["runs"]] == [0, 1] and on_disk()["failed"] == 1 and not record.pending


def test_the_table_never_breaks_a_number_and_names_the_run_directories_once(tmp_path: Path, monkeypatch) -> None:
    """In an 80-column terminal, long overrides and errors fold; accuracies and times stay whole and aligned."""
    import io

    from rich.console import Console

    from reparam import sweep

    out = io.StringIO()
    monkeypatch.setattr(sweep, "console", Console(width=80, file=out, highlight=False))
    overrides = ["optimizer.lr=0.0123456", "module.label_smoothing=0.1333", "model.block=repvgg", "data.batch_size=64"]
    runs = [sweep_run(job, "ok", 0.98611 - job / 1000, overrides) for job in range(3)]
    for run in runs:
        run.run_dir, run.duration_s = str(tmp_path / str(run.job)), 3600.0 + run.job
        run.summary.update(test_acc=0.9889, fusion_argmax_agreement=1.0)
    runs[2].status, runs[2].error = "failed", "diverged: the loss is nan at step 12; lower optimizer.lr and run again"
    sweep.print_sweep_summary(SweepRecord(str(tmp_path), "best_val_acc", runs))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    for value in ("98.61%", "98.51%", "98.41%", "98.89%", "100.00%", "60 min 00 s"):
        assert any(value in line for line in lines), value
    assert not any(str(tmp_path / "0") in line for line in lines)  # not a column: one line below the table
    assert f"run directories: {tmp_path}/<job>" in " ".join(" ".join(lines).split())


def test_overrides_with_brackets_are_printed_as_typed_not_read_as_markup(tmp_path: Path, monkeypatch) -> None:
    """rich reads '[my_blocks]' as a style tag and drops it: the table showed 'imports=' and the command that
    reproduces the best run lost the list, so it failed as printed."""
    import io

    from rich.console import Console

    from reparam import sweep

    out = io.StringIO()
    monkeypatch.setattr(sweep, "console", Console(width=200, file=out, highlight=False))
    typed = ["imports=[my_blocks]", "targets=[auto,fused]", "optimizer.lr=0.1"]
    record = SweepRecord(str(tmp_path), "best_val_acc", [sweep_run(0, "ok", 0.9, typed)])
    sweep.print_sweep_summary(record)
    sweep.set_active_record(record)
    try:
        sweep.SweepSummary().on_multirun_end(config=None)
    finally:
        sweep.set_active_record(None)
    printed = out.getvalue()
    assert "imports=[my_blocks] targets=[auto,fused]" in printed  # the table's overrides cell
    assert "to reproduce it: python train.py 'imports=[my_blocks]' 'targets=[auto,fused]' optimizer.lr=0.1" in printed


def test_a_stopped_sweep_continues_with_the_jobs_that_ended_ok_and_refuses_another_sweeps_directory(
    tmp_path: Path,
) -> None:
    from hydra_plugins.reparam_sweeper import _not_done
    from reparam.errors import UserError
    from reparam.sweep import done_runs

    grid = [["optimizer.lr=0.1"], ["optimizer.lr=0.2"], ["optimizer.lr=0.3"], ["optimizer.lr=0.4"]]
    assert done_runs(tmp_path, grid) == {}  # no record: a new sweep
    record = SweepRecord(str(tmp_path), "best_val_acc")
    record.add_batch(
        [
            SweepRun(0, grid[0], str(tmp_path / "0"), "ok", 0.5, summary={"best_val_acc": 0.5}),
            SweepRun(2, grid[2], str(tmp_path / "2"), "failed", error="diverged"),
        ]
    )
    record.stopped = {"jobs": 4, "not_done": [1, 3]}
    record.write()
    # the continuing command adds auto_resume=true to every job: the same jobs still
    done = done_runs(tmp_path, [[*job, "auto_resume=true"] for job in grid])
    assert list(done) == [0] and done[0].value == 0.5 and done[0].summary == {"best_val_acc": 0.5}
    # a failed job runs again; consecutive jobs not done launch together, numbered as in the first sweep
    assert _not_done(grid, 0, done) == [(1, grid[1:])]
    assert _not_done(grid[2:], 2, {**done, 3: done[0]}) == [(2, [grid[2]])]
    other = [["optimizer.lr=0.1"], ["optimizer.lr=0.2"], ["optimizer.lr=0.5"]]
    with pytest.raises(UserError, match="holds another sweep: its job 2 ran optimizer.lr=0.3, this one's is optimizer"):
        done_runs(tmp_path, other)
    (tmp_path / "sweep_summary.json").write_text("{not json")
    with pytest.raises(UserError, match="sweep_summary.json cannot be read"):
        done_runs(tmp_path, grid)


def test_a_launcher_failure_is_one_line_and_a_jobs_own_error_is_not_one() -> None:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from hydra_plugins.reparam_sweeper import _launch_failure, _launch_failure_line

    refused = FailedJobError("sbatch: error: Invalid generic resource (gres) specification\n")
    assert _launch_failure(refused) and not _launch_failure(ValueError("a job's own error"))
    assert _launch_failure_line(refused).startswith(
        "SLURM refused the sweep's jobs (sbatch: error: Invalid generic resource (gres) specification); check "
    )
    lost = UncompletedJobError("Job 12_0 (task: 0) with path /s/.submitit/12_0/12_0_0_result.pkl\nhas not produced")
    assert _launch_failure_line(lost).startswith("a job of the sweep ended outside its own code (Job 12_0 (task: 0)")


def test_a_submitit_warning_is_printed_once() -> None:
    """A sweep on SLURM without accounting printed each "Bypassing sacct error" warning three times: submitit's own
    handlers on stdout and stderr, and the root logger's console handler."""
    import subprocess
    import sys

    script = (
        "import logging; logging.basicConfig()\n"
        "from hydra_plugins.reparam_sweeper import one_copy_of_submitit_lines\n"
        "one_copy_of_submitit_lines()\n"
        "logging.getLogger('submitit').warning('sacct failed')\n"
        "logging.getLogger('submitit').info('submitted')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("sacct failed") == 1 and "sacct failed" not in proc.stdout, (proc.stdout, proc.stderr)
    assert proc.stdout.count("submitted") == 1 and "submitted" not in proc.stderr
