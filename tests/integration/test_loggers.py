"""logger=wandb / logger=mlflow work offline, get the whole resolved config, and deploy reports to them too;
the console commands reparam-train / reparam-deploy run like the scripts."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compose_config

from reparam.deploy import deploy
from reparam.guard import find_user_error
from reparam.training import train

pytestmark = pytest.mark.slow

QUICK = ["experiment=demo", "trainer.max_epochs=1", "callbacks.reparameterize.verify_samples=16"]
EVALUATE_ONLY = ["benchmark.enabled=false", "export.onnx=false", "export.torch_export=false", "device=cpu"]


def test_mlflow_gets_the_config_and_the_deploy_report(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = compose_config(
        "train", [*QUICK, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}"], run_dir=tmp_path / "train"
    )
    summary = train(config)
    deploy(
        compose_config(
            "deploy",
            [f"ckpt={summary.best_checkpoint}", *EVALUATE_ONLY, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}"],
            run_dir=tmp_path / "deploy",
        )
    )
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("reparam").experiment_id], order_by=["start_time ASC"])
    train_run, deploy_run = runs
    params = train_run.data.params
    assert params["config/model/arch"] == "repvgg" and params["config/trainer/max_epochs"] == "1"
    assert params["config/optimizer/lr"] == "0.1"  # not only the module's hyperparameters: the whole config
    assert "val/acc" in train_run.data.metrics
    # named by its run folder (every run was named "train"), artifacts beside the store (not in ./mlruns of the cwd)
    assert train_run.info.run_name == str(tmp_path / "train")
    experiment = client.get_experiment_by_name("reparam")
    assert experiment.artifact_location.endswith(f"{config.paths.log_dir}/mlruns"), experiment.artifact_location
    assert deploy_run.data.metrics["deploy/disagreements"] == 0.0
    assert deploy_run.data.metrics["deploy/accuracy/fused"] == deploy_run.data.metrics["deploy/accuracy/train_form"]


def test_a_tracking_store_mlflow_refuses_is_one_line(tmp_path: Path) -> None:
    """MLflow 3 keeps its file store (tracking_uri=file:...) in maintenance mode and raises: a user got Hydra's
    "Error executing job" and a traceback."""
    pytest.importorskip("mlflow")
    overrides = [*QUICK, "logger=mlflow", f"logger.mlflow.tracking_uri=file:{tmp_path / 'mlruns'}"]
    try:
        train(compose_config("train", overrides, run_dir=tmp_path / "train"))
    except Exception as err:  # noqa: BLE001  # what the entry point's guard sees
        line = str(find_user_error(err))
    else:
        pytest.skip("this MLflow accepts a file store")
    assert line.startswith("logger=mlflow: MLflow refused the tracking store: "), line
    assert line.endswith("logger.mlflow.tracking_uri=sqlite:///<folder>/mlflow.db)") and "\n" not in line


def test_wandb_runs_offline_with_the_config(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    train(compose_config("train", [*QUICK, "logger=wandb"], run_dir=tmp_path))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    record = next(runs[0].glob("run-*.wandb")).read_bytes()  # what `wandb sync` uploads later
    assert b"max_epochs" in record and b"warmup_epochs" in record  # the whole config, not only the module's


def test_console_commands_run_like_the_scripts_from_any_directory(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    train_cmd, deploy_cmd = (
        shutil.which("reparam-train", path=str(bindir)),
        shutil.which("reparam-deploy", path=str(bindir)),
    )
    if train_cmd is None:
        pytest.skip("reparam is not installed with its console scripts in this environment")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}
    run_dir = tmp_path / "run"
    where = tmp_path  # not the checkout: the commands find the configs of the checkout reparam was installed from
    proc = subprocess.run(
        [train_cmd, *QUICK, "test=false", f"hydra.run.dir={run_dir}"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert f"next: reparam-deploy ckpt={run_dir / 'fused'}" in proc.stdout  # not a deploy.py the user does not have
    assert (run_dir / "train.log").is_file() and not list(run_dir.glob("entrypoints.log"))
    proc = subprocess.run(
        [deploy_cmd, f"ckpt={run_dir}", *EVALUATE_ONLY, f"hydra.run.dir={tmp_path / 'deploy'}"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "deploy" / "report.json").read_text())["disagreements"] == 0
