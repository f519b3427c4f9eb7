"""deploy.py on a tiny trained run: same accuracy in both forms, a report other tools can read,
exports that match, and one clear line for every bad input."""

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config, run_entry

from reparam.data import ImageDataModule
from reparam.deploy import DeployReport, deploy, load_for_deploy
from reparam.deploy.console import print_deploy_summary
from reparam.errors import UserError
from reparam.guard import guarded
from reparam.training import train

pytestmark = pytest.mark.slow

FAST_DEPLOY = ["benchmark.batch_sizes=[1,4]", "benchmark.min_run_time=0.02", "export.check_batch_size=8"]
REPORT_KEYS = {
    "schema_version",
    "checkpoint",
    "dataset",
    "num_test_images",
    "targets",
    "machine",
    "accuracy",
    "correct",
    "disagreements",
    "max_abs_logit_diff",
    "benchmark",
    "speedup",
    "exports",
}


@pytest.fixture(scope="module")
def trained_run(cifar_root, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("trained")
    cfg = compose_config(
        "train",
        [
            "model=repvgg_tiny",
            "model.widths=[8,8,16,16,32]",
            "debug=limit",
            "data.val_size=40",
            "data.batch_size=16",
            f"paths.data_dir={cifar_root}",
        ],
        run_dir=run_dir,
    )
    return train(cfg)


def run_deploy(ckpt, tmp_path: Path, *overrides: str) -> DeployReport:
    return deploy(compose_config("deploy", [f"ckpt={ckpt}", *FAST_DEPLOY, *overrides], run_dir=tmp_path))


def test_deploy_from_checkpoint_shows_identical_accuracy(trained_run, tmp_path: Path, capsys) -> None:
    report = run_deploy(trained_run.last_checkpoint, tmp_path)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert REPORT_KEYS <= set(on_disk) and on_disk["schema_version"] == 3
    assert on_disk["num_test_images"] == 40 and on_disk["dataset"] == "cifar10"
    assert on_disk["accuracy"]["train_form"] == on_disk["accuracy"]["fused"]
    assert on_disk["correct"]["train_form"] == on_disk["correct"]["fused"]
    assert on_disk["disagreements"] == 0 and on_disk["max_abs_logit_diff"] < 1e-4
    assert on_disk["equivalent"] is True
    # every CPU target of targets=[auto], each evaluated on the whole test split and timed at every batch size
    targets = on_disk["targets"]
    assert list(targets) == ["fused", "train_form", "plain_vgg", "onnxruntime_fp32"]
    for name, target in targets.items():
        assert target["num_images"] == 40 and target["correct"] == on_disk["correct"]["fused"], name
        assert set(target["throughput"]) == {"1", "4"} and target["gate"]["passed"], name
        assert name == "fused" or (target["disagreements"] == 0 and target["max_abs_logit_diff"] < 1e-4), name
    assert (
        targets["onnxruntime_fp32"]["label"] == "onnxruntime fp32 cpu"
        and targets["fused"]["gate"]["kind"] == "reference"
    )
    assert set(targets["train_form"]["speedup_vs_reference"]) == {"1", "4"}
    machine = on_disk["machine"]
    assert machine["threads"] >= 1 and machine["threads_chosen_because"] and "load_before" in machine
    rows = {(r["target"], r["batch_size"]) for r in on_disk["benchmark"]}
    # every runtime on one table: torch eager forms and the exported file in ONNX Runtime
    assert rows == {(t, b) for t in ("train_form", "fused", "plain_vgg", "onnxruntime_fp32") for b in (1, 4)}
    assert all(r["threads"] == machine["threads"] for r in on_disk["benchmark"])
    assert set(on_disk["speedup"]) == {"1", "4"} and all(s > 0 for s in on_disk["speedup"].values())
    spread = on_disk["speedup_spread"]["4"]
    assert spread["min"] <= spread["median"] <= spread["max"] and isinstance(spread["measurable"], bool)
    ort_row = next(r for r in on_disk["benchmark"] if r["target"] == "onnxruntime_fp32")
    assert ort_row["params"] is None and ort_row["throughput_ips"] > 0
    fused_row = next(r for r in on_disk["benchmark"] if r["target"] == "fused")
    train_row = next(r for r in on_disk["benchmark"] if r["target"] == "train_form")
    assert fused_row["params"] < train_row["params"] and fused_row["flops_per_image"] < train_row["flops_per_image"]
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert report.exports["onnx"].max_abs_diff < 1e-4 and report.exports["torch_export"].max_abs_diff < 1e-5
    assert report.to_dict() == on_disk  # report.json is the typed report, nothing else
    print_deploy_summary(report)
    table = capsys.readouterr().out
    for label in ("fused torch fp32 cpu", "train_form torch fp32 cpu", "onnxruntime fp32 cpu"):
        assert label in table  # every row names its runtime and precision


def test_onnx_export_matches_pytorch_on_test_images(trained_run, cifar_root, tmp_path: Path) -> None:
    import onnxruntime as ort

    run_deploy(trained_run.last_checkpoint, tmp_path, "benchmark.enabled=false", "export.torch_export=false")
    # the model deploy exported: fused from last.ckpt (fused/ holds the best epoch's weights, another one)
    fused = load_for_deploy(trained_run.last_checkpoint).fused
    dm = ImageDataModule("cifar10", str(cifar_root), val_size=40, num_workers=0, eval_batch_size=40)
    dm.setup()
    x, _ = next(iter(dm.test_dataloader()))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (x[:1], x[:7], x):  # the batch axis is dynamic
        (out,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
        with torch.no_grad():
            expected = fused(batch).numpy()
        assert np.abs(out - expected).max() < 1e-4
        assert (out.argmax(1) == expected.argmax(1)).all()
    assert not (tmp_path / "model.pt2").exists()  # export.torch_export=false writes none


def test_deploy_from_fused_folder_matches_recorded_accuracy(trained_run, tmp_path: Path, capsys) -> None:
    report = run_deploy(trained_run.fused_dir, tmp_path, "benchmark.batch_sizes=[2]", "benchmark.dtype=bfloat16")
    assert report.source_kind == "fused" and report.target("train_form") is None
    assert "holds no train form" in report.skipped_targets["train_form"]
    assert report.recorded_test_acc == pytest.approx(trained_run.test_acc)
    # same number of correct images (the recorded value went through float32)
    n = report.num_test_images
    assert round(report.target("fused").accuracy * n) == round(report.recorded_test_acc * n)
    assert {r.target for r in report.benchmark} == {"fused", "plain_vgg", "onnxruntime_fp32", "fused_bf16"}
    # benchmark.dtype=bfloat16 adds the bf16 target: measured for accuracy too, gated by its max_drop
    bf16 = report.target("fused_bf16")
    assert bf16.label == "fused torch bf16 cpu" and bf16.num_images == n and bf16.gate.limits == {"max_drop": 0.5}
    assert bf16.gate.passed == (bf16.accuracy_drop <= 0.5) and bf16.max_abs_logit_diff > 0
    assert {r.dtype for r in report.benchmark if r.target == "fused_bf16"} == {"bfloat16"}
    print_deploy_summary(report)
    assert "fused torch bf16 cpu" in capsys.readouterr().out


def test_run_directory_resolves_to_its_checkpoint(trained_run, tmp_path: Path) -> None:
    report = run_deploy(
        trained_run.run_dir, tmp_path, "benchmark.enabled=false", "export.onnx=false", "export.torch_export=false"
    )
    # the weights fused/ was built from (the best checkpoint), not last.ckpt: deploy and the artifact agree
    fused_from = json.loads((Path(trained_run.run_dir) / "fused" / "config.json").read_text())["source_checkpoint"]
    assert report.checkpoint == fused_from and not fused_from.endswith("last.ckpt")
    assert report.weights_chosen_because.startswith("the checkpoint fused/ was built from")
    assert report.machine.warnings == []  # nothing was timed, nothing to distrust
    # the run tested that checkpoint: its test accuracy is compared (it was null from a run directory)
    assert trained_run.tested_weights == fused_from and trained_run.test_images == report.num_test_images
    assert report.recorded_test_acc == pytest.approx(trained_run.test_acc) and report.recorded_test_images == 40
    assert round(report.target("fused").accuracy * report.num_test_images) == round(trained_run.test_acc * 40)
    # last.ckpt holds other weights, which the run did not test: nothing recorded to compare with
    assert load_for_deploy(trained_run.last_checkpoint).recorded.get("test_acc") is None


def test_a_copied_run_directory_deploys_its_own_checkpoint_not_the_original(trained_run, tmp_path: Path) -> None:
    """summary.json and fused/config.json record absolute paths of the directory the run trained in; a copy (moved
    to another folder or machine) must use its own files while the original still exists."""
    copy = tmp_path / "copy"
    shutil.copytree(trained_run.run_dir, copy)
    fused_from = Path(json.loads((copy / "fused" / "config.json").read_text())["source_checkpoint"])
    assert fused_from.is_file() and not fused_from.is_relative_to(copy)  # the original's, still there
    off = ("benchmark.enabled=false", "export.onnx=false", "export.torch_export=false")
    report = run_deploy(copy, tmp_path / "deployed", *off)
    assert report.checkpoint == str(copy / "checkpoints" / fused_from.name)
    # without its checkpoints the copy is evaluated from its own fused/, never from the original's checkpoint
    shutil.rmtree(copy / "checkpoints")
    report = run_deploy(copy, tmp_path / "deployed_fused", *off)
    assert report.source_kind == "fused" and report.checkpoint == str(copy / "fused")
    assert report.weights_chosen_because.startswith(f"fused/ was built from {copy / 'checkpoints'}")


CUDA_RUNS = {
    "last_checkpoint": ["benchmark.channels_last=true", "targets=[auto,compiled,onnxruntime_fp32]", "quantize=int8"],
    "fused_dir": ["benchmark.dtype=bfloat16", "benchmark.compile=true"],  # the shorthands: compiled_bf16
    "run_dir": ["benchmark.dtype=float16", "quantize=int8"],
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("source", sorted(CUDA_RUNS))
def test_every_target_runs_on_cuda(trained_run, tmp_path: Path, source: str) -> None:
    """Torch targets on the GPU in every precision and layout, ONNX Runtime on the CPU, exports from CPU copies."""
    report = run_deploy(
        getattr(trained_run, source),
        tmp_path,
        "device=cuda",
        "quantize.calibration_images=64",
        "quantize.max_drop=100",
        *(f"target_settings.{name}.max_drop=100" for name in ("fused_bf16", "fused_fp16", "compiled_bf16")),
        *CUDA_RUNS[source],
    )
    labels = {t.label for t in report.targets}
    assert {
        "fused torch fp32 cuda",
        "plain_vgg torch fp32 cuda",
        "fused torch bf16 cuda",
        "fused torch fp16 cuda",
    } <= labels
    for target in report.targets:
        assert target.num_images == 40 and target.gate.passed, (target.label, target.gate)
        assert set(target.throughput) == {1, 4}, target.label
    assert all(r.peak_memory_mb > 0 for r in report.benchmark if r.device.startswith("cuda"))
    assert all(export.ok for export in report.exports.values())
    if source == "fused_dir":
        assert "fused torch.compile bf16 cuda" in labels
    if "quantize=int8" in CUDA_RUNS[source]:
        assert "onnxruntime int8 cpu" in labels


def _bad(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def expect_one_line(capsys, tmp_path: Path, ckpt, *fragments: str, overrides=()) -> None:
    cfg = compose_config("deploy", [f"ckpt={ckpt}", *FAST_DEPLOY, *overrides], run_dir=tmp_path / "out")
    with pytest.raises(SystemExit) as info:
        guarded(deploy)(cfg)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def test_bad_inputs_each_get_one_clear_line(trained_run, tmp_path: Path, capsys) -> None:
    last = Path(trained_run.last_checkpoint)
    expect_one_line(capsys, tmp_path, "/no/such/file.ckpt", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_one_line(capsys, tmp_path, empty, "holds no checkpoint")
    # what is wrong, in words: not torch's internal codes (a text file used to end in "corrupt? 101")
    expect_one_line(
        capsys,
        tmp_path,
        _bad(tmp_path, "notes.ckpt", b"hello, not a checkpoint"),
        "not a readable PyTorch checkpoint: the file is not a checkpoint at all",
        "copy it again",
    )
    expect_one_line(
        capsys,
        tmp_path,
        _bad(tmp_path, "cut.ckpt", last.read_bytes()[: last.stat().st_size // 2]),
        "not a readable PyTorch checkpoint: the file is cut off or damaged",
        "use another checkpoint",
    )
    expect_one_line(capsys, tmp_path, _bad(tmp_path, "empty.ckpt", b""), "the file is empty (0 bytes)")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}, "hyper_parameters": {"lr": 0.1}}, other)
    expect_one_line(capsys, tmp_path, other, "not a reparam checkpoint", "another project")
    expect_one_line(
        capsys,
        tmp_path,
        last,
        "was trained on data=cifar10, not data.dataset=cifar100",
        overrides=["data.dataset=cifar100"],
    )
    expect_one_line(
        capsys,
        tmp_path,
        last,
        "unknown target 'tensorrt'; choose from auto, train_form, fused",
        overrides=["targets=[auto,tensorrt]"],
    )
    expect_one_line(
        capsys,
        tmp_path,
        last,
        "benchmark.dtype must be float32, bfloat16 or float16",
        overrides=["benchmark.dtype=float8"],
    )
    # before the export and every other target's evaluation (it failed after them, 21 s into a demo deploy)
    for setting, said in [
        ("quantize.method=bogus", "error: quantize.method=bogus: choose minmax, entropy or percentile"),
        ("quantize.calibration_images=0", "error: quantize.calibration_images=0: give a number of training images"),
        ("quantize.reduce_range=maybe", "error: quantize.reduce_range=maybe: choose auto, true or false"),
        ("quantize.max_drop=-1", "error: quantize.max_drop=-1: give the accuracy points INT8 may lose"),
    ]:
        expect_one_line(capsys, tmp_path, last, said, overrides=["quantize=int8", setting])
        assert not (tmp_path / "out" / "model.onnx").exists()
    ckpt = torch.load(last, weights_only=True)
    ckpt["hyper_parameters"]["model_spec"]["widths"] = [4, 4, 4, 4, 4]
    torch.save(ckpt, tmp_path / "mismatch.ckpt")
    expect_one_line(capsys, tmp_path, tmp_path / "mismatch.ckpt", "weights do not fit the model it describes")
    if not torch.cuda.is_available():
        expect_one_line(capsys, tmp_path, last, "device=cuda asked for", overrides=["device=cuda"])
        expect_one_line(
            capsys,
            tmp_path,
            last,
            "target fused_fp16 cannot run here: fused_fp16 runs on GPUs only",
            overrides=["benchmark.dtype=float16", "device=cpu"],
        )


def test_corrupt_fused_folder_is_refused(trained_run, tmp_path: Path, capsys) -> None:
    import shutil

    broken = tmp_path / "fused"
    shutil.copytree(trained_run.fused_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    expect_one_line(capsys, tmp_path, broken, "model.safetensors cannot be read")
    (broken / "model.safetensors").unlink()
    expect_one_line(capsys, tmp_path, broken, "holds no checkpoint")


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    with evil.open("wb") as f:
        torch.save({"state_dict": {}, "payload": Exploit()}, f, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    expect_one_line(capsys, tmp_path, evil, "refusing to load")
    assert not marker.exists()


def test_cli_without_ckpt_and_with_missing_file(tmp_path: Path, run_env) -> None:
    forms = ("a run directory", "a .ckpt file", "a fused/ folder")  # what a missing ckpt= line names
    for script, args, fragments in (
        # no ckpt at all: the line names the three forms too (the run directory first, as the README uses it)
        (
            "deploy.py",
            [],
            ["ckpt is required", "ckpt=logs/train/runs/<run> (a run directory", "last.ckpt", "<run>/fused"],
        ),
        ("serve.py", [], ["ckpt is required", "ckpt=<run>", "last.ckpt", "<run>/fused"]),
        ("deploy.py", ["ckpt=/no/such.ckpt"], ["ckpt=/no/such.ckpt does not exist", *forms]),
        ("serve.py", ["ckpt=nope"], ["ckpt=nope does not exist", *forms]),  # what a new user typed
    ):
        proc = run_entry(script, [*args, f"hydra.run.dir={tmp_path}"], run_env)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1, proc.stderr[-2000:]
        for fragment in fragments:
            assert lines[0].count(fragment) == 1, (fragment, lines[0])


def test_a_cifar100_checkpoint_on_digits_names_the_other_dataset(trained_run, tmp_path: Path, run_env) -> None:
    """The command a user types: another dataset than the model was trained on is refused first, whatever the run's
    own data settings (val_size=5000 for CIFAR-100 leaves nothing of digits' 1,438 training images) would say."""
    ckpt = torch.load(trained_run.last_checkpoint, weights_only=True)
    state = ckpt["state_dict"]
    state["net.head.weight"] = torch.zeros(100, state["net.head.weight"].shape[1])
    state["net.head.bias"] = torch.zeros(100)
    ckpt["hyper_parameters"]["model_spec"]["num_classes"] = 100
    ckpt["datamodule_hyper_parameters"].update(dataset="cifar100", num_classes=100, val_size=5000)
    torch.save(ckpt, tmp_path / "cifar100.ckpt")
    # with a CUDA toolkit and no GPU, importing torch.utils.benchmark used to log "No CUDA runtime is found" first
    run_env["CUDA_HOME"] = str(tmp_path)
    proc = run_entry(
        "deploy.py",
        [f"ckpt={tmp_path / 'cifar100.ckpt'}", "data.dataset=digits", f"hydra.run.dir={tmp_path / 'out'}"],
        run_env,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "was trained on data=cifar100, not data.dataset=digits" in errors[0], proc.stderr[
        -2000:
    ]
    assert "val_size" not in proc.stderr and "No CUDA runtime" not in proc.stderr, proc.stderr


def test_user_error_class_is_used_for_deploy_errors() -> None:
    with pytest.raises(UserError, match="ckpt is required"):
        load_for_deploy("")


def test_the_command_says_what_it_is_doing_and_writes_deploy_log(trained_run, tmp_path: Path, run_env) -> None:
    """A user's deploy at 224 px ran 9 minutes with nothing on the console until the table, and the deploy.log that
    --help names was never written (nothing was logged)."""
    out = tmp_path / "deploy"
    proc = run_entry(
        "deploy.py",
        [f"ckpt={trained_run.run_dir}", *FAST_DEPLOY, "export.torch_export=false", f"hydra.run.dir={out}"],
        run_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    progress = [
        ln for ln in proc.stderr.splitlines() if ln.startswith(("deploying ", "exporting ", "evaluating ", "benchmark"))
    ]
    assert len(progress) == 6, proc.stderr
    assert progress.pop(1) == "exporting ONNX, each checked against the fused model"
    assert progress[0].startswith(f"deploying {trained_run.best_checkpoint} (") and progress[0].endswith(f" into {out}")
    assert progress[1] == "evaluating fused, train_form, plain_vgg, onnxruntime_fp32 on the test split of cifar10"
    assert progress[2] == (
        "benchmark: 4 targets at batch sizes 1, 4 of 3x32x32, 3 rounds (benchmark.enabled=false skips it)"
    )
    assert re.fullmatch(r"benchmark batch 1: \d+ s; batch 4 next, roughly \d+ s", progress[3]), progress
    assert re.fullmatch(r"benchmark batch 4: \d+ s", progress[4]), progress
    log = (out / "deploy.log").read_text()
    report = json.loads((out / "report.json").read_text())
    for line in progress:  # timestamped, as train.log's lines
        assert f"[reparam.deploy][INFO] {line}\n" in log
    for name, target in report["targets"].items():  # the table's rows, with the report's figures
        row = next(ln for ln in log.splitlines() if f"]   {target['label']}: accuracy " in ln)
        assert f"({target['correct']})" in row and all(f"batch {bs} " in row for bs in (1, 4)), (name, row)
    assert log.rstrip().endswith(f"report: {out / 'report.json'}")
    # the fastest target that passed its check at each batch size, named (a user compared the ratio columns by hand)
    passed = {n: t for n, t in report["targets"].items() if t["gate"]["passed"] and n != "train_form"}
    fastest = {bs: max(passed, key=lambda n: passed[n]["throughput"][bs]) for bs in ("1", "4")}
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("fastest that passed its check: ")]
    for bs, name in fastest.items():
        assert f"batch {bs}: {name} ({passed[name]['throughput'][bs]:.0f}/s" in line, (fastest, line)
    assert line in log


def test_weights_too_large_to_compute_with_are_said_as_such_not_as_a_wrong_fusion(
    trained_run, tmp_path: Path, capsys
) -> None:
    """A user's diverged run (1e21 weights after a few steps at lr 1e6): deploy's checks all failed with inf
    differences and said the fusion was wrong ("a bug: please report it")."""
    ckpt = torch.load(trained_run.last_checkpoint, weights_only=True)
    for key, value in ckpt["state_dict"].items():
        if value.is_floating_point() and value.dim() == 4:  # every conv: the product overflows float32
            ckpt["state_dict"][key] = value * 1e6
    torch.save(ckpt, tmp_path / "huge.ckpt")
    expect_one_line(
        capsys,
        tmp_path,
        tmp_path / "huge.ckpt",
        "huge.ckpt: the fused model's logits on the test images are not finite (inf or nan): its weights are too "
        "large to compute with in float32 (largest |",
        "as a diverged run's are; deploy a checkpoint from before it diverged",
    )
    assert not (tmp_path / "out" / "model.onnx").exists()  # said before anything was exported
