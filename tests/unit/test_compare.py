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
    for a, b in zip(ref.split(3), other.split(3)):
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
