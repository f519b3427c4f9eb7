"""What a job was given by its launcher: the CPU cores it may use (submitit_local, submitit_slurm, SLURM)."""

from __future__ import annotations

import os

__all__ = ["cores_given", "use_cores_given"]


def cores_given() -> int | None:
    """Cores this job was given: SLURM's ``SLURM_CPUS_PER_TASK``, else the submitit launcher's ``cpus_per_task``
    (``submitit_local`` starts every job on the whole machine and pins nothing); None outside such a launcher."""
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    if "submitit" not in str(launcher.get("_target_", "")):
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
