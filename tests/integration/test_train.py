"""Tiny real training runs: fit -> fuse -> test, resume, and the artifact reloads exactly."""

import csv
import json
from pathlib import Path

import pytest
import torch
from helpers import compose_config, write_fake_cifar

from reparam import verify_equivalence
from reparam.artifact import read_fused_artifact
from reparam.checkpoint import net_state, read_checkpoint
from reparam.data import ImageDataModule
from reparam.models import build_model
from reparam.training import train

pytestmark = pytest.mark.slow

TINY = [
    "model=repvgg_tiny",
    "model.widths=[8,8,16,16,32]",
    "debug=limit",
    "data.val_size=40",
    "data.batch_size=16",
    "data.eval_batch_size=40",
    "trainer.accelerator=cpu",
]


def test_tiny_run_writes_a_fused_model_that_matches_the_trained_one(cifar_root: Path, tmp_path: Path) -> None:
    # evaluation batches of 16: debug=limit's two batches are 32 of the 40 validation (and test) images
    overrides = [*TINY, "data.eval_batch_size=16", f"paths.data_dir={cifar_root}"]
    summary = train(compose_config("train", overrides, run_dir=tmp_path))
    assert (summary.val_images, summary.test_images) == (32, 32)  # the images each accuracy is over
    fused_dir = tmp_path / "fused"
    assert summary.fused_dir == str(fused_dir)
    assert {p.name for p in fused_dir.iterdir()} == {"model.safetensors", "config.json", "verification.json"}
    config = json.loads((fused_dir / "config.json").read_text())
    assert config["form"] == "fused" and config["input"]["classes"][0] == "airplane"
    assert config["source_checkpoint"] == summary.best_checkpoint
    verification = json.loads((fused_dir / "verification.json").read_text())
    assert verification["float32"]["passed"] and verification["float64"]["max_abs_diff"] <= 1e-10
    # float32 on every validation image (40, under verify_samples=256), float64 on the first float64_samples (16)
    assert (verification["float32"]["num_samples"], verification["float64"]["num_samples"]) == (40, 16)

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
    assert ckpt["hyper_parameters"]["model_spec"]["widths"] == [8, 8, 16, 16, 32]
    assert 0.0 <= summary.test_acc <= 1.0 and summary.epochs == 2


def test_resume_from_last_checkpoint_continues_training(cifar_root: Path, tmp_path: Path) -> None:
    first = train(
        compose_config(
            "train",
            [*TINY, f"paths.data_dir={cifar_root}", "trainer.max_epochs=1", "test=false"],
            run_dir=tmp_path / "a",
        )
    )
    last = first.last_checkpoint
    assert torch.load(last, weights_only=True)["epoch"] == 0
    resumed = train(
        compose_config(
            "train",
            [*TINY, f"paths.data_dir={cifar_root}", "trainer.max_epochs=2", f"ckpt_path={last}", "test=false"],
            run_dir=tmp_path / "b",
        )
    )
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
    summary = train(
        compose_config(
            "train", [*TINY, f"paths.data_dir={cifar_root}", "trainer.max_epochs=1", *options], run_dir=tmp_path
        )
    )
    ckpt = torch.load(summary.last_checkpoint, weights_only=True)
    assert all(k.startswith(("net.stages", "net.head")) for k in ckpt["state_dict"]), list(ckpt["state_dict"])[:3]
    assert summary.fusion_argmax_agreement == 1.0 and summary.fusion_fp64_max_abs_diff <= 1e-10
    assert read_fused_artifact(summary.fused_dir).model.is_fused


