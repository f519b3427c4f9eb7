"""What a job was given by its launcher: the CPU cores it may use (submitit_local, submitit_slurm, SLURM), and
whether SLURM restarted it (a requeue after preemption or a time limit)."""

from __future__ import annotations

import os

__all__ = ["cores_given", "use_cores_given", "slurm_job", "slurm_restarts", "is_submitit_requeue"]


def cores_given() -> int | None:
    """Cores this job was given: SLURM's ``SLURM_CPUS_PER_TASK``, else the submitit launcher's ``cpus_per_task``
    (``submitit_local`` starts every job on the whole machine and pins nothing); None outside such a launcher."""
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    if "submitit_folder" not in launcher:  # every submitit launcher's config has one (reparam's local one included)
        return None
    cpus = launcher.get("cpus_per_task")
    return int(cpus) if cpus else None


def use_cores_given() -> int:
    """One intra-op thread per core given, so jobs running side by side do not oversubscribe the machine (torch
    would otherwise start one thread per core of the machine in every job); returns the thread count in use."""
    import torch

    cores = cores_given()
    if cores is not None:
        torch.set_num_threads(cores)
    return torch.get_num_threads()


def slurm_job() -> bool:
    """Whether this process runs inside a SLURM job (sbatch or srun)."""
    return bool(os.environ.get("SLURM_JOB_ID"))


def slurm_restarts() -> int:
    """How many times SLURM has requeued and restarted this job (``SLURM_RESTART_COUNT``; 0 on the first run and
    outside SLURM)."""
    count = os.environ.get("SLURM_RESTART_COUNT", "")
    return int(count) if count.isdigit() else 0


def is_submitit_requeue(exit_request: SystemExit) -> bool:
    """Whether ``exit_request`` is submitit ending a SLURM job it has just requeued: on its preemption signal (SIGUSR2,
    sent when the job is preempted or nears its time limit) submitit checkpoints the launcher, runs ``scontrol
    requeue`` and calls ``sys.exit(-1)`` from the signal handler, in the middle of training."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and exit_request.code == -1
