"""Every branch type's (kernel, bias) is exactly its eval-mode function, over shapes, groups, strides, dilations,
BN statistics and dtypes; and the branch algebra is differentiable."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_bn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from reparam.branches import AvgPoolBranch, ConvBN, IdentityBranch, OneByOneKxK, ScaledConv, ScaledIdentity
from reparam.fusion import compose_1x1_kxk, compose_kxk_1x1, pad_kernel, regroup_kernel

BRANCHES = [
    "conv_kxk",
    "conv_1x1",
    "conv_1xk",
    "conv_kx1",
    "identity",
    "one_by_one_kxk",
    "avg_pool",
    "avg_pool_dw",
    "scaled_kxk",
    "scaled_1x1",
    "scaled_1xk",
    "scaled_identity",
]


@st.composite
def branch_cases(draw):
    kind = draw(st.sampled_from(BRANCHES))
    groups = draw(st.sampled_from([1, 2, "depthwise"]))
    k = draw(st.sampled_from([3, 5]))
    stride = draw(st.sampled_from([1, 2]))
    dilation = draw(st.sampled_from([1, 2])) if kind.startswith(("conv", "scaled")) or kind == "identity" else 1
    if kind in ("identity", "scaled_identity", "avg_pool_dw"):
        stride = stride if kind == "avg_pool_dw" else 1
        groups = "depthwise" if kind == "avg_pool_dw" else groups
    if groups == "depthwise":
        in_ch = out_ch = groups = draw(st.integers(1, 6))
    else:
        in_ch = groups * draw(st.integers(1, 3))
        out_ch = in_ch if kind.endswith("identity") else groups * draw(st.integers(1, 3))
    if kind == "avg_pool" and groups >= out_ch:  # pointwise-first pooling needs groups < out_channels
        out_ch = groups * 2
    return dict(
        kind=kind,
        in_ch=in_ch,
        out_ch=out_ch,
        groups=groups,
        k=k,
        stride=stride,
        dilation=dilation,
        norm=draw(st.sampled_from(["bn", "bn_no_affine", "none"])),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        size=(draw(st.integers(5, 11)), draw(st.integers(5, 11))),
        batch=draw(st.integers(1, 3)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        seed=draw(st.integers(0, 2**16)),
    )


def build_branch(case: dict) -> tuple[nn.Module, int]:
    """The branch, and the dilation its kernel is laid out with."""
    norm = {
        "bn": functools.partial(nn.BatchNorm2d, eps=case["eps"]),
        "bn_no_affine": functools.partial(nn.BatchNorm2d, eps=case["eps"], affine=False),
        "none": None,
    }[case["norm"]]
    bn = norm or nn.BatchNorm2d  # the sequential branches always normalize
    i, o, g, k, s, d = (case[key] for key in ("in_ch", "out_ch", "groups", "k", "stride", "dilation"))
    p = d * (k // 2)
    kind = case["kind"]
    branch = {
        "conv_kxk": lambda: ConvBN(i, o, k, s, p, d, g, norm),
        "conv_1x1": lambda: ConvBN(i, o, 1, s, 0, d, g, norm),
        "conv_1xk": lambda: ConvBN(i, o, (1, k), s, (0, p), d, g, norm),
        "conv_kx1": lambda: ConvBN(i, o, (k, 1), s, (p, 0), d, g, norm),
        "identity": lambda: IdentityBranch(o, g, norm),
        "one_by_one_kxk": lambda: OneByOneKxK(i, 2 * i, o, k, s, g, bn),
        "avg_pool": lambda: AvgPoolBranch(i, o, k, s, g, bn),
        "avg_pool_dw": lambda: AvgPoolBranch(i, o, k, s, g, bn),
        "scaled_kxk": lambda: ScaledConv(i, o, k, s, p, d, g),
        "scaled_1x1": lambda: ScaledConv(i, o, 1, s, 0, d, g),
        "scaled_1xk": lambda: ScaledConv(i, o, (1, k), s, (0, p), d, g, trainable=False),
        "scaled_identity": lambda: ScaledIdentity(o, g),
    }[kind]()
    generator = torch.Generator().manual_seed(case["seed"])
    if hasattr(branch, "scale"):  # linear_add's branches: per-channel scales of either sign
        with torch.no_grad():
            branch.scale.copy_(torch.randn(o, generator=generator) * 1.5)
    return randomize_bn(branch, generator).to(case["dtype"]).eval(), d


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(branch_cases())
def test_branch_kernel_is_its_function(case: dict) -> None:
    torch.manual_seed(case["seed"])
    branch, dilation = build_branch(case)
    x = torch.randn(case["batch"], case["in_ch"], *case["size"], dtype=case["dtype"])
    kernel, bias = branch.kernel_and_bias()
    assert kernel.dtype == torch.float64 and bias.dtype == torch.float64
    kernel = pad_kernel(kernel, case["k"])
    stride = 1 if case["kind"].endswith("identity") else case["stride"]
    with torch.no_grad():
        expected = branch(x)
        actual = F.conv2d(x.double(), kernel, bias, stride, dilation * (case["k"] // 2), dilation, case["groups"])
    assert actual.shape == expected.shape
    diff = float((actual - expected.double()).abs().max())
    if case["dtype"] == torch.float64:
        assert diff <= 1e-10
    else:  # the branch itself ran in fp32: a few ulps of the magnitude per term summed
        fan_in = 2 * case["in_ch"] * case["k"] ** 2
        assert diff <= 8 * torch.finfo(torch.float32).eps * max(float(expected.abs().max()), 1.0) * fan_in


@pytest.mark.parametrize("groups,new_groups", [(4, 1), (4, 2), (8, 8), (6, 3), (24, 1)])
def test_regroup_kernel_is_the_same_conv(groups: int, new_groups: int) -> None:
    kernel = torch.randn(24, 24 // groups, 3, 3, dtype=torch.float64)
    x = torch.randn(2, 24, 7, 7, dtype=torch.float64)
    expected = F.conv2d(x, kernel, padding=1, groups=groups)
    actual = F.conv2d(x, regroup_kernel(kernel, groups, new_groups), padding=1, groups=new_groups)
    assert torch.allclose(actual, expected, atol=1e-12)
    with pytest.raises(ValueError, match="must divide"):
        regroup_kernel(kernel, groups, 5)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_compose_functions_equal_two_convs_in_a_row(groups: int) -> None:
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    k1, b1 = torch.randn(8, 8 // groups, 1, 1, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    k2, b2 = torch.randn(4, 8 // groups, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    # 1x1 then k x k, unpadded second stage: exact with any bias
    expected = F.conv2d(F.conv2d(x, k1, b1, groups=groups), k2, b2, stride=2, groups=groups)
    kernel, bias = compose_1x1_kxk(k1, b1, k2, b2, groups)
    assert torch.allclose(F.conv2d(x, kernel, bias, stride=2, groups=groups), expected, atol=1e-10)
    # k x k then 1x1: exact with the first conv's padding
    k3, b3 = torch.randn(8, 8 // groups, 3, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    k4, b4 = torch.randn(12, 8 // groups, 1, 1, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    expected = F.conv2d(F.conv2d(x, k3, b3, padding=1, groups=groups), k4, b4, groups=groups)
    kernel, bias = compose_kxk_1x1(k3, b3, k4, b4, groups)
    assert torch.allclose(F.conv2d(x, kernel, bias, padding=1, groups=groups), expected, atol=1e-10)


def test_equivalent_kernel_is_differentiable() -> None:
    """A regularizer or QAT can use the equivalent kernel: gradients reach every branch parameter."""
    from reparam import make_block

    for kind in ("repvgg", "qarepvgg", "acnet", "dbb"):
        block = make_block(kind, 4, 4, 3)
        kernel, bias = block.equivalent_kernel_and_bias()
        (kernel.square().sum() + bias.sum()).backward()
        trainable = [(n, p) for n, p in block.named_parameters()]
        assert trainable and all(p.grad is not None for _, p in trainable), kind
