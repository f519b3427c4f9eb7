"""Deploy targets without a trained run: the registry and its selection, device placement (on the meta device, which
refuses any CPU tensor exactly as CUDA would), the one-pass evaluation, the gates, and the thread choice."""

import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_SPEC, randomize_bn

from reparam.compare import Tolerance
from reparam.deploy.benchmark import benchmark_targets
from reparam.deploy.evaluate import evaluate_targets
from reparam.deploy.gates import Equivalence, MaxDrop, Reference
from reparam.deploy.load import Loaded
from reparam.deploy.machine import Machine, busy_cpus, choose_threads
from reparam.deploy.report import TargetReport
from reparam.deploy.targets import (
    TARGETS,
    Target,
    TargetContext,
    TargetUnavailable,
    build_targets,
    select_targets,
    shorthand_targets,
)
from reparam.deploy.timing import BenchmarkResult, count_flops
from reparam.errors import UserError
from reparam.models import build_model, fuse_model

CPU, META = torch.device("cpu"), torch.device("meta")
FP32 = {"atol": 1e-4, "rtol": 1e-5}
SETTINGS = {
    "train_form": FP32,
    "plain_vgg": FP32,
    "compiled": FP32,
    "fused_bf16": {"max_drop": 0.5},
    "fused_fp16": {"max_drop": 0.5},
}


def tiny_loaded(with_train_form: bool = True) -> Loaded:
    train_form = randomize_bn(build_model(TINY_SPEC)).eval()
    fused = fuse_model(TINY_SPEC, train_form)
    return Loaded(
        Path("tiny.ckpt"),
        "checkpoint" if with_train_form else "fused",
        fused,
        train_form if with_train_form else None,
        dict(TINY_SPEC),
    )


def context(device: torch.device, loaded: Loaded | None = None, channels_last: bool = False) -> TargetContext:
    return TargetContext(loaded or tiny_loaded(), device, channels_last, threads=1, out_dir=Path("unused"))


def test_auto_picks_per_device_and_the_reference_comes_first() -> None:
    assert select_targets(["auto"], CPU, onnx_export=True).names == [
        "fused",
        "train_form",
        "plain_vgg",
        "onnxruntime_fp32",
    ]
    gpu = select_targets(["auto"], torch.device("cuda"), onnx_export=True).names
    assert gpu == ["fused", "train_form", "plain_vgg", "fused_bf16", "fused_fp16"]
    no_onnx = select_targets(["auto"], CPU, onnx_export=False)
    assert "onnxruntime_fp32" not in no_onnx.names and "export.onnx" in no_onnx.skipped["onnxruntime_fp32"]
    picked = select_targets(["onnxruntime_int8", "fused"], CPU, onnx_export=False)
    assert picked.names == ["fused", "onnxruntime_int8"] and picked.explicit == {"fused", "onnxruntime_int8"}


def test_unknown_target_is_one_line_listing_the_valid_ones() -> None:
    with pytest.raises(
        UserError,
        match=r"unknown target 'tensorrt'; choose from auto, train_form, fused, .*"
        r"onnxruntime_int8, .* \(e\.g\. targets=\[auto,onnxruntime_int8\]\)",
    ):
        select_targets(["auto", "tensorrt"], CPU, onnx_export=True)


def test_the_older_switches_each_add_one_target() -> None:
    assert shorthand_targets() == []
    assert shorthand_targets("bfloat16") == ["fused_bf16"]
    assert shorthand_targets("float16", compile=True) == ["compiled_fp16"]
    assert shorthand_targets(compile=True, quantize="int8") == ["compiled", "onnxruntime_int8"]
    with pytest.raises(UserError, match="benchmark.dtype must be float32, bfloat16 or float16, got 'float8'"):
        shorthand_targets("float8")


def test_what_cannot_run_here_is_skipped_by_auto_and_an_error_when_named() -> None:
    fused_only = context(CPU, tiny_loaded(with_train_form=False))
    selection = select_targets(["auto"], CPU, onnx_export=False)
    targets = build_targets(selection, fused_only, SETTINGS)
    assert [t.name for t in targets] == ["fused", "plain_vgg"]
    assert "holds no train form" in selection.skipped["train_form"]
    with pytest.raises(
        UserError, match="target train_form cannot run here: .* holds no train form; pass its checkpoint"
    ):
        build_targets(select_targets(["train_form"], CPU, onnx_export=False), fused_only, SETTINGS)
    with pytest.raises(UserError, match="target fused_fp16 cannot run here: fused_fp16 runs on GPUs only"):
        select_targets(["fused_fp16"], CPU, onnx_export=False)  # before loading anything
    with pytest.raises(UserError, match="target onnxruntime_fp32 cannot run here: no ONNX export"):
        build_targets(select_targets(["onnxruntime_fp32"], CPU, onnx_export=True), context(CPU), SETTINGS)


