"""Checkpoints keep the model spec under ``hyper_parameters.model_spec``; those written before the rename keep it
under ``net`` and must still load in deploy (and serve, which loads through it) and auto-resume."""

from pathlib import Path

import pytest
import torch
from helpers import TINY_SPEC, randomize_bn
from omegaconf import OmegaConf

from reparam.checkpoint import LEGACY_MODEL_SPEC_KEY, MODEL_SPEC_KEY, model_spec_of, read_checkpoint
from reparam.deploy.load import load_for_deploy
from reparam.errors import UserError
from reparam.module import ClassifierModule
from reparam.training import _resume_checkpoint


def _checkpoint(tmp_path: Path, spec_key: str) -> tuple[Path, ClassifierModule]:
    """A checkpoint in Lightning's layout whose hyper-parameters hold the spec under ``spec_key``."""
    module = ClassifierModule(TINY_SPEC)
    randomize_bn(module.net)
    hyper_parameters = dict(module.hparams)
    assert set(hyper_parameters) & {MODEL_SPEC_KEY, LEGACY_MODEL_SPEC_KEY} == {MODEL_SPEC_KEY}
    hyper_parameters[spec_key] = hyper_parameters.pop(MODEL_SPEC_KEY)
    path = tmp_path / f"{spec_key}.ckpt"
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": hyper_parameters, "epoch": 3, "global_step": 30}, path
    )
    return path, module


@pytest.mark.parametrize("spec_key", [MODEL_SPEC_KEY, LEGACY_MODEL_SPEC_KEY])
def test_checkpoints_with_either_spec_key_load_in_deploy_and_resume(tmp_path: Path, spec_key: str) -> None:
    path, module = _checkpoint(tmp_path, spec_key)
    assert model_spec_of(read_checkpoint(path)["hyper_parameters"]) == dict(TINY_SPEC)
    loaded = load_for_deploy(str(path))
    assert loaded.spec == dict(TINY_SPEC)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.fused(x), module.net.eval()(x), atol=1e-5)
    resumed, point = _resume_checkpoint(OmegaConf.create({"ckpt_path": str(path)}), ClassifierModule(TINY_SPEC))
    assert resumed == str(path) and (point.epoch, point.global_step) == (3, 30)


def test_a_checkpoint_without_a_spec_is_refused(tmp_path: Path) -> None:
    path, _ = _checkpoint(tmp_path, "something_else")
    with pytest.raises(UserError, match="not a reparam checkpoint .*no 'model_spec'"):
        read_checkpoint(path)
