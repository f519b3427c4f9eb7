"""train.py as a user runs it: DDP on CPU processes, and one clear line for each bad input."""

import json
from pathlib import Path

import pytest
from helpers import run_entry

pytestmark = pytest.mark.slow

TINY = [
    "model=repvgg_tiny",
    "model.widths=[8,8,16,16,32]",
    "debug=limit",
    "data.val_size=40",
    "data.batch_size=8",
    "data.eval_batch_size=20",
]


def assert_one_clear_line(proc, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("extra", [[], ["callbacks=ema"]], ids=["plain", "ema"])
def test_ddp_on_two_cpu_processes_writes_exactly_one_fused_model(
    extra, cifar_root: Path, tmp_path: Path, run_env
) -> None:
    run_dir = tmp_path / "run"
    proc = run_entry(
        "train.py",
        ["trainer=ddp_sim", *TINY, f"paths.data_dir={cifar_root}", f"hydra.run.dir={run_dir}", *extra],
        run_env,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    fused = list(tmp_path.rglob("model.safetensors"))
    assert fused == [run_dir / "fused" / "model.safetensors"]
    assert not list(tmp_path.rglob(".fused.tmp-*"))
    assert proc.stdout.count("training summary") == 1
    if extra:  # both ranks scored the raw and the averaged weights on their shards; the verdict is over all of them
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["shipped_weights"] in ("averaged", "raw") and summary["val_acc_raw"] is not None


def test_ddp_accuracies_count_every_image_once_and_match_a_single_process_deploy(tmp_path: Path, run_env) -> None:
    """Two processes on 41 validation and 41 test images: Lightning's sampler padded each share to 21, so the
    recorded accuracies were over 42 images, one of them twice (a new user's demo: 360 of 359)."""
    from helpers import write_fake_cifar

    write_fake_cifar(tmp_path / "data", "cifar10", per_batch=40, n_test=41)
    run_dir = tmp_path / "run"
    all_eval = ["trainer.limit_val_batches=1.0", "trainer.limit_test_batches=1.0", "data.val_size=41"]
    args = ["trainer=ddp_sim", *TINY, *all_eval, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}"]
    proc = run_entry("train.py", args, run_env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val_images"] == 41 and summary["test_images"] == 41, summary
    assert "of 41 images" in proc.stdout
    # one process, deploy.py on the same test split, measures what training recorded
    deployed = run_entry(
        "deploy.py",
        [
            f"ckpt={run_dir}",
            "benchmark.enabled=false",
            "export.onnx=false",
            "export.torch_export=false",
            f"hydra.run.dir={tmp_path / 'deploy'}",
        ],
        run_env,
    )
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    report = json.loads((tmp_path / "deploy" / "report.json").read_text())
    assert report["num_test_images"] == 41
    assert report["correct"]["train_form"] == round(summary["test_acc"] * 41)
    # the recorded test loss is the mean over the 41 images: Lightning's sync_dist divided the loss sum by the
    # processes' image counts (21 and 20) averaged as integers, 20, so it recorded 41/40 of the mean
    assert abs(_logged(run_dir, "test/loss") - _single_process_test_loss(run_dir, tmp_path / "data")) < 1e-5


def _logged(run_dir: Path, key: str) -> float:
    import csv

    (metrics,) = run_dir.rglob("metrics.csv")
    values = [float(row[key]) for row in csv.DictReader(metrics.open()) if row.get(key)]
    assert len(values) == 1, values
    return values[0]


def _single_process_test_loss(run_dir: Path, data_root: Path) -> float:
    """Cross-entropy of the shipped (fused) model over the whole CIFAR test batch, in this one process."""
    import pickle

    import torch

    from reparam.artifact import read_fused_artifact
    from reparam.preprocess import Preprocessing

    artifact = read_fused_artifact(run_dir / "fused")
    with open(data_root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # the file this test wrote
    images = torch.as_tensor(batch[b"data"]).reshape(-1, 3, 32, 32)
    labels = torch.as_tensor(batch[b"labels"])
    x = Preprocessing.from_record(artifact.config["input"])(images)
    with torch.no_grad():
        logits = artifact.model(x).double()
    return float(torch.nn.functional.cross_entropy(logits, labels))


def test_missing_cifar_explains_where_it_looked(tmp_path: Path, run_env) -> None:
    proc = run_entry("train.py", [*TINY, f"paths.data_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"], run_env)
    assert_one_clear_line(proc, str(tmp_path / "cifar-10-batches-py"), "data.download=true", "experiment=demo")


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("model.variant=Z9", "unknown RepVGG variant 'Z9'"),
        ("data.num_classes=7", "data.num_classes=7 but cifar10 has 10 classes"),
        ("data.batch_size=0", "data.batch_size must be >= 1"),
        ("ckpt_path=/no/such.ckpt", "ckpt_path=/no/such.ckpt does not exist"),
        ("optimized_metric=val_loss", "optimized_metric=val_loss is not a training summary value"),
    ],
)
def test_bad_settings_end_with_one_line(
    override: str, fragment: str, cifar_root: Path, tmp_path: Path, run_env
) -> None:
    proc = run_entry(
        "train.py", [*TINY, f"paths.data_dir={cifar_root}", override, f"hydra.run.dir={tmp_path}"], run_env
    )
    line = assert_one_clear_line(proc, fragment)
    assert line in (tmp_path / "train.log").read_text()  # the run's log says what went wrong too


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_ddp_on_a_machine_without_gpus_points_to_the_cpu_preset(tmp_path: Path, run_env) -> None:
    proc = run_entry("train.py", ["experiment=demo", "trainer=ddp", f"hydra.run.dir={tmp_path}"], run_env)
    assert_one_clear_line(proc, "invalid trainer settings", "trainer=cpu runs anywhere", "trainer=ddp_sim")


def test_a_required_setting_left_out_is_one_line(tmp_path: Path, run_env) -> None:
    """data=imagefolder without data.data_dir (``???`` in its config) ended in OmegaConf's traceback."""
    proc = run_entry("train.py", ["data=imagefolder", "data.image_size=64", f"hydra.run.dir={tmp_path}"], run_env)
    assert_one_clear_line(proc, "data.data_dir has no value", "add data.data_dir=<folder holding train/<class>/")


def test_unknown_config_option_fails_with_hydras_message(tmp_path: Path, run_env) -> None:
    proc = run_entry("train.py", ["model=repvgg_z9", f"hydra.run.dir={tmp_path}"], run_env)
    assert proc.returncode != 0
    assert "Could not find 'model/repvgg_z9'" in proc.stderr and "repvgg_a0" in proc.stderr


def test_multirun_sweep_ends_with_a_summary_of_every_run(cifar_root: Path, tmp_path: Path, run_env) -> None:
    # the default sweep directory (no hydra.sweep.dir): logs/train/multiruns/<time> under the working directory
    proc = run_entry(
        "train.py",
        ["-m", *TINY, f"paths.data_dir={cifar_root}", "optimizer.lr=0.3,0.001"],
        run_env,
        timeout=400,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    report = json.loads((sweep / "sweep_summary.json").read_text())
    assert report["optimized_metric"] == "best_val_acc" and len(report["runs"]) == 2
    by_job = {run["job"]: run for run in report["runs"]}
    for job, lr in ((0, "0.3"), (1, "0.001")):
        run = by_job[job]
        assert f"optimizer.lr={lr}" in run["overrides"] and run["status"] == "ok"
        assert run["run_dir"] == str(sweep / str(job))
        assert (sweep / str(job) / "fused" / "model.safetensors").is_file()
        # the table is built from what each run wrote, not from memory
        assert run["summary"] == json.loads((sweep / str(job) / "summary.json").read_text())
        assert run["value"] == run["summary"]["best_val_acc"]  # what train.py handed to Hydra's sweeper
    scores = [run["summary"]["best_val_acc"] for run in report["runs"]]
    assert all(isinstance(v, float) for v in scores) and scores == sorted(scores, reverse=True)
    assert "sweep of 2 runs" in proc.stdout and str(sweep / "sweep_summary.json") in proc.stdout
    # the test phase names the best checkpoint by its path: no warning about the run's two ModelCheckpoint callbacks
    assert "multiple `ModelCheckpoint`" not in proc.stderr + proc.stdout


def test_sweep_survives_a_diverging_job(cifar_root: Path, tmp_path: Path, run_env) -> None:
    """A user error ends only its own job: the other job runs, the table lists both, the exit code says so."""
    sweep = tmp_path / "sweep"
    proc = run_entry(
        "train.py",
        ["-m", *TINY, f"paths.data_dir={cifar_root}", "optimizer.lr=1e8,0.1", f"hydra.sweep.dir={sweep}"],
        run_env,
        timeout=400,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error: training diverged" in proc.stderr
    assert "error: 1 of 2 sweep jobs failed (job 0: training diverged" in proc.stderr
    report = json.loads((sweep / "sweep_summary.json").read_text())
    by_job = {run["job"]: run for run in report["runs"]}
    assert report["failed"] == 1 and by_job[0]["status"] == "failed" and "training diverged" in by_job[0]["error"]
    assert by_job[1]["status"] == "ok" and (sweep / "1" / "fused" / "model.safetensors").is_file()
    failed = json.loads((sweep / "0" / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["error"].startswith("training diverged")
    assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "completed"
    assert "sweep of 2 runs" in proc.stdout and "failed:" in proc.stdout  # the table's status cell (its text wraps)


def test_data_dir_naming_the_train_split_is_told_its_parent(tmp_path: Path, run_env) -> None:
    from reparam.data.synthetic import write_digits_folder

    folder = write_digits_folder(tmp_path / "my_images", per_class=2, splits=("train",))
    proc = run_entry(
        "train.py",
        ["data=imagefolder", f"data.data_dir={folder / 'train'}", f"hydra.run.dir={tmp_path / 'run'}"],
        run_env,
    )
    assert_one_clear_line(proc, "it is the train/ split itself", f"use data.data_dir={folder}")
