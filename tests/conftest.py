import os
import sys
from pathlib import Path

import pytest

# tests import their helpers as a plain module
sys.path.insert(0, str(Path(__file__).parent))

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
