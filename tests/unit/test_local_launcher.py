"""Which GPUs a job of hydra/launcher=local gets: its own slice of the machine's, by job number."""

import pytest

from hydra_plugins.reparam_launcher import gpu_slice, machine_gpus


def test_consecutive_jobs_get_disjoint_slices_then_wrap_around() -> None:
    assert [gpu_slice(list("0123"), 1, job) for job in range(5)] == [["0"], ["1"], ["2"], ["3"], ["0"]]
    assert [gpu_slice(list("0123"), 2, job) for job in range(3)] == [["0", "1"], ["2", "3"], ["0", "1"]]
    assert [gpu_slice(list("467"), 2, job) for job in range(2)] == [["4", "6"], ["4", "6"]]  # one slice of 2 in 3


@pytest.mark.parametrize(
    ("visible", "pool"), [("2,3", ["2", "3"]), (" 5 ,1", ["5", "1"]), ("GPU-a1,GPU-b2", ["GPU-a1", "GPU-b2"]), ("", [])]
)
def test_the_pool_is_what_cuda_visible_devices_names(visible, pool, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert machine_gpus() == pool
