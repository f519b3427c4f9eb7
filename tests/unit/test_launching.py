"""The cores a job was given: SLURM's count first, then the submitit launcher's cpus_per_task, else none; and how
a restarted (requeued) SLURM job and submitit's requeue exit are recognized."""

import pytest
import torch
from helpers import compose_config
from hydra.core.hydra_config import HydraConfig

from reparam.launching import cores_given, is_submitit_requeue, slurm_job, slurm_restarts, use_cores_given


@pytest.fixture(autouse=True)
def no_hydra_after():
    yield
    HydraConfig.instance().cfg = None


def test_slurm_count_comes_first(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    compose_config("train", ["hydra/launcher=local"], run_dir=tmp_path)
    assert cores_given() == 3


def test_submitit_cpus_per_task_else_nothing(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    HydraConfig.instance().cfg = None
    assert cores_given() is None  # outside Hydra
    compose_config("train", [], run_dir=tmp_path)
    assert cores_given() is None  # the basic launcher gives no cores: torch keeps its own choice
    compose_config("train", ["hydra/launcher=local", "hydra.launcher.cpus_per_task=1"], run_dir=tmp_path)
    before = torch.get_num_threads()
    try:
        assert cores_given() == 1 and use_cores_given() == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_slurm_restarts_and_submitit_requeue(monkeypatch) -> None:
    for name in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(name, raising=False)
    assert not slurm_job() and slurm_restarts() == 0 and not is_submitit_requeue(SystemExit(-1))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert slurm_job() and slurm_restarts() == 2
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert is_submitit_requeue(SystemExit(-1))  # submitit's exit after `scontrol requeue`
    assert not is_submitit_requeue(SystemExit(1))  # Lightning's exit after Ctrl-C
    assert not is_submitit_requeue(SystemExit())  # Lightning's SIGTERMException
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    assert not is_submitit_requeue(SystemExit(-1))


@pytest.mark.parametrize(
    ("auto_resume", "warned"), [(None, True), (True, True), (False, False)], ids=["null", "true", "false"]
)
def test_a_restarted_slurm_job_without_a_checkpoint_says_it_starts_over(
    auto_resume, warned, monkeypatch, tmp_path, caplog
) -> None:
    """A restarted job whose run directory has no last.ckpt (a timestamped hydra.run.dir gives it a new one) starts
    over, and says why unless the user asked never to resume."""
    from reparam.training import _resume_checkpoint

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    cfg = compose_config("train", [f"auto_resume={'null' if auto_resume is None else auto_resume}"], run_dir=tmp_path)
    with caplog.at_level("WARNING", logger="reparam.training"):
        assert _resume_checkpoint(cfg, module=None) == (None, None)  # no module needed: nothing to load
    said = [r.getMessage() for r in caplog.records if "SLURM restarted this job (restart 1)" in r.getMessage()]
    assert bool(said) == warned
    if warned:
        assert "training starts over" in said[0] and "hydra.run.dir" in said[0]
