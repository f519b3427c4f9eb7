"""reparam's local launcher (``hydra/launcher=local``): hydra-submitit-launcher's ``submitit_local``, with each job of a
batch on GPUs of its own.

submitit's ``LocalExecutor`` gives every job the same first ``gpus_per_node`` GPUs, so a sweep or search running
several jobs at once on a machine with several GPUs put them all on GPU 0. Here ``gpus_per_node`` is what one job
gets: the pool is the machine's GPUs (those ``CUDA_VISIBLE_DEVICES`` names in the launching process, else every GPU
the driver shows), and each job sets ``CUDA_VISIBLE_DEVICES`` to its own slice of it, by its job number, before
anything touches CUDA. Jobs numbered one after another (a batch of a sweep, the trials a search asks together) get
disjoint slices as long as a batch fits on the machine (``jobs at a time x gpus_per_node <= GPUs``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn

try:  # the launcher plugin is an optional dependency (reparam[search])
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher
except ImportError:  # pragma: no cover - Hydra imports every plugin module; without the plugin there is nothing to do
    LocalLauncher = None

__all__ = ["GpuSlicingLocalLauncher", "machine_gpus", "gpu_slice"]


def machine_gpus() -> list[str]:
    """The GPUs this process may hand out, as ``CUDA_VISIBLE_DEVICES`` entries: its own list when it is set (indices,
    or GPU / MIG UUIDs), else the index of every GPU the driver reports (counted without initializing CUDA here)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [part.strip() for part in visible.split(",") if part.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def gpu_slice(pool: Sequence[str], per_job: int, job_num: int) -> list[str]:
    """The ``per_job`` GPUs of ``pool`` that job ``job_num`` uses: consecutive jobs take consecutive slices, wrapping
    around when the pool holds fewer slices than jobs."""
    slices = len(pool) // per_job
    first = (job_num % slices) * per_job
    return list(pool[first : first + per_job])


if LocalLauncher is not None:

    class GpuSlicingLocalLauncher(LocalLauncher):
        """submitit_local with GPUs per job (see the module docstring); with ``gpus_per_node`` 0, or a machine with
        GPUs for one job only, it is submitit_local unchanged."""

        params: dict[str, Any]  # set by hydra-submitit-launcher's __init__ (untyped)

        def __init__(self, **params: Any) -> None:
            super().__init__(**params)
            self.gpus_per_job = int(self.params.get("gpus_per_node") or 0)
            self.gpu_pool: list[str] = []

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            if self.gpus_per_job and not self.gpu_pool:
                pool = machine_gpus()
                if len(pool) < self.gpus_per_job:
                    from reparam.errors import UserError

                    raise UserError(
                        f"hydra.launcher.gpus_per_node={self.gpus_per_job} but this machine shows {len(pool)} GPUs "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}); lower "
                        "hydra.launcher.gpus_per_node, or set CUDA_VISIBLE_DEVICES to the GPUs to use"
                    )
                if len(pool) >= 2 * self.gpus_per_job:  # room for two jobs or more: the executor hands out all
                    self.gpu_pool = pool
                    self.params = {**self.params, "gpus_per_node": len(pool)}  # the job narrows it (__call__)
            return super().launch(job_overrides, initial_job_idx)

        def __call__(
            self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: Any
        ) -> JobReturn:
            if self.gpu_pool:  # in the job's own process, before anything touches CUDA
                mine = gpu_slice(self.gpu_pool, self.gpus_per_job, job_num)
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
                # to the job's submitit log (<sweep dir>/.submitit/<id>/<id>_0_log.err): Hydra's logging is not set yet
                print(
                    f"reparam: job {job_num} uses CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} "
                    f"of the GPUs {','.join(self.gpu_pool)}",
                    file=sys.stderr,
                    flush=True,
                )
            return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
