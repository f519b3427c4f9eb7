"""linear_add: the linearized block trains as one conv whose kernel is merged every step, and fuses exactly.

What is checked here beyond the zoo-wide tests (tests/unit/test_zoo.py):
- fusion over shapes, groups, strides, kernels, BN statistics and per-channel scale values, fp64 and fp32;
- the merged-kernel forward is the sum of the scaled branches it claims to be (train and eval mode, fp64),
  with the same gradients;
- bf16 autocast runs the one conv in bf16 and nothing in float64;
- scales get no weight decay; constant scales are buffers and are RepOptimizer's gradient mask under SGD.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_SPEC, randomize_bn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from reparam import LinearAddBlock, MultiBranchBlock, make_block, reparameterize_model, verify_equivalence
from reparam.fusion import scale_kernel
from reparam.models import build_model
from reparam.module import parameter_groups


def scales(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t for name, t in module.state_dict(keep_vars=True).items() if name.endswith(".scale")}


@torch.no_grad()
def randomize_scales(module: nn.Module, generator: torch.Generator) -> nn.Module:
    for scale in scales(module).values():
        scale.copy_(torch.randn(scale.shape, generator=generator) * 1.5)
    return module


@st.composite
def block_cases(draw):
    groups = draw(st.sampled_from([1, 2, "depthwise"]))
    if groups == "depthwise":
        in_ch = out_ch = groups = draw(st.integers(1, 6))
    else:
        in_ch = groups * draw(st.integers(1, 3))
        out_ch = in_ch if draw(st.booleans()) else groups * draw(st.integers(1, 3))
    options = dict(
        use_1x1=draw(st.booleans()),
        asymmetric=draw(st.booleans()),
        trainable_scales=draw(st.booleans()),
        dilation=draw(st.sampled_from([1, 1, 2])),
    )
    return dict(
        in_ch=in_ch,
        out_ch=out_ch,
        groups=groups,
        k=draw(st.sampled_from([3, 5])),
        stride=draw(st.sampled_from([1, 2])),
        options=options,
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        size=(draw(st.integers(5, 10)), draw(st.integers(5, 10))),
        batch=draw(st.integers(1, 3)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        seed=draw(st.integers(0, 2**16)),
    )


def build_block(case: dict, act: nn.Module | None = None) -> LinearAddBlock:
    torch.manual_seed(case["seed"])
    norm = lambda c: nn.BatchNorm2d(c, eps=case["eps"])  # noqa: E731
    block = make_block(
        "linear_add",
        case["in_ch"],
        case["out_ch"],
        case["k"],
        case["stride"],
        case["groups"],
        norm_layer=norm,
        act=act if act is not None else nn.Identity(),
        **case["options"],
    )
    generator = torch.Generator().manual_seed(case["seed"])
    return randomize_bn(randomize_scales(block, generator), generator).to(case["dtype"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_cases())
def test_fuses_exactly_over_shapes_groups_scales_and_bn_statistics(case: dict) -> None:
    block = build_block(case).eval()
    fused = reparameterize_model(block)
    assert isinstance(fused, nn.Sequential) and list(dict(fused.named_children())) == ["fused", "act"]
    assert type(fused.fused) is nn.Conv2d and fused.fused.kernel_size == (case["k"], case["k"])
    x = torch.randn(case["batch"], case["in_ch"], *case["size"], dtype=case["dtype"])
    report = verify_equivalence(block, fused, x)  # fp64: 1e-10; fp32: 1e-5 + 1e-4 x max|output|
    if case["dtype"] == torch.float64:
        assert report.max_abs_diff <= 1e-10


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_cases(), st.booleans())
def test_merged_kernel_forward_is_the_sum_of_scaled_branches_with_the_same_gradients(
    case: dict, training: bool
) -> None:
    case = {**case, "dtype": torch.float64}
    merged = build_block(case, act=nn.ReLU()).train(training)
    branchwise = copy.deepcopy(merged)  # the same block run branch by branch: sum_b s_b * branch_b(x), BN, ReLU
    x = torch.randn(max(case["batch"], 2), case["in_ch"], *case["size"], dtype=torch.float64)
    out = merged(x)
    expected = MultiBranchBlock.forward(branchwise, x)
    assert (out - expected).abs().max() <= 1e-10
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for (name, a), b in zip(merged.named_parameters(), branchwise.parameters(), strict=True):
        assert (a.grad - b.grad).abs().max() <= 1e-9, name
    if training:  # and BN saw the same batch statistics
        assert torch.allclose(merged.post_norm.running_var, branchwise.post_norm.running_var, atol=1e-12)


def test_the_forward_runs_one_conv_and_one_norm() -> None:
    block = make_block("linear_add", 8, 8)
    assert set(block.branches) == {"conv_kxk", "conv_1x1", "identity"} and isinstance(block.post_norm, nn.BatchNorm2d)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in block.branches.modules())
    with OpRecorder() as ops:
        block(torch.randn(2, 8, 6, 6))
    assert ops.names.count("convolution") == 1 and ops.names.count("native_batch_norm") == 1, ops.names


def test_gradients_reach_every_scale_and_weight() -> None:
    model = build_model({**TINY_SPEC, "block": "linear_add", "block_options": {"asymmetric": True}})
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    found = scales(model)
    assert len(found) == sum(len(m.branches) for m in model.modules() if isinstance(m, LinearAddBlock))
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


class OpRecorder(TorchDispatchMode):
    """Every aten op run inside, with the dtypes of its tensor arguments."""

    def __enter__(self) -> OpRecorder:
        self.names: list[str] = []
        self.dtypes: dict[str, set[torch.dtype]] = {}
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = func.overloadpacket.__name__
        self.names.append(name)
        tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        self.dtypes.setdefault(name, set()).update(t.dtype for t in tensors)
        return func(*args, **(kwargs or {}))


def test_bf16_autocast_runs_the_conv_in_bf16_and_builds_no_float64_kernel() -> None:
    model = build_model({**TINY_SPEC, "block": "linear_add"}).train()
    with OpRecorder() as ops, torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.arange(2))
    convs = sum(isinstance(m, LinearAddBlock) for m in model.modules())
    assert ops.names.count("convolution") == convs and ops.dtypes["convolution"] == {torch.bfloat16}
    assert not any(torch.float64 in dtypes for dtypes in ops.dtypes.values())
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_scales_are_one_dimensional_and_get_no_weight_decay() -> None:
    model = build_model({**TINY_SPEC, "block": "linear_add"})
    decay, no_decay = parameter_groups(model, 5e-4, no_decay_bn_bias=True)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    found = scales(model)
    assert found and all(t.ndim == 1 and id(t) in no_decay_ids for t in found.values())
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 5e-4
    assert all(id(m.conv.weight) not in no_decay_ids for m in model.modules() if hasattr(m, "conv"))


def test_constant_scales_are_buffers_and_load_across_modes() -> None:
    trainable = randomize_scales(make_block("linear_add", 4, 4), torch.Generator().manual_seed(0))
    constant = make_block("linear_add", 4, 4, trainable_scales=False)
    assert not [n for n, _ in constant.named_parameters() if "scale" in n]
    assert len(scales(constant)) == 3 and not any(t.requires_grad for t in scales(constant).values())
    constant.load_state_dict(trainable.state_dict())  # the same keys either way
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(constant.eval()(x), trainable.eval()(x))


def test_constant_scales_with_sgd_are_a_constant_gradient_mask_on_the_merged_kernel() -> None:
    """RepOptimizer: with constant scales, one SGD step moves the merged kernel K by -lr * M * dL/dK, where
    M = s_kxk^2 + s_1x1^2 at the centre (the identity part stays constant)."""
    torch.manual_seed(0)
    block = make_block("linear_add", 4, 4, trainable_scales=False, act=nn.Identity()).double()
    randomize_scales(block, torch.Generator().manual_seed(1))
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    kernel = block.training_kernel().detach().requires_grad_()
    F.conv2d(x, kernel, padding=1).square().sum().backward()  # the BN-free part: dL/dK for L = sum(conv^2)
    s_kxk, s_1x1 = block.branches["conv_kxk"].scale, block.branches["conv_1x1"].scale
    mask = scale_kernel(torch.ones_like(kernel), s_kxk**2)
    mask[:, :, 1, 1] += (s_1x1**2)[:, None]
    lr = 0.01
    sgd = torch.optim.SGD(block.parameters(), lr=lr)
    F.conv2d(x, block.training_kernel(), padding=1).square().sum().backward()
    sgd.step()
    assert (block.training_kernel() - (kernel - lr * mask * kernel.grad)).abs().max() <= 1e-12


@pytest.mark.parametrize(
    "options,match",
    [
        ({"trainable_scales": "no"}, "trainable_scales must be true or false"),
        ({"scale_init_identity": float("nan")}, "scale_init_identity must be a finite number"),
        ({"scale_init_kxk": "one"}, "scale_init_kxk must be a finite number"),
        (
            {"scales": 1.0},
            r"block kind 'linear_add' has no option\(s\) \['scales'\]; its options are \[.*'trainable_scales'",
        ),
        ({"use_identity": True, "stride": 2}, "identity branch needs"),
    ],
)
def test_bad_options_are_one_clear_error(options: dict, match: str) -> None:
    stride = options.pop("stride", 1)
    with pytest.raises(ValueError, match=match):
        make_block("linear_add", 4, 4, stride=stride, **options)


def test_asymmetric_needs_a_kernel_of_three_or_more() -> None:
    with pytest.raises(ValueError, match="asymmetric=true needs kernel_size >= 3"):
        make_block("linear_add", 4, 4, kernel_size=1, asymmetric=True)


def test_train_form_state_dict_round_trips_for_resume() -> None:
    spec = {**TINY_SPEC, "block": "linear_add"}
    model = build_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    opt.step()
    again = build_model(spec)
    again.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again.eval()(x), model.eval()(x))
    assert all(torch.equal(a, b) for a, b in zip(scales(again).values(), scales(model).values(), strict=True))
