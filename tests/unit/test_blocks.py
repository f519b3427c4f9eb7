"""RepVGGBlock and reparameterize_model: the fused form computes what the train form computes."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from helpers import randomize_bn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import reparam
from reparam import FormMismatchError, MultiBranchBlock, RepVGGBlock, reparameterize_model, verify_equivalence


def is_plain(model: nn.Module) -> bool:
    """A fused network holds plain modules only: no block logic, no BatchNorm."""
    return not any(isinstance(m, (MultiBranchBlock, nn.modules.batchnorm._BatchNorm)) for m in model.modules())


@st.composite
def block_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3, "depthwise"]))
    stride = draw(st.sampled_from([1, 2]))
    if groups == "depthwise":
        channels = draw(st.integers(1, 8))
        in_ch = out_ch = groups = channels
    else:
        in_ch = groups * draw(st.integers(1, 4))
        same = draw(st.booleans())
        out_ch = in_ch if same else groups * draw(st.integers(1, 4))
    norm = draw(st.sampled_from(["bn", "bn_no_affine", "none"]))
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    return dict(
        in_ch=in_ch,
        out_ch=out_ch,
        groups=groups,
        stride=stride,
        kernel=draw(st.sampled_from([1, 3, 5, 7])),
        dilation=draw(st.sampled_from([1, 1, 2])),
        norm=norm,
        eps=eps,
        conv_bias=draw(st.sampled_from([None, True, False])),
        use_1x1=draw(st.booleans()),
        height=draw(st.integers(4, 11)),
        width=draw(st.integers(4, 11)),
        batch=draw(st.integers(1, 3)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        seed=draw(st.integers(0, 2**16)),
    )


def make_block(case: dict) -> RepVGGBlock:
    norm_layer = {
        "bn": functools.partial(nn.BatchNorm2d, eps=case["eps"]),
        "bn_no_affine": functools.partial(nn.BatchNorm2d, eps=case["eps"], affine=False),
        "none": None,
    }[case["norm"]]
    block = RepVGGBlock(
        case["in_ch"],
        case["out_ch"],
        case["kernel"],
        stride=case["stride"],
        groups=case["groups"],
        dilation=case["dilation"],
        use_1x1=case["use_1x1"],
        norm_layer=norm_layer,
        conv_bias=case["conv_bias"],
        act=nn.Identity(),  # compare the linear part itself, not values clipped by ReLU
    )
    return randomize_bn(block, torch.Generator().manual_seed(case["seed"])).to(case["dtype"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_cases())
def test_fused_block_equals_train_form(case: dict) -> None:
    torch.manual_seed(case["seed"])
    block = make_block(case).eval()
    if case["conv_bias"] is not False and case["norm"] == "none":
        assert block.branches["conv_kxk"].conv.bias is not None
    x = torch.randn(case["batch"], case["in_ch"], case["height"], case["width"], dtype=case["dtype"])
    with torch.no_grad():
        expected = block(x)
    fused = reparameterize_model(block)
    assert is_plain(fused) and isinstance(fused.fused, nn.Conv2d) and not block.is_fused
    with torch.no_grad():
        actual = fused(x)
    assert actual.shape == expected.shape
    diff = float((actual - expected).abs().max())
    scale = float(expected.abs().max())
    if case["dtype"] == torch.float64:
        assert diff <= 1e-10
    else:
        # fp32: a few ulps of the output's magnitude, times the sum length (#branches x fan-in)
        fan_in = case["in_ch"] // case["groups"] * case["kernel"] ** 2
        assert diff <= 4 * torch.finfo(torch.float32).eps * max(scale, 1.0) * fan_in


def test_textbook_case_conv_biases_no_bn() -> None:
    """conv3x3(x) + conv1x1(x) + x, all convs with bias, no BN."""
    torch.manual_seed(1)
    block = RepVGGBlock(6, 6, norm_layer=None, act=nn.Identity()).double()
    conv3, conv1 = block.branches["conv_kxk"].conv, block.branches["conv_1x1"].conv
    assert conv3.bias is not None and conv1.bias is not None and block.branches["identity"].bn is None
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = conv3(x) + conv1(x) + x
        fused = reparameterize_model(block)
        assert (fused(x) - expected).abs().max() <= 1e-12


def test_textbook_case_three_batchnorms() -> None:
    """BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x) with non-trivial running statistics."""
    block = randomize_bn(RepVGGBlock(5, 5, act=nn.Identity())).double().eval()
    x = torch.randn(3, 5, 9, 7, dtype=torch.float64)
    with torch.no_grad():
        expected = (
            block.branches["conv_kxk"].bn(block.branches["conv_kxk"].conv(x))
            + block.branches["conv_1x1"].bn(block.branches["conv_1x1"].conv(x))
            + block.branches["identity"].bn(x)
        )
        assert (reparameterize_model(block)(x) - expected).abs().max() <= 1e-12


def test_deep_stack_float32_keeps_argmax() -> None:
    torch.manual_seed(2)
    layers = [RepVGGBlock(3, 16, stride=1)] + [RepVGGBlock(16, 16) for _ in range(23)]
    model = randomize_bn(nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)))
    # keep activations in range over 24 blocks: shrink the BN gains a little
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.mul_(0.5)
    fused = reparameterize_model(model)
    report = verify_equivalence(model, fused, torch.randn(64, 3, 16, 16))
    assert report.argmax_agreement == 1.0
    assert report.passed and report.max_rel_diff < 1e-4


def test_syncbatchnorm_model_fuses() -> None:
    model = nn.Sequential(RepVGGBlock(4, 4), RepVGGBlock(4, 8, stride=2))
    model = randomize_bn(nn.SyncBatchNorm.convert_sync_batchnorm(model)).double()
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    fused = reparameterize_model(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    report = verify_equivalence(model, fused, torch.randn(2, 4, 8, 8, dtype=torch.float64))
    assert report.max_abs_diff <= 1e-10


def test_reparameterize_is_idempotent_and_drops_branches() -> None:
    block = randomize_bn(RepVGGBlock(4, 4))
    block.reparameterize()
    names = {n for n, _ in block.named_parameters()}
    assert names == {"fused.weight", "fused.bias"}
    before = copy.deepcopy(block.state_dict())
    block.reparameterize()
    after = block.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fused_params_are_trainable_leaves() -> None:
    fused = reparameterize_model(randomize_bn(RepVGGBlock(4, 4)))
    for p in fused.parameters():
        assert p.is_leaf and p.requires_grad and p.grad_fn is None
    fused.train()
    fused(torch.randn(1, 4, 5, 5)).sum().backward()
    assert all(p.grad is not None for p in fused.parameters())


def test_reparameterize_model_leaves_input_untouched_unless_inplace() -> None:
    model = nn.Sequential(RepVGGBlock(4, 4), RepVGGBlock(4, 4)).train()
    fused = reparameterize_model(model)
    assert not fused.training and fused is not model
    assert not any(b.is_fused for b in model) and model.training
    same = reparameterize_model(model, inplace=True)
    assert same is model and is_plain(model) and all(isinstance(b.fused, nn.Conv2d) for b in model)


def test_reparameterize_model_names_bn_without_running_stats() -> None:
    model = nn.Sequential(
        nn.Identity(), RepVGGBlock(4, 4, norm_layer=lambda c: nn.BatchNorm2d(c, track_running_stats=False))
    )
    with pytest.raises(ValueError, match=r"'1\.branches\.conv_kxk\.bn'.*track_running_stats"):
        reparameterize_model(model)


def test_user_block_joins_by_defining_reparameterize() -> None:
    class Doubler(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fused = False

        def reparameterize(self) -> None:
            self.fused = True

        def forward(self, x):
            return 2 * x

    fused = reparameterize_model(nn.Sequential(Doubler(), RepVGGBlock(2, 2)))
    assert fused[0].fused and isinstance(fused[1].fused, nn.Conv2d) and is_plain(fused[1])


def test_deploy_model_loads_fused_state_dict_strictly() -> None:
    """A deploy constructor that forgot the padding would shrink maps: round-trip through it."""
    for kwargs in (dict(kernel_size=3), dict(kernel_size=5, stride=2, groups=2), dict(kernel_size=3, dilation=2)):
        train_form = randomize_bn(RepVGGBlock(4, 6, **kwargs))
        fused = reparameterize_model(train_form)
        deploy = RepVGGBlock(4, 6, deploy=True, **kwargs)
        deploy.load_state_dict(fused.state_dict(), strict=True)  # Sequential(fused, act) and the block share keys
        x = torch.randn(2, 4, 11, 11)
        assert torch.equal(deploy.eval()(x), fused(x))
        verify_equivalence(train_form, deploy, x)


def test_loading_the_wrong_form_says_which_form() -> None:
    train_form = RepVGGBlock(4, 4)
    deploy = RepVGGBlock(4, 4, deploy=True)
    with pytest.raises(FormMismatchError, match="train-form.*deploy=False.*reparameterize_model"):
        deploy.load_state_dict(train_form.state_dict())
    with pytest.raises(FormMismatchError, match="fused weights.*deploy=True"):
        RepVGGBlock(4, 4).load_state_dict(reparameterize_model(train_form).state_dict())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(in_channels=4, out_channels=8, use_identity=True), "in_channels == out_channels"),
        (dict(in_channels=4, out_channels=4, stride=2, use_identity=True), "stride == 1"),
        (dict(in_channels=4, out_channels=6, groups=4), "groups=4 must divide"),
        (dict(in_channels=4, out_channels=4, kernel_size=4), "kernel_size must be odd"),
        (dict(in_channels=0, out_channels=4), "channels must be positive"),
    ],
)
def test_invalid_block_configs_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RepVGGBlock(**kwargs)


def test_identity_is_automatic_only_where_possible() -> None:
    assert "identity" in RepVGGBlock(4, 4).branches
    assert "identity" not in RepVGGBlock(4, 8).branches
    assert "identity" not in RepVGGBlock(4, 4, stride=2).branches
    assert "identity" not in RepVGGBlock(4, 4, use_identity=False).branches


def test_nonlinear_part_stays_outside_the_sum() -> None:
    class SE(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.fc = nn.Conv2d(c, c, 1)

        def forward(self, x):
            return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))

    block = randomize_bn(RepVGGBlock(4, 4, act=nn.Sequential(SE(4), nn.ReLU()))).double()
    fused = reparameterize_model(block)
    assert isinstance(fused.act[0], SE)
    verify_equivalence(block, fused, torch.randn(2, 4, 6, 6, dtype=torch.float64))


def test_verify_equivalence_raises_with_the_size_of_the_mismatch() -> None:
    block = randomize_bn(RepVGGBlock(4, 4)).eval()
    fused = reparameterize_model(block)
    with torch.no_grad():
        fused.fused.bias.add_(0.5)
    with pytest.raises(reparam.EquivalenceError, match=r"max \|diff\| = 5\.000e-01") as info:
        verify_equivalence(block, fused, torch.randn(2, 4, 6, 6))
    assert not info.value.report.passed
    report = verify_equivalence(block, fused, torch.randn(2, 4, 6, 6), raise_on_mismatch=False)
    assert report.max_abs_diff == pytest.approx(0.5, rel=1e-5)


def test_verify_equivalence_restores_modes() -> None:
    a, b = RepVGGBlock(2, 2).train(), RepVGGBlock(2, 2).train()
    b.load_state_dict(a.state_dict())
    verify_equivalence(a, b, torch.randn(1, 2, 4, 4))
    assert a.training and b.training


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fuses_on_cuda_in_the_weights_device() -> None:
    block = randomize_bn(RepVGGBlock(8, 8, groups=2)).cuda()
    fused = reparameterize_model(block)
    assert fused.fused.weight.device.type == "cuda"
    verify_equivalence(block, fused, torch.randn(4, 8, 16, 16, device="cuda"))


def test_reparameterize_model_refuses_a_model_with_nothing_to_fuse() -> None:
    from reparam import reparameterize_model

    with pytest.raises(ValueError, match=r"Sequential holds no block to fuse .*reparam.auto_fuse"):
        reparameterize_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
