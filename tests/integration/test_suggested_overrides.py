"""Every override an error message suggests is one that works: Hydra accepts it for the entry point it is meant for.

The source is scanned for suggestions (``key=value`` in string literals whose key is a config key), so a new
message cannot suggest an override this file does not try.
"""

import ast
import re
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, compose_config
from omegaconf import OmegaConf

# every suggestion in an error message, with a concrete value, for the entry point(s) it is meant for
SUGGESTED = {
    "trainer": [("train", "trainer=cpu")],
    "trainer.gradient_clip_val": [("train", "trainer.gradient_clip_val=1.0")],
    "trainer.accelerator": [("train", "trainer.accelerator=cpu")],
    "trainer.devices": [("train", "trainer.devices=1")],
    "data": [("train", "data=cifar10"), ("train", "data=digits"), ("train", "data=imagefolder")],
    "data.dataset": [
        ("deploy", "data.dataset=cifar10"),
        ("deploy", "data.dataset=digits"),
        ("deploy", "data.dataset=imagefolder"),
    ],
    "data.skip_bad_images": [("train", "data=imagefolder data.skip_bad_images=true")],
    "data.image_size": [("train", "data=imagefolder data.image_size=64")],
    "model.input_size": [("train", "model.input_size=null")],
    "model.name": [("train", "model=timm model.name=mobileone_s0")],
    "model.pretrained": [("train", "model=timm model.pretrained=/tmp/weights.safetensors")],
    "data.data_dir": [("train", "data.data_dir=/tmp/somewhere"), ("deploy", "data.data_dir=/tmp/somewhere")],
    "data.download": [("train", "data.download=true"), ("deploy", "data.download=true")],
    "data.num_classes": [("train", "data.num_classes=10")],
    "data.num_workers": [("train", "data.num_workers=0")],
    "data.batch_size": [("train", "data.batch_size=64")],
    "data.val_size": [("train", "data.val_size=100")],
    "data.pipeline": [("train", "data.pipeline=fast")],
    "experiment": [("train", "experiment=demo")],
    "ckpt_path": [("train", "ckpt_path=/tmp/run/checkpoints/last.ckpt")],
    "auto_resume": [("train", "auto_resume=true")],
    "hydra.run.dir": [("train", "hydra.run.dir=/tmp/run"), ("deploy", "hydra.run.dir=/tmp/run")],
    "ckpt": [("deploy", "ckpt=/tmp/run/fused")],
    "device": [("deploy", "device=cpu"), ("deploy", "device=auto")],
    "optimizer.lr": [("train", "optimizer.lr=0.01")],
    "scheduler.warmup_epochs": [("train", "scheduler.warmup_epochs=2")],
    "optimized_metric": [("train", "optimized_metric=test_acc")],
    "callbacks": [("train", "callbacks=ema")],
    "callbacks.ema.bn_data": [("train", "callbacks=ema callbacks.ema.bn_data=augmented")],
    "callbacks.reparameterize.source": [("train", "callbacks.reparameterize.source=last")],
    "model": [("train", "model=custom")],
    "logger": [("train", "logger=mlflow"), ("train", "logger=wandb"), ("deploy", "logger=csv")],
    "logger.mlflow.tracking_uri": [("train", "logger=mlflow logger.mlflow.tracking_uri=sqlite:////tmp/logs/mlflow.db")],
    "model.block": [("train", "model.block=dbb")],
    "model.variant": [("train", "model.variant=null"), ("train", "model.variant=B0")],
    "model.widths": [("train", "model.widths=[8,8,16,16,32]")],
    "model.depths": [("train", "model.depths=[1,1,1,1,1]")],
    "model.net._target_": [("train", "model=custom model.net._target_=reparam.models.examples.AsymmetricNet")],
    "quantize": [("deploy", "quantize=int8")],
    "quantize.method": [("deploy", "quantize=int8 quantize.method=percentile")],
    "quantize.max_drop": [("deploy", "quantize=int8 quantize.max_drop=2.0")],
    "benchmark.threads": [("deploy", "benchmark.threads=1")],
    "benchmark.rounds": [("deploy", "benchmark.rounds=6")],
    "benchmark.batch_sizes": [("deploy", "benchmark.batch_sizes=[1,32]")],
    "benchmark.enabled": [("deploy", "benchmark.enabled=false")],
    "targets": [("deploy", "targets=[auto,onnxruntime_int8]")],
}
CONFIG_KEYS = {
    "trainer",
    "data",
    "experiment",
    "ckpt_path",
    "auto_resume",
    "hydra",
    "ckpt",
    "device",
    "optimizer",
    "scheduler",
    "optimized_metric",
    "callbacks",
    "model",
    "logger",
    "benchmark",
    "export",
    "tolerance",
    "quantize",
    "debug",
    "speed",
    "paths",
    "module",
    "seed",
    "test",
    "targets",
    "target_settings",
}
SUGGESTION = re.compile(r"(?<![\w./-])([a-z_]+(?:\.[a-z_0-9]+)*)=(?=[\w<$/.\[-])")


def suggestions_in_source() -> set[str]:
    """Config keys suggested in string literals under src/reparam (f-string parts included)."""
    found = set()
    for path in (ROOT / "src" / "reparam").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for key in SUGGESTION.findall(node.value):
                    if key.split(".")[0] in CONFIG_KEYS:
                        found.add(key)
    return found


def test_every_suggestion_in_the_source_is_tried_here() -> None:
    untried = suggestions_in_source() - set(SUGGESTED)
    assert not untried, f"error messages suggest overrides this test does not try: {sorted(untried)}"


CASES = [case for cases in SUGGESTED.values() for case in cases]


@pytest.mark.parametrize("config,overrides", CASES, ids=[f"{c}:{o}" for c, o in CASES])
def test_suggested_override_is_accepted(config: str, overrides: str, tmp_path: Path) -> None:
    base = ["ckpt=/tmp/x"] if config == "deploy" and not overrides.startswith("ckpt=") else []
    cfg = compose_config(config, [*base, *overrides.split()], run_dir=tmp_path)  # raises if Hydra rejects it
    for override in overrides.split():
        key, value = override.split("=", 1)
        if key in cfg.hydra.runtime.choices:  # a config group: the option was selected
            assert cfg.hydra.runtime.choices[key] == value
        else:  # a value: it landed where the message says
            assert OmegaConf.select(cfg, key) == yaml.safe_load(value), override


@pytest.mark.slow
def test_the_deploy_data_suggestion_runs(tmp_path: Path) -> None:
    """A fused folder without a data record: the message says data.dataset=...; running that works."""
    import json

    from reparam.deploy import deploy
    from reparam.errors import UserError
    from reparam.training import train

    summary = train(
        compose_config("train", ["experiment=demo", "trainer.max_epochs=1", "test=false"], run_dir=tmp_path / "run")
    )
    config_path = Path(summary.fused_dir) / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("data")
    config_path.write_text(json.dumps(config))
    args = [f"ckpt={summary.fused_dir}", "benchmark.enabled=false", "export.onnx=false", "export.torch_export=false"]
    with pytest.raises(UserError, match=r"records no data config; pass data\.dataset=cifar10\|cifar100\|digits"):
        deploy(compose_config("deploy", args, run_dir=tmp_path / "d1"))
    report = deploy(compose_config("deploy", [*args, "data.dataset=digits"], run_dir=tmp_path / "d2"))
    assert report.dataset == "digits" and report.num_test_images == 359