@pytest.mark.parametrize("channels_last", [False, True])
def test_every_torch_target_places_model_and_inputs_on_its_device(channels_last: bool) -> None:
    """On the meta device a forward with any CPU tensor left over raises, as a CUDA model meeting a CPU input does:
    building, predicting, counting FLOPs (the old crash) and benchmarking all go through reparam.device.place."""
    names = ["fused", "train_form", "plain_vgg", "fused_bf16", "fused_fp16"]
    targets = build_targets(
        select_targets(names, META, onnx_export=False), context(META, channels_last=channels_last), SETTINGS
    )
    images = torch.randn(2, 3, 32, 32)  # a CPU batch, as the test loader gives
    for target in targets:
        assert all(p.device == META for p in target.eager.parameters())
        logits = target.predict(images)
        assert logits.device == META and logits.dtype == torch.float32 and logits.shape == (2, 10)
        assert target.cost((3, 32, 32)).flops_per_image > 0
    assert {t.label for t in targets} == {
        "fused torch fp32 meta",
        "train_form torch fp32 meta",
        "plain_vgg torch fp32 meta",
        "fused torch bf16 meta",
        "fused torch fp16 meta",
    }
    rows = benchmark_targets(targets, batch_sizes=[3], min_run_time=0.01, rounds=1)  # meta ops are slow: one cell
    assert [(r.target, r.batch_size) for r in rows] == [(t.name, 3) for t in targets]
    assert all(r.channels_last == channels_last and r.flops_per_image > 0 for r in rows)


def test_count_flops_places_the_example_where_the_model_is() -> None:
    model = torch.nn.Conv2d(3, 4, 3).to(META, torch.bfloat16)
    assert count_flops(model, torch.zeros(1, 3, 8, 8)) == 2 * 4 * 3 * 9 * 36


class Fixed(Target):
    """A target whose logits are the reference's plus ``shift`` for class 0: a controlled difference."""

    def __init__(self, name: str, gate, shift: float = 0.0, precision: str = "fp32") -> None:
        self.name, self.form, self.gate, self.shift, self.precision, self.device = (
            name,
            name,
            gate,
            shift,
            precision,
            CPU,
        )
        self.calls, self.images_seen = 0, 0

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images_seen += len(images)
        logits = torch.nn.functional.one_hot(images[:, 0, 0, 0].long(), 3).float() * 4
        logits[:, 0] += self.shift
        return logits


