"""Tiny real training runs: fit -> fuse -> test, resume, and the artifact reloads exactly."""

import json
from pathlib import Path

import pytest
import torch
from helpers import compose_config

from reparam import verify_equivalence
from reparam.artifact import read_fused_artifact
from reparam.checkpoint import net_state, read_checkpoint
from reparam.data import ImageDataModule
from reparam.models import build_model
from reparam.training import train

pytestmark = pytest.mark.slow

TINY = ["model=repvgg_tiny", "model.widths=[8,8,16,16,32]", "debug=limit", "data.val_size=40", "data.batch_size=16",
        "data.eval_batch_size=40", "trainer.accelerator=cpu"]


def test_tiny_run_writes_a_fused_model_that_matches_the_trained_one(cifar_root: Path, tmp_path: Path) -> None:
    summary = train(compose_config("train", [*TINY, f"paths.data_dir={cifar_root}"], run_dir=tmp_path))
    fused_dir = tmp_path / "fused"
    assert summary.fused_dir == str(fused_dir)
    assert {p.name for p in fused_dir.iterdir()} == {"model.safetensors", "config.json", "verification.json"}
    config = json.loads((fused_dir / "config.json").read_text())
    assert config["form"] == "fused" and config["input"]["classes"][0] == "airplane"
    assert config["source_checkpoint"] == summary.best_checkpoint
    verification = json.loads((fused_dir / "verification.json").read_text())
    assert verification["float32"]["passed"] and verification["float64"]["max_abs_diff"] <= 1e-10

    artifact = read_fused_artifact(fused_dir)
    assert artifact.model.is_fused
    train_form = build_model(config["model"])
    train_form.load_state_dict(net_state(read_checkpoint(Path(summary.best_checkpoint))))
    dm = ImageDataModule("cifar10", str(cifar_root), val_size=40, num_workers=0, eval_batch_size=40)
    dm.setup()
    x, _ = next(iter(dm.test_dataloader()))
    report = verify_equivalence(train_form, artifact.model, x)
    assert report.argmax_agreement == 1.0
    # the checkpoint holds only primitives: it loads with weights_only=True
    ckpt = torch.load(summary.last_checkpoint, weights_only=True)
    assert ckpt["hyper_parameters"]["net"]["widths"] == [8, 8, 16, 16, 32]
    assert 0.0 <= summary.test_acc <= 1.0 and summary.epochs == 2


def test_resume_from_last_checkpoint_continues_training(cifar_root: Path, tmp_path: Path) -> None:
    first = train(compose_config("train", [*TINY, f"paths.data_dir={cifar_root}", "trainer.max_epochs=1", "test=false"],
                                 run_dir=tmp_path / "a"))
    last = first.last_checkpoint
    assert torch.load(last, weights_only=True)["epoch"] == 0
    resumed = train(compose_config("train", [*TINY, f"paths.data_dir={cifar_root}", "trainer.max_epochs=2",
                                             f"ckpt_path={last}", "test=false"], run_dir=tmp_path / "b"))
    ckpt = torch.load(resumed.last_checkpoint, weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2 * 4
    assert Path(resumed.fused_dir).is_dir()


def test_optimizer_groups_skip_decay_on_bn_and_bias(cifar_root: Path, tmp_path: Path) -> None:
    from reparam.module import parameter_groups
    from reparam.training import build_components

    cfg = compose_config("train", [*TINY, f"paths.data_dir={cifar_root}", "optimizer=adamw"], run_dir=tmp_path)
    _, module, _ = build_components(cfg)
    assert module.optimizer_factory.keywords["weight_decay"] == 0.05
    groups = parameter_groups(module.net, 0.05, True)
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and all(p.ndim < 2 for p in groups[1]["params"])
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(module.net.parameters()))


@pytest.mark.parametrize(
    "options",
    [
        ["data.pipeline=fast"],
        ["module.channels_last=true"],
        ["trainer.precision=bf16-mixed"],
        # dynamo tracing with the aot_eager backend: the inductor C++ build is too slow for a 2-core CI
        ["module.compile=true", "module.compile_backend=aot_eager"],
    ],
    ids=["fast-pipeline", "channels_last", "bf16", "compile"],
)
def test_speed_options_train_fuse_and_keep_plain_checkpoint_keys(options, cifar_root: Path, tmp_path: Path) -> None:
    summary = train(compose_config("train", [*TINY, f"paths.data_dir={cifar_root}", "trainer.max_epochs=1", *options],
                                   run_dir=tmp_path))
    ckpt = torch.load(summary.last_checkpoint, weights_only=True)
    assert all(k.startswith(("net.stages", "net.head")) for k in ckpt["state_dict"]), list(ckpt["state_dict"])[:3]
    assert summary.fusion_argmax_agreement == 1.0 and summary.fusion_fp64_max_abs_diff <= 1e-10
    assert read_fused_artifact(summary.fused_dir).model.is_fused


def test_ema_weights_are_what_gets_checkpointed_tested_and_fused(cifar_root: Path, tmp_path: Path) -> None:
    summary = train(compose_config("train", [*TINY, f"paths.data_dir={cifar_root}", "callbacks=ema",
                                             "callbacks.ema.decay=0.8"], run_dir=tmp_path))
    assert summary.averaged_weights == "EMA (decay 0.8)"
    assert summary.tested_weights == summary.best_checkpoint == summary.fused_weights
    ckpt = torch.load(summary.best_checkpoint, weights_only=True)
    averaged = net_state(ckpt)  # what a checkpoint's state_dict holds under callbacks=ema
    raw = {k[len("net."):]: v for k, v in ckpt["current_model_state"].items() if k.startswith("net.")}
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged if averaged[k].is_floating_point())
    # fused/ is the fusion of the averaged weights, and the test accuracy is theirs
    spec = ckpt["hyper_parameters"]["net"]
    dm = ImageDataModule("cifar10", str(cifar_root), val_size=40, num_workers=0, eval_batch_size=1000)
    dm.setup("test")
    x, y = next(iter(dm.test_dataloader()))
    fused = read_fused_artifact(summary.fused_dir).model
    for weights, name in ((averaged, "averaged"), (raw, "raw")):
        model = build_model(spec)
        model.load_state_dict(weights)
        report = verify_equivalence(model.eval(), fused, x, raise_on_mismatch=False)
        assert report.passed == (name == "averaged"), name
    assert summary.test_acc == pytest.approx(float((fused(x).argmax(1) == y).float().mean()), abs=1e-6)
