"""train.py as a user runs it: DDP on CPU processes, and one clear line for each bad input."""

from pathlib import Path

import pytest
from helpers import run_entry

pytestmark = pytest.mark.slow

TINY = ["model=repvgg_tiny", "model.widths=[8,8,16,16,32]", "debug=limit", "data.val_size=40", "data.batch_size=8",
        "data.eval_batch_size=20"]


def assert_one_clear_line(proc, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_ddp_on_two_cpu_processes_writes_exactly_one_fused_model(cifar_root: Path, tmp_path: Path, run_env) -> None:
    run_dir = tmp_path / "run"
    proc = run_entry("train.py", ["trainer=ddp_sim", *TINY, f"paths.data_dir={cifar_root}", f"hydra.run.dir={run_dir}"],
                     run_env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    fused = [p for p in tmp_path.rglob("model.safetensors")]
    assert fused == [run_dir / "fused" / "model.safetensors"]
    assert not list(tmp_path.rglob(".fused.tmp-*"))
    assert proc.stdout.count("training summary") == 1


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
    ],
)
def test_bad_settings_end_with_one_line(override: str, fragment: str, cifar_root: Path, tmp_path: Path, run_env) -> None:
    proc = run_entry("train.py", [*TINY, f"paths.data_dir={cifar_root}", override, f"hydra.run.dir={tmp_path}"], run_env)
    assert_one_clear_line(proc, fragment)


def test_unknown_config_option_fails_with_hydras_message(tmp_path: Path, run_env) -> None:
    proc = run_entry("train.py", ["model=repvgg_z9", f"hydra.run.dir={tmp_path}"], run_env)
    assert proc.returncode != 0
    assert "Could not find 'model/repvgg_z9'" in proc.stderr and "repvgg_a0" in proc.stderr