def batches(labels: list[int], size: int = 4):
    y = torch.tensor(labels)
    x = y.float().reshape(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def test_one_pass_runs_the_reference_once_and_gates_each_target() -> None:
    labels = [0, 1, 2, 1, 2, 2, 1, 0, 1, 2]  # the reference predicts every label right
    exact = Equivalence(
        Tolerance(1e-4, 1e-5), "tolerance", mismatch="the fused model is NOT equivalent to the train form"
    )
    int8 = MaxDrop(1.0, "quantize.max_drop", "train with model.block=qarepvgg")
    plain = Equivalence(Tolerance(1e-4, 1e-5), "tolerance")
    targets = [
        Fixed("fused", Reference()),
        Fixed("train_form", exact, shift=1e-6),
        Fixed("off", plain, shift=0.01),
        Fixed("onnxruntime_int8", int8, shift=5.0, precision="int8"),
    ]
    evaluations = evaluate_targets(targets, batches(labels))
    assert targets[0].calls == 3 and targets[0].images_seen == len(labels)  # once over the split, no second pass
    reports = {t.name: TargetReport.of(t, evaluations[t.name], evaluations["fused"], []) for t in targets}
    assert reports["fused"].accuracy == 1.0 and reports["fused"].gate.passed and reports["fused"].disagreements is None
    assert reports["train_form"].gate.passed and reports["train_form"].max_abs_logit_diff == pytest.approx(1e-6)
    off = reports["off"].gate
    assert not off.passed
    assert off.failure.startswith("off torch fp32 cpu is NOT equivalent to the fused fp32 reference: correct 10 vs 10")
    drop = reports["onnxruntime_int8"]
    assert drop.correct == 2 and drop.disagreements == 8 and drop.accuracy_drop == pytest.approx(80.0)
    assert drop.gate.failure.startswith("INT8 accuracy dropped 80.00 points (fp32 100.00% -> INT8 20.00%")
    assert "more than quantize.max_drop=1.0; train with model.block=qarepvgg" in drop.gate.failure


def row(target: str, rounds: list[float]) -> BenchmarkResult:
    return BenchmarkResult(
        target,
        f"{target} torch fp32 cpu",
        "torch",
        "fp32",
        "cpu",
        1,
        "float32",
        False,
        False,
        2,
        1.0,
        0.1,
        rounds[0],
        3,
        None,
        None,
        None,
        rounds,
    )


def test_threads_follow_the_load_and_an_unsteady_benchmark_is_called_out() -> None:
    assert choose_threads(None, cores=2, total_cpus=2, load=0.3)[0] == 2
    assert choose_threads(None, cores=2, total_cpus=2, load=1.1)[0] == 1  # one other busy process: 129 ms -> 1 ms
    assert choose_threads(None, cores=8, total_cpus=64, load=16.0)[0] == 6  # the host's load, spread over its CPUs
    assert choose_threads(3, cores=2, total_cpus=2, load=9.0)[:1] == (3,)
    assert choose_threads(None, cores=4, total_cpus=4, load=None)[0] == 4
    quiet = Machine(2, 2, 2, "all", 0.1, 0.0)
    quiet.review([row("fused", [100, 104, 98])])
    assert quiet.warnings == [] and quiet.max_round_spread == pytest.approx(104 / 98)
    busy = Machine(2, 2, 2, "all", 2.4, 2.2)
    busy.review([row("fused", [100, 30, 98]), row("train_form", [50, 51, 49])])
    (warning,) = busy.warnings
    assert "load average 2.40" in warning and "varied 3.3x between rounds (fused torch fp32 cpu at batch 1)" in warning
    assert warning.endswith("Run on a quiet machine, or with benchmark.threads=1")
    # quiet by every measure, yet the rounds disagree (a VM's neighbours): the advice is not "a quiet machine"
    unsteady = Machine(2, 2, 2, "all", 0.0, 0.0, busy_before=0.0)
    unsteady.review([row("fused", [100, 62, 98])])
    (warning,) = unsteady.warnings
    assert "varied 1.6x between rounds" in warning and "quiet machine" not in warning, warning
    assert warning.endswith("more rounds (benchmark.rounds=6) steady the medians, or with benchmark.threads=1")
    evaluation_only = Machine(2, 2, 2, "all", 5.0, 4.9)
    evaluation_only.review([])
    assert evaluation_only.warnings == []  # nothing was timed
    measured = Machine(2, 2, 1, "1 of 2", 1.3, 1.1, busy_before=1.1)
    measured.review([row("fused", [100, 101, 99])])
    assert "1.1 CPUs busy with them when deploy started" in measured.warnings[0]
    assert measured.warnings[0].endswith("(this run already used 1 thread)")


def test_busy_cpus_sees_another_process_at_work() -> None:
    """The thread choice reads what other processes do now, not the 1-minute load average that lags behind."""
    if busy_cpus(0.05) is None:
        pytest.skip("no /proc/stat on this platform: deploy falls back to the load average")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # started and spinning
        assert busy_cpus(0.5) >= 0.5
    finally:
        spinner.kill()
        spinner.wait()


def test_every_registered_target_says_what_it_is() -> None:
    for name, cls in TARGETS.items():
        assert cls.name == name and cls.precision in ("fp32", "bf16", "fp16", "int8")
        assert cls.settings_key, name


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_int8_calibration_count_need_not_divide_into_batches(method: str, tmp_path, capfd) -> None:
    """ORT's histogram calibrators failed on a smaller last batch ('inhomogeneous shape'): 37 images, batches of 32.
    Their progress lines ("Collecting tensor data ...") stay out of the console, where deploy prints one table."""
    from reparam.deploy.export import export_onnx
    from reparam.deploy.quantize import OrtModel, quantize_int8

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()
    images = torch.randn(37, 3, 8, 8)
    assert export_onnx(model, images[:4], tmp_path / "m.onnx", min_run_time=0.01).ok
    capfd.readouterr()
    settings = quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", images, method)
    assert capfd.readouterr().out == ""
    if method == "minmax":  # an uneven last batch is fine for it: every image counts
        assert settings["calibration_images"] == 37 and "calibration_left_out" not in settings
    else:
        assert settings["calibration_images"] == 32 and settings["method"] == method
        assert settings["calibration_left_out"] == "5 of 37 (percentile calibrates on whole batches of 32)"
    out = OrtModel(tmp_path / "m.int8.onnx")(images[:5])
    assert out.shape == (5, 4) and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "max-autotune-no-cudagraphs"])
