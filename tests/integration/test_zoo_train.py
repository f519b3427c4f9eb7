"""Every block kind, and any nn.Module through model=custom, trains a demo epoch, fuses exactly and deploys."""

import json
import logging
from pathlib import Path

import httpx
import pytest
import torch
from helpers import ROOT, compose_config, run_entry, zoo_kinds
from serving import split_pngs, start_server

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


@pytest.mark.parametrize("kind", zoo_kinds())
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


USER_BLOCK = '''
from reparam import MultiBranchBlock, register_block
from reparam.branches import ConvBN


@register_block("double_kxk")
class DoubleKxK(MultiBranchBlock):
    """Two k x k + BN branches, summed: the docs' example of a kind of one's own."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, groups=1, deploy=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, deploy=deploy)
        if not deploy:
            for name in ("a", "b"):
                branch = ConvBN(in_channels, out_channels, kernel_size, stride, self.padding, groups=groups)
                self.branches[name] = branch
'''


def test_a_block_kind_of_ones_own_trains_fuses_and_deploys_through_imports(tmp_path: Path, run_env) -> None:
    """reparam.register_block in the user's own file, named by imports=[...] on train.py and deploy.py as typed in
    the user's folder; without it, and with a module that is not there, one line saying what to pass."""
    (tmp_path / "my_blocks.py").write_text(USER_BLOCK)
    run = tmp_path / "run"
    demo = ["experiment=demo", "debug=limit", "logger=none"]
    trained = run_entry(
        "train.py",
        [*demo, "imports=[my_blocks]", "model.block=double_kxk", f"hydra.run.dir={run}"],
        run_env,
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fusion_argmax_agreement"] == 1.0 and summary["fusion_fp64_max_abs_diff"] <= 1e-10
    # the command training says to run next builds the same kind: it names the module too
    assert f"next: python {ROOT / 'deploy.py'} ckpt={run / 'fused'} 'imports=[my_blocks]'" in trained.stdout
    deployed = run_entry(
        "deploy.py",
        [f"ckpt={run}", "imports=[my_blocks]", *EVALUATE_ONLY, f"hydra.run.dir={tmp_path / 'd'}"],
        run_env,
        cwd=tmp_path,
    )
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert json.loads((tmp_path / "d" / "report.json").read_text())["disagreements"] == 0
    # serve.py: its inference workers are processes of their own, which must import the module too
    server = start_server(run, tmp_path / "served", f"imports=[{tmp_path / 'my_blocks.py'}]", "serve.max_batch_size=4")
    try:
        image = split_pngs()[0][0]
        answer = httpx.post(f"{server.url}/predict", content=image, headers={"Content-Type": "image/png"}, timeout=60)
        assert answer.status_code == 200 and len(answer.json()["predictions"][0]["top_k"]) == 5, answer.text
    finally:
        assert server.stop() == 0, server.output()[-3000:]
    # a .py file anywhere works as well as a module name
    again = run_entry(
        "deploy.py",
        [
            f"ckpt={run}/fused",
            f"imports=[{tmp_path / 'my_blocks.py'}]",
            *EVALUATE_ONLY,
            f"hydra.run.dir={tmp_path / 'd2'}",
        ],
        run_env,
        cwd=ROOT,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    # the same kind with a fusion that drops its bias: the train form and the fused model differ, and that is the
    # user's code to check, not a reparam bug to report
    broken = (
        USER_BLOCK
        + """
    def equivalent_kernel_and_bias(self):
        kernel, bias = super().equivalent_kernel_and_bias()
        return kernel, bias * 0
"""
    )
    (tmp_path / "broken_blocks.py").write_text(broken)
    # the benchmark on, as by default: a wrong fusion is not timed (its speed means nothing; it took minutes)
    timed = ["benchmark.enabled=true", "benchmark.batch_sizes=[1]", "benchmark.min_run_time=0.05"]
    proc = run_entry(
        "deploy.py",
        [f"ckpt={run}", "imports=[broken_blocks]", *EVALUATE_ONLY, *timed, f"hydra.run.dir={tmp_path / 'd3'}"],
        run_env,
        cwd=tmp_path,
    )
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and "the fused model is NOT equivalent to the train form" in line, proc.stderr[-2000:]
    # the line says which block fuses wrong, and that it is the user's code, as training's does
    assert "; the first block that differs is stages.0.0 (kind 'double_kxk', max |diff| " in line
    assert line.endswith(
        "its fusion is your code (reparam.register_block): check it; see " + str(tmp_path / "d3" / "report.json")
    )
    assert "please report" not in line
    report = json.loads((tmp_path / "d3" / "report.json").read_text())
    assert report["benchmark"] == [] and "speed means nothing" in report["benchmark_skipped"]
    assert "skipped benchmark: the fused model does not compute" in proc.stdout
    for args, said in [
        ([f"ckpt={run}/fused", *EVALUATE_ONLY], "unknown block kind 'double_kxk'"),
        ([f"ckpt={run}", "imports=[my_blokcs]", *EVALUATE_ONLY], "imports: no module 'my_blokcs' here"),
    ]:
        proc = run_entry("deploy.py", [*args, f"hydra.run.dir={tmp_path / 'bad'}"], run_env, cwd=tmp_path)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 2 and len(errors) == 1 and said in errors[0], proc.stderr[-2000:]
        assert "imports=[" in errors[0] and "Traceback" not in proc.stderr
