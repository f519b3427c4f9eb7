"""One tolerance and one streaming comparison for every check in reparam."""

import math

import pytest
import torch

from reparam import Comparison, Tolerance, compare


def test_streaming_equals_one_batch() -> None:
    torch.manual_seed(0)
    ref = torch.randn(10, 5)
    other = ref + 1e-3 * torch.randn(10, 5)
    streamed = Comparison(Tolerance(1e-2, 0.0))
    for a, b in zip(ref.split(3), other.split(3), strict=True):
        streamed.update(a, b)
    assert streamed.report() == compare(ref, other, Tolerance(1e-2, 0.0))


def test_tolerance_scales_with_the_output_and_counts_disagreements() -> None:
    ref = torch.tensor([[100.0, 0.0], [0.0, 1.0]])
    other = ref + torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # second row flips its prediction
    report = compare(ref, other, Tolerance(0.0, 0.05))
    assert report.passed  # 2 <= 0.05 x 100
    assert report.disagreements == 1 and report.argmax_agreement == 0.5 and report.max_rel_diff == 0.02
    assert not compare(ref, other, Tolerance(0.0, 0.01)).passed


def test_defaults_follow_the_dtype_and_explicit_values_win() -> None:
    assert Tolerance.for_dtype(torch.float64) == Tolerance(1e-10, 1e-10)
    assert Tolerance.resolve(torch.float32, atol=1e-3) == Tolerance(1e-3, Tolerance.for_dtype(torch.float32).rtol)


def test_non_finite_output_never_passes() -> None:
    report = compare(torch.ones(2, 2), torch.tensor([[1.0, float("nan")], [1.0, 1.0]]), Tolerance(1.0, 1.0))
    assert not report.passed and math.isinf(report.max_abs_diff)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        compare(torch.ones(2, 3), torch.ones(3, 2))


def test_strict_fp32_turns_tf32_off_and_restores_it() -> None:
    from reparam.compare import strict_fp32, tf32_enabled

    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    conv.fp32_precision = "tf32"  # cuDNN's default on Ampere and later
    try:
        assert tf32_enabled()
        with strict_fp32():
            assert not tf32_enabled() and conv.fp32_precision == "ieee"
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert tf32_enabled() and conv.fp32_precision == "tf32"
        with pytest.raises(RuntimeError), strict_fp32():
            raise RuntimeError("restored even on error")
        assert conv.fp32_precision == "tf32"
    finally:
        conv.fp32_precision = saved


def test_deploy_compares_the_forms_in_strict_fp32(monkeypatch, tmp_path) -> None:
    """deploy's equivalence check runs with TF32 off whatever the process allows; its report says so."""
    from reparam.compare import tf32_enabled
    from reparam.deploy import run as deploy_run
    from reparam.deploy.targets.pytorch import Fused

    seen = []
    real = Fused.predict

    def spy(self, images):
        seen.append(tf32_enabled())
        return real(self, images)

    monkeypatch.setattr(Fused, "predict", spy)
    from helpers import compose_config

    from reparam.training import train

    summary = train(compose_config("train", ["experiment=demo", "debug=fast_dev_run"], run_dir=tmp_path / "t"))
    conv = torch.backends.cudnn.conv
    saved, conv.fp32_precision = conv.fp32_precision, "tf32"
    try:
        report = deploy_run.deploy(
            compose_config(
                "deploy",
                [
                    f"ckpt={summary.fused_dir}",
                    "benchmark.enabled=false",
                    "export.onnx=false",
                    "export.torch_export=false",
                ],
                run_dir=tmp_path / "d",
            )
        )
        assert tf32_enabled()  # restored for the benchmarks, which may use TF32 (and say so)
    finally:
        conv.fp32_precision = saved
    assert seen and not any(seen) and report.comparison_precision == "float32, TF32 off"
