import os
import signal
import sys
from pathlib import Path

import pytest

# tests import their helpers as a plain module
sys.path.insert(0, str(Path(__file__).parent))

# under pytest-xdist every worker would start one torch thread per core, and the workers and their subprocesses
# (which inherit this) would fight over the cores: each gets its share, set before torch is first imported
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

from helpers import write_fake_cifar  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """A data_dir holding generated CIFAR-10 and CIFAR-100 files in the official format."""
    root = tmp_path_factory.mktemp("data")
    write_fake_cifar(root, "cifar10")
    write_fake_cifar(root, "cifar100")
    return root


@pytest.fixture()
def run_env() -> dict:
    """Environment for entry-point subprocesses: quiet, CPU, no stray GPU."""
    env = dict(os.environ)
    env.update({"CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"})
    return env


# the longest test file, first: under xdist (--dist loadfile, no reordering) its worker starts it at once while the
# other workers share the rest, so the suite takes about as long as this file
LONGEST_FIRST = "tests/integration/test_readme.py"


@pytest.fixture(autouse=True)
def _sigint_as_it_was():
    """A test must not leave its pytest worker's SIGINT changed for the next ones, whose subprocesses inherit an ignored
    SIGINT: Lightning, for one, ignores SIGINT for good after a KeyboardInterrupt inside fit (``trainer/call.py``)."""
    before = signal.getsignal(signal.SIGINT)
    yield
    if signal.getsignal(signal.SIGINT) is not before and before is not None:
        signal.signal(signal.SIGINT, before)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(LONGEST_FIRST))  # stable: the rest keep their order
