"""deploy.py quantize=int8: static INT8 with ONNX Runtime, evaluated on the whole test split, with a drop check."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import compose_config

from reparam.deploy import deploy
from reparam.deploy.targets import ort as ort_targets
from reparam.deploy.targets.pytorch import Fused
from reparam.errors import UserError
from reparam.training import train

pytestmark = pytest.mark.slow

# the optional OpenVINO INT8 target, where OpenVINO is installed (the dev extras install it)
OPENVINO = ["openvino_int8"] if importlib.util.find_spec("openvino") else []
INT8 = [
    "quantize=int8",
    "quantize.calibration_images=256",
    "benchmark.batch_sizes=[1,32]",
    "benchmark.min_run_time=0.3",
    "benchmark.rounds=2",
    "export.torch_export=false",
    "device=cpu",
]


@pytest.fixture(scope="module")
def qarepvgg_demo(tmp_path_factory) -> dict:
    """QARepVGG trained on the embedded digits (the demo recipe): fuses exactly, then quantizes."""
    run = tmp_path_factory.mktemp("qarepvgg")
    return train(compose_config("train", ["experiment=demo", "model.block=qarepvgg"], run_dir=run))


def test_qarepvgg_trains_fuses_exactly_and_quantizes_within_max_drop(
    qarepvgg_demo: dict, tmp_path: Path, monkeypatch
) -> None:
    assert qarepvgg_demo.fusion_argmax_agreement == 1.0 and qarepvgg_demo.fusion_fp64_max_abs_diff <= 1e-10
    fused_passes = []  # images the fused model (the reference) is run on, batch by batch, during evaluation
    real_predict = Fused.predict
    monkeypatch.setattr(
        Fused, "predict", lambda self, images: fused_passes.append(len(images)) or real_predict(self, images)
    )
    quantized = []  # INT8 targets share one calibration and one file
    real_quantize = ort_targets.quantize_int8
    monkeypatch.setattr(ort_targets, "quantize_int8", lambda *a, **k: quantized.append(a[1]) or real_quantize(*a, **k))
    chosen = f"targets=[{','.join(['auto', *OPENVINO])}]"
    deploy(compose_config("deploy", [f"ckpt={qarepvgg_demo.best_checkpoint}", *INT8, chosen], run_dir=tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    assert sum(fused_passes) == report["num_test_images"] == 359  # one pass over the test split feeds every target
    assert quantized == [tmp_path / "model.int8.onnx"]
    # the classifier stays fp32: the logits are the Gemm's own output, not uint8 steps through Quantize/Dequantize
    import onnx

    graph = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    writer = next(n for n in graph.node if graph.output[0].name in n.output)
    assert writer.op_type == "Gemm" and not any(i.endswith("DequantizeLinear_Output") for i in writer.input[1:])
    # every target with its accuracy against the fp32 reference and its speed, in one report
    targets = report["targets"]
    assert list(targets) == ["fused", "train_form", "plain_vgg", "onnxruntime_fp32", *OPENVINO, "onnxruntime_int8"]
    for name, target in targets.items():
        assert target["num_images"] == 359 and 0.9 <= target["accuracy"] <= 1.0, name
        assert set(target["throughput"]) == {"1", "32"} and all(v > 0 for v in target["throughput"].values()), name
        assert target["gate"]["passed"], (name, target["gate"])
    assert targets["onnxruntime_int8"]["gate"]["limits"] == {"max_drop": 1.0}
    if OPENVINO:  # the same INT8 file, compiled by OpenVINO: its own kernels, the same calibration
        ov, ort = targets["openvino_int8"], targets["onnxruntime_int8"]
        assert ov["label"] == "openvino int8 cpu" and ov["details"] == ort["details"] and ov["artifact"] is None
        assert abs(ov["correct"] - ort["correct"]) <= 2
    int8 = report["int8"]  # the schema-1 section, a view of targets.onnxruntime_int8
    assert {"accuracy", "accuracy_drop", "disagreements_vs_fp32", "throughput", "speedup_vs_fp32", "model_path"} <= set(
        int8
    )
    assert Path(int8["model_path"]).is_file() and int8["per_channel"] and int8["method"] == "minmax"
    assert (
        int8["fp32_accuracy"] == report["accuracy"]["fused"]
        and int8["accuracy"] == targets["onnxruntime_int8"]["accuracy"]
    )
    assert int8["accuracy_drop"] == pytest.approx((int8["fp32_accuracy"] - int8["accuracy"]) * 100)
    assert int8["accuracy_drop"] <= 1.0 and int8["correct"] >= 0.9 * report["num_test_images"]
    assert set(int8["throughput"]) == {"1", "32"} and set(int8["speedup_vs_fp32"]) == {"1", "32"}
    benchmarked = {r["target"] for r in report["benchmark"]}
    assert benchmarked == {"train_form", "fused", "plain_vgg", "onnxruntime_fp32", "onnxruntime_int8", *OPENVINO}
    assert all(len(r["throughput_rounds"]) == 2 for r in report["benchmark"])  # interleaved rounds
    spread = report["speedup_spread"]["32"]
    assert spread["min"] <= spread["median"] <= spread["max"]


def test_a_broken_calibration_trips_the_drop_check(qarepvgg_demo: dict, tmp_path: Path, monkeypatch) -> None:
    """Calibrating on images 50x too bright sets useless activation ranges: deploy must refuse the INT8 model."""
    from reparam.data import ImageDataModule

    real = ImageDataModule.calibration_images
    monkeypatch.setattr(ImageDataModule, "calibration_images", lambda self, n, seed=0: real(self, n, seed) * 50)
    with pytest.raises(UserError, match=r"INT8 accuracy dropped \d+\.\d\d points .* model\.block=qarepvgg") as info:
        deploy(
            compose_config(
                "deploy", [f"ckpt={qarepvgg_demo.best_checkpoint}", *INT8, "benchmark.enabled=false"], run_dir=tmp_path
            )
        )
    assert "more than quantize.max_drop=1.0" in str(info.value)
    assert (tmp_path / "report.json").is_file()  # the numbers are kept for the post-mortem


def test_unknown_quantize_method_is_one_clear_line(qarepvgg_demo: dict, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^quantize\.method=kl: choose minmax, entropy or percentile$"):
        deploy(
            compose_config(
                "deploy",
                [f"ckpt={qarepvgg_demo.fused_dir}", *INT8, "quantize.method=kl", "benchmark.enabled=false"],
                run_dir=tmp_path,
            )
        )


def test_calibration_images_are_the_unaugmented_normalized_train_split() -> None:
    from reparam.data import ImageDataModule

    dm = ImageDataModule("digits", num_workers=0)
    dm.setup()
    images = dm.calibration_images(64)
    assert images.shape == (64, 3, 32, 32) and torch.equal(images, dm.calibration_images(64))
    assert abs(float(images.mean())) < 0.3 and 0.7 < float(images.std()) < 1.3  # normalized like training batches
