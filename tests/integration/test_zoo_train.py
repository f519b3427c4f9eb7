"""Every block kind, and any nn.Module through model=custom, trains a demo epoch, fuses exactly and deploys."""

import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import compose_config

from reparam.artifact import read_fused_artifact
from reparam.deploy import deploy
from reparam.training import train

pytestmark = pytest.mark.slow

ONE_DEMO_EPOCH = ["experiment=demo", "trainer.max_epochs=1", "callbacks.reparameterize.verify_samples=64"]
EVALUATE_ONLY = ["benchmark.enabled=false", "export.onnx=false", "export.torch_export=false", "device=cpu"]


def train_and_deploy(overrides: list[str], tmp_path: Path) -> tuple:
    summary = train(compose_config("train", [*ONE_DEMO_EPOCH, *overrides], run_dir=tmp_path / "train"))
    report = deploy(
        compose_config("deploy", [f"ckpt={summary.best_checkpoint}", *EVALUATE_ONLY], run_dir=tmp_path / "deploy")
    )
    return summary, report.to_dict()


@pytest.mark.parametrize("kind", ["repvgg", "qarepvgg", "acnet", "dbb", "mobileone", "linear_add"])
def test_every_block_kind_trains_a_demo_epoch_and_fuses_with_zero_disagreements(kind: str, tmp_path: Path) -> None:
    summary, report = train_and_deploy([f"model.block={kind}"], tmp_path)
    assert summary.fusion_argmax_agreement == 1.0 and summary.fusion_fp64_max_abs_diff <= 1e-10
    assert report["model"]["block"] == kind
    assert report["disagreements"] == 0 and report["correct"]["train_form"] == report["correct"]["fused"]
    assert report["equivalent"] is True and report["num_test_images"] == 359
    artifact = read_fused_artifact(summary.fused_dir)
    assert artifact.config["model"]["block"] == kind and artifact.model.is_fused


def test_any_module_trains_and_is_fused_by_auto_fuse(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="reparam.callbacks")
    summary, report = train_and_deploy(["model=custom"], tmp_path)
    fused_dir = Path(summary.fused_dir)
    assert {p.name for p in fused_dir.iterdir()} == {
        "model.safetensors",
        "config.json",
        "verification.json",
        "model.pt2",
    }
    assert summary.fusion_argmax_agreement == 1.0 and summary.fusion_fp64_max_abs_diff <= 1e-10
    # what auto_fuse merged and left alone is kept with the model (and was logged to train.log)
    merged = json.loads((fused_dir / "verification.json").read_text())["auto_fuse"]["merged"]
    assert merged and all(m["replaces"] for m in merged)
    assert any("ops merged into" in r.getMessage() for r in caplog.records if r.name == "reparam.callbacks")
    artifact = read_fused_artifact(fused_dir)  # spec + auto_fuse + safetensors; the .pt2 is not unpickled
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in artifact.model.modules())
    assert report["disagreements"] == 0 and report["equivalent"] is True
    # the portable program computes the same function as the artifact reparam loads
    program = torch.export.load(str(fused_dir / "model.pt2")).module()
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(program(x), artifact.model(x), atol=1e-5)
    # and deploy evaluates the fused folder alone the same way
    alone = deploy(
        compose_config("deploy", [f"ckpt={fused_dir}", *EVALUATE_ONLY], run_dir=tmp_path / "alone")
    ).to_dict()
    assert alone["correct"]["fused"] == report["correct"]["fused"]


def test_custom_model_with_a_missing_class_is_one_clear_line(tmp_path: Path) -> None:
    from reparam.errors import UserError

    with pytest.raises(
        UserError,
        match=r"model config: cannot build model.net._target_=nowhere.Net: "
        r"ModuleNotFoundError: No module named 'nowhere'.*REPARAM_DEBUG=1",
    ) as err:
        train(
            compose_config(
                "train", [*ONE_DEMO_EPOCH, "model=custom", "model.net._target_=nowhere.Net"], run_dir=tmp_path
            )
        )
    assert "HYDRA_FULL_ERROR" not in str(err.value)