def test_ema_ships_the_better_weights_to_the_checkpoint_the_test_and_fused(cifar_root: Path, tmp_path: Path) -> None:
    summary = train(
        compose_config(
            "train",
            [*TINY, f"paths.data_dir={cifar_root}", "callbacks=ema", "callbacks.ema.decay=0.8"],
            run_dir=tmp_path,
        )
    )
    # 8 updates (two epochs of 4 steps): the warm-up decay (1 + 8) / (10 + 8) is below the cap, and said
    assert summary.averaged_weights == "EMA (decay 0.8, warming up: 0.5 at the last of 8 updates)"
    assert summary.tested_weights == summary.best_checkpoint == summary.fused_weights
    ckpt = torch.load(summary.best_checkpoint, weights_only=True)
    verdict = ckpt["weight_averaging"]  # the validation that chose what this checkpoint ships
    assert (
        verdict["shipped"]
        == summary.shipped_weights
        == ("averaged" if verdict["val_acc_averaged"] >= verdict["val_acc_raw"] else "raw")
    )
    assert (summary.val_acc_raw, summary.val_acc_averaged) == (verdict["val_acc_raw"], verdict["val_acc_averaged"])
    assert summary.best_val_acc == pytest.approx(max(verdict["val_acc_raw"], verdict["val_acc_averaged"]))
    averaged = {k[len("net.") :]: v for k, v in ckpt["averaged_model_state"].items() if k.startswith("net.")}
    raw = {k[len("net.") :]: v for k, v in ckpt["current_model_state"].items() if k.startswith("net.")}
    assert averaged.keys() == raw.keys() == net_state(ckpt).keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged if averaged[k].is_floating_point())
    shipped = averaged if summary.shipped_weights == "averaged" else raw
    assert all(torch.equal(net_state(ckpt)[k], shipped[k]) for k in shipped)
    # fused/ is the fusion of the shipped weights, and the test accuracy is theirs
    spec = ckpt["hyper_parameters"]["model_spec"]
    dm = ImageDataModule("cifar10", str(cifar_root), val_size=40, num_workers=0, eval_batch_size=1000)
    dm.setup("test")
    x, y = next(iter(dm.test_dataloader()))
    fused = read_fused_artifact(summary.fused_dir).model
    for weights, name in ((averaged, "averaged"), (raw, "raw")):
        model = build_model(spec)
        model.load_state_dict(weights)
        report = verify_equivalence(model.eval(), fused, x, raise_on_mismatch=False)
        assert report.passed == (name == summary.shipped_weights), name
    assert summary.test_acc == pytest.approx(float((fused(x).argmax(1) == y).float().mean()), abs=1e-6)


def test_ema_is_never_shipped_worse_than_the_same_run_without_it(tmp_path: Path) -> None:
    """A run long enough for the averaging to matter, on generated data with learnable structure: Lightning's EMA
    (decay 0.999 from step 1, averaged BN statistics) shipped 7% where the raw weights reach about 80%."""
    write_fake_cifar(tmp_path / "data", "cifar10", per_batch=80, n_test=200)
    run = [
        "model=repvgg_tiny",
        "model.widths=[8,8,16,16,32]",
        "trainer=cpu",
        "trainer.max_epochs=5",
        "logger=csv",
        "data.num_workers=0",
        "data.val_size=100",
        "data.batch_size=32",
        "data.eval_batch_size=200",
        "trainer.num_sanity_val_steps=0",
        "trainer.deterministic=true",
        "seed=7",
        f"paths.data_dir={tmp_path / 'data'}",
    ]
    plain = train(compose_config("train", run, run_dir=tmp_path / "plain"))
    ema = train(compose_config("train", [*run, "callbacks=ema"], run_dir=tmp_path / "ema"))
    assert plain.test_acc >= 0.5  # the raw weights learn (chance is 0.1)
    assert ema.test_acc >= plain.test_acc - 0.05, (ema.test_acc, plain.test_acc)  # 200 test images
    # both weights scored at the shipped checkpoint; the average, with its own BN statistics, is far above chance
    assert ema.val_acc_averaged >= 0.5 and ema.val_acc_raw >= 0.5
    # the raw weights of an EMA run are the plain run's, step for step
    raw = torch.load(ema.last_checkpoint, weights_only=True)["current_model_state"]
    plain_last = torch.load(plain.last_checkpoint, weights_only=True)["state_dict"]
    assert raw.keys() == plain_last.keys() and all(torch.equal(raw[k], plain_last[k]) for k in raw)
    # each epoch: the raw weights' loss is the plain run's val/loss, the average's is the module's own val/loss (it
    # validates the average), and the shipped loss (what breaks checkpoint ties) is that of the better-scoring weights
    plain_rows, ema_rows = (_validation_rows(r / "csv" / "metrics.csv") for r in (tmp_path / "plain", tmp_path / "ema"))
    assert len(plain_rows) == len(ema_rows) == 5
    for plain_row, row in zip(plain_rows, ema_rows, strict=True):
        assert float(row["val/loss_raw"]) == pytest.approx(float(plain_row["val/loss"]), rel=1e-5)
        assert float(row["val/acc_raw"]) == pytest.approx(float(plain_row["val/acc"]), abs=1e-6)
        assert float(row["val/loss_ema"]) == pytest.approx(float(row["val/loss"]), rel=1e-5)
        averaged_ships = float(row["val/acc_ema"]) >= float(row["val/acc_raw"])
        assert row["val/loss_shipped"] == row["val/loss_ema" if averaged_ships else "val/loss_raw"]
        assert float(row["val/acc_shipped"]) == max(float(row["val/acc_ema"]), float(row["val/acc_raw"]))
    assert ema.best_val_acc == pytest.approx(max(float(r["val/acc_shipped"]) for r in ema_rows))


def _validation_rows(metrics_csv: Path) -> list[dict[str, str]]:
    """The rows of metrics.csv that hold an epoch's validation (val/acc set)."""
    with open(metrics_csv, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("val/acc")]
