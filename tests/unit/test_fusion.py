"""The algebra in reparam.fusion, checked against torch's own conv/BN on the same tensors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reparam.fusion import bn_statistics, fold_bn, identity_kernel, pad_kernel, scale_kernel, sum_branches


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("conv_bias", [True, False])
def test_fold_bn_matches_conv_then_bn(affine: bool, conv_bias: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=conv_bias).double()
    bn = nn.BatchNorm2d(5, eps=1e-3, affine=affine).double().eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.2, 3)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(-2, 2)
            bn.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    w, b = fold_bn(conv.weight, conv.bias, *bn_statistics(bn))
    assert torch.allclose(F.conv2d(x, w, b, padding=1), bn(conv(x)), atol=1e-12, rtol=0)


def test_fold_bn_keeps_dtype_and_computes_wide() -> None:
    w = torch.randn(4, 2, 3, 3)
    var = torch.full((4,), 1e-8)
    folded, bias = fold_bn(w, None, torch.zeros(4), var, 1e-5)
    assert folded.dtype == torch.float32 and bias.dtype == torch.float32
    expected = w.double() / torch.sqrt(var.double() + 1e-5).reshape(-1, 1, 1, 1)
    assert torch.equal(folded, expected.float())


def test_bn_statistics_rejects_bn_without_running_stats() -> None:
    with pytest.raises(ValueError, match="track_running_stats"):
        bn_statistics(nn.BatchNorm2d(4, track_running_stats=False))


def test_bn_statistics_accepts_syncbatchnorm() -> None:
    mean, var, eps, gamma, beta = bn_statistics(nn.SyncBatchNorm(3, eps=1e-3))
    assert mean.shape == (3,) and eps == 1e-3 and gamma is not None


@pytest.mark.parametrize("small,size", [(1, 3), (1, 5), (3, 7), (1, 1)])
def test_pad_kernel_equals_smaller_conv(small: int, size: int) -> None:
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    k = torch.randn(6, 4, small, small, dtype=torch.float64)
    expected = F.conv2d(x, k, padding=small // 2)
    assert torch.allclose(F.conv2d(x, pad_kernel(k, size), padding=size // 2), expected, atol=1e-12)


def test_pad_kernel_refuses_odd_difference_and_oversize() -> None:
    with pytest.raises(ValueError, match="odd"):
        pad_kernel(torch.zeros(1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match="does not fit"):
        pad_kernel(torch.zeros(1, 1, 5, 5), 3)


@pytest.mark.parametrize("channels,groups", [(6, 1), (6, 2), (6, 3), (6, 6), (1, 1)])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_identity_kernel_is_identity(channels: int, groups: int, k: int) -> None:
    x = torch.randn(2, channels, 5, 6, dtype=torch.float64)
    kernel = identity_kernel(channels, k, groups, dtype=torch.float64)
    assert kernel.shape == (channels, channels // groups, k, k)
    assert torch.equal(F.conv2d(x, kernel, padding=k // 2, groups=groups), x)


def test_identity_kernel_builds_in_requested_dtype_and_device() -> None:
    kernel = identity_kernel(4, 3, 2, dtype=torch.float16, device="cpu")
    assert kernel.dtype == torch.float16 and kernel.device.type == "cpu"
    assert int(kernel.sum()) == 4


def test_identity_kernel_rejects_bad_args() -> None:
    with pytest.raises(ValueError, match="odd"):
        identity_kernel(4, 2)
    with pytest.raises(ValueError, match="divide"):
        identity_kernel(5, 3, groups=2)


def test_sum_branches_is_linear() -> None:
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    a = (torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64))
    b = (torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64))
    k, bias = sum_branches([a, b])
    expected = F.conv2d(x, *a, padding=1) + F.conv2d(x, *b, padding=1)
    assert torch.allclose(F.conv2d(x, k, bias, padding=1), expected, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        sum_branches([a, (torch.zeros(4, 3, 1, 1), torch.zeros(4))])
    with pytest.raises(ValueError, match="no branches"):
        sum_branches([])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_scale_kernel_is_a_per_channel_scale_of_the_output_in_the_given_dtype(dtype: torch.dtype) -> None:
    kernel, scale = torch.randn(6, 2, 3, 1, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    x = torch.randn(2, 4, 7, 5, dtype=torch.float64)
    expected = F.conv2d(x, kernel, padding=(1, 0), groups=2) * scale.reshape(1, -1, 1, 1)
    scaled = scale_kernel(kernel.to(dtype), scale.to(dtype))
    assert scaled.dtype == dtype  # no widening: the linear_add block runs it in the training dtype
    if dtype == torch.float64:
        assert torch.allclose(F.conv2d(x, scaled, padding=(1, 0), groups=2), expected, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="one entry per output channel"):
        scale_kernel(kernel, scale[:5])
