"""Shared test helpers: non-trivial BN statistics and tiny model specs."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

TINY_SPEC = {"variant": None, "widths": [4, 8, 8, 16, 16], "depths": [1, 2, 1, 2, 1], "num_classes": 10}


@torch.no_grad()
def randomize_bn(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BN random running mean/var and gamma/beta, so folding is actually exercised."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            n = m.num_features
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            if m.affine:
                m.weight.copy_(torch.randn(n, generator=g) * 0.5 + 1)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model


@torch.no_grad()
def calibrate_bn(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Realistic BN: running statistics measured on data, then random gammas/betas; activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration passes
            if m.affine:
                m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
    model.train()
    for _ in range(2):
        model(x)
    return model.eval()


def write_fake_cifar(root, name: str = "cifar10", per_batch: int = 40, n_test: int = 40, seed: int = 0):
    """Small files in the official ``cifar-10-batches-py`` / ``cifar-100-python`` pickle layout.

    Like the originals: dicts with bytes keys, ``data`` a uint8 (N, 3072) array in CHW order, labels
    a list of ints. Images carry a class-dependent colour so a model can learn something.
    """
    import pickle
    from pathlib import Path

    import numpy as np

    rng = np.random.default_rng(seed)
    num_classes = 10 if name == "cifar10" else 100

    def batch(n: int, label_key: bytes) -> dict:
        labels = rng.integers(0, num_classes, n)
        data = rng.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
        data[:, labels % 3] += np.uint8(150)  # a learnable cue
        data = data.reshape(n, 3072)
        return {b"batch_label": b"generated", label_key: labels.tolist(), b"data": data,
                b"filenames": [f"img{i}.png".encode() for i in range(n)]}

    if name == "cifar10":
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, 6):
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch, b"labels"), protocol=2))
        (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test, b"labels"), protocol=2))
        meta = {b"label_names": [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                     "frog", "horse", "ship", "truck"]], b"num_cases_per_batch": per_batch}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    else:
        folder = Path(root) / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train").write_bytes(pickle.dumps(batch(per_batch * 5, b"fine_labels"), protocol=2))
        (folder / "test").write_bytes(pickle.dumps(batch(n_test, b"fine_labels"), protocol=2))
        meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)], b"coarse_label_names": []}
        (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def compose_config(config_name: str, overrides: list[str], run_dir=None):
    """Compose a config the way the entry points do, with this run's paths pinned to ``run_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS), job_name="test"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.runtime.output_dir = str(run_dir if run_dir is not None else ROOT / "logs" / "compose-test")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_entry(script: str, args: list[str], env: dict, timeout: int = 300):
    """Run train.py / deploy.py as a user would; returns the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


import lightning as _L  # noqa: E402


class KillAtStep(_L.Callback):
    """Test-only: the process sends itself ``signal`` in the middle of a training step."""

    def __init__(self, step: int, signal: str = "SIGKILL") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        import os
        import signal

        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


class InjectNaN(_L.Callback):
    """Test-only: poison one weight before ``step``, as a diverging optimizer would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        import torch

        if trainer.global_step == self.step:
            with torch.no_grad():
                next(module.net.parameters()).fill_(float("nan"))
