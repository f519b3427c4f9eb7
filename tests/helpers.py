"""Shared test helpers: non-trivial BN statistics and tiny model specs."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

TINY_SPEC = {"variant": None, "widths": [4, 8, 8, 16, 16], "depths": [1, 2, 1, 2, 1], "num_classes": 10}


def zoo_kinds() -> list[str]:
    """Every block kind reparam itself registers, sorted: a kind added to ``src/reparam`` joins each zoo test."""
    from reparam import BLOCKS
    from reparam.blocks import user_kind

    return sorted(kind for kind in BLOCKS if not user_kind(kind))


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
    """Small files in the official CIFAR pickle layout (see :func:`reparam.data.synthetic.write_cifar_like`)."""
    from reparam.data.synthetic import write_cifar_like

    return write_cifar_like(root, name, per_batch, n_test, seed)


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


_scratch_root: str | None = None


def scratch_dir(prefix: str) -> str:
    """A new folder under one per-process temporary folder that is removed when the process exits: the helpers
    below need folders outside pytest's ``tmp_path`` and must not leave them behind in /tmp."""
    import atexit
    import shutil
    import tempfile

    global _scratch_root
    if _scratch_root is None:
        _scratch_root = tempfile.mkdtemp(prefix="reparam-tests-")
        atexit.register(shutil.rmtree, _scratch_root, True)
    return tempfile.mkdtemp(prefix=prefix, dir=_scratch_root)


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
        # no run_dir: a fresh folder, not one in the checkout that test processes running side by side would share
        cfg.hydra.runtime.output_dir = str(run_dir if run_dir is not None else scratch_dir("compose-"))
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_entry(script: str, args: list[str], env: dict, timeout: int = 300, cwd=None):
    """Run train.py / deploy.py as a user would, from a directory outside the checkout (``cwd``, default a new
    temporary one); returns the CompletedProcess."""
    import subprocess
    import sys

    cwd = cwd or scratch_dir("reparam-user-")
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


import lightning as _L  # noqa: E402


class KillAtStep(_L.Callback):
    """Test-only: the process sends itself ``signal`` in the middle of a training step (``phase="train"``) or of
    the first test batch (``phase="test"``), or to its whole process group (``group=True``: start it in a session of
    its own); with ``once=<file>``, only while that file does not exist (it is made first), so a resumed run with the
    same overrides goes on."""

    def __init__(
        self, step: int = 0, signal: str = "SIGKILL", phase: str = "train", once: str | None = None, group: bool = False
    ) -> None:
        self.step, self.signal, self.phase, self.once, self.group = step, signal, phase, once, group

    def _kill(self) -> None:
        import os
        import signal
        from pathlib import Path

        if self.once is not None:
            if Path(self.once).exists():
                return
            Path(self.once).touch()
        if self.group:  # the whole process group, DataLoader workers included, as SLURM and kill -TERM -<pgid> do
            os.killpg(os.getpgid(0), getattr(signal, self.signal))
        else:
            os.kill(os.getpid(), getattr(signal, self.signal))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.phase == "train" and trainer.global_step == self.step:
            self._kill()

    def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.phase == "test":
            self._kill()


class InjectNaN(_L.Callback):
    """Test-only: poison one weight before ``step``, as a diverging optimizer would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        import torch

        if trainer.global_step == self.step:
            with torch.no_grad():
                next(module.net.parameters()).fill_(float("nan"))