def test_compiled_target_uses_the_configured_mode_and_matches_the_fused_model(mode: str) -> None:
    """benchmark.compile_mode reaches torch.compile; where torch can build CPU kernels, the compiled form is run."""
    loaded = tiny_loaded()
    ctx = TargetContext(loaded, CPU, False, threads=1, out_dir=Path("unused"), compile_mode=mode)
    try:
        TARGETS["compiled"].check_device(CPU)
    except TargetUnavailable as err:  # no C++ compiler on this machine: the reason is shown
        pytest.skip(str(err))
    target = TARGETS["compiled"].build(ctx, FP32)
    assert target.details["compile_mode"] == mode
    if mode != "default":
        return  # autotuning on CPU is slow and adds nothing to what the default mode checks
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target.module(x), loaded.fused.eval()(x), atol=1e-4, rtol=1e-4)


def test_throughput_is_the_median_over_rounds_each_round_counting_once(monkeypatch) -> None:
    """Pooled block times weighed a round by how many blocks it timed: 195 img/s shown beside rounds of
    [100, 3686, 3591] (a new user's deploy on a busy machine). Now the figure is the middle round's."""
    from types import SimpleNamespace

    import reparam.deploy.benchmark as benchmark

    blocks = iter([[0.02] * 40, [0.001] * 5, [0.0011] * 5])  # seconds per block: a slow round with many blocks

    class Timer:  # torch.utils.benchmark.Timer's interface, with the block times above
        def __init__(self, *args, **kwargs) -> None:
            pass

        def blocked_autorange(self, min_run_time: float) -> SimpleNamespace:
            times = next(blocks)
            return SimpleNamespace(times=times, median=statistics.median(times))

    monkeypatch.setattr(benchmark.tbench, "Timer", Timer)

    class Timed(Fixed):  # the benchmark's batch is random: class 0 for every image, as the calls are not timed
        def prepare(self, images: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(images)

    (result,) = benchmark_targets([Timed("fused", Reference())], batch_sizes=[2], input_size=(3, 2, 2), rounds=3)
    assert result.throughput_rounds == pytest.approx([100, 2000, 2 / 0.0011])
    assert result.throughput_ips == pytest.approx(2 / 0.0011)  # the middle round (pooled: 100, the slow round's)
    assert result.latency_ms_median == pytest.approx(1.1) and result.runs == 50


def test_a_registered_torch_variant_needs_no_config_entry_and_is_told_apart_by_label() -> None:
    """A new user's fused fp32 channels_last target read "fused torch fp32 cpu" like the reference: two identical rows
    in the table and one merged line in plot.png. It also needed a target_settings entry to say the tolerance every
    float32 form shares, and the global benchmark.channels_last to be channels_last."""
    from reparam.deploy.targets import TorchTarget, register_target

    @register_target("test_fused_channels_last")
    class FusedChannelsLast(TorchTarget):
        settings_key = "tolerance"  # the float32 forms' tolerance, as train_form and plain_vgg have it
        layout_channels_last = True

    try:
        selection = select_targets(["fused", "test_fused_channels_last"], CPU, onnx_export=False)
        fused, mine = build_targets(selection, context(CPU), {**SETTINGS, "tolerance": FP32})
        assert mine.channels_last and not fused.channels_last
        assert isinstance(mine.gate, Equivalence) and mine.gate.tolerance == Tolerance(1e-4, 1e-5)
        assert fused.label == "fused torch fp32 cpu"
        assert mine.label == "fused torch fp32 cpu (test_fused_channels_last)"
        images = torch.randn(2, 3, 32, 32)
        assert torch.allclose(mine.predict(images), fused.predict(images), atol=1e-5)
    finally:
        TARGETS.pop("test_fused_channels_last")
