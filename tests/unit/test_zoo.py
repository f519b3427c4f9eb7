"""The block zoo: every registered kind fuses exactly into plain convs, in blocks and in whole networks."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import TINY_SPEC, randomize_bn, zoo_kinds
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

import reparam
from reparam import BLOCKS, MultiBranchBlock, make_block, register_block, reparameterize_model, verify_equivalence
from reparam.branches import ConvBN
from reparam.convert import where_fusion_differs
from reparam.models import build_model

KINDS = zoo_kinds()


def is_plain(model: nn.Module) -> bool:
    return not any(isinstance(m, (MultiBranchBlock, nn.modules.batchnorm._BatchNorm)) for m in model.modules())


def test_registry_holds_the_zoo() -> None:
    assert {"repvgg", "qarepvgg", "acnet", "dbb", "mobileone", "linear_add"} <= set(KINDS) <= set(BLOCKS)
    with pytest.raises(
        ValueError, match=rf"unknown block kind 'resnext'; choose one of {re.escape(str(sorted(BLOCKS)))}"
    ):
        make_block("resnext", 4, 4)


@st.composite
def zoo_cases(draw):
    kind = draw(st.sampled_from(KINDS))
    groups = 1 if kind == "mobileone" else draw(st.sampled_from([1, 2, "depthwise"]))
    if groups == "depthwise":
        in_ch = out_ch = groups = draw(st.integers(2, 6))
    else:
        in_ch = groups * draw(st.integers(1, 3))
        out_ch = in_ch if draw(st.booleans()) else groups * draw(st.integers(1, 3))
    options = {"num_conv_branches": draw(st.integers(1, 3))} if kind == "mobileone" else {}
    if kind == "linear_add":
        scale = st.floats(-2, 2, allow_nan=False)
        options = {
            "asymmetric": draw(st.booleans()),
            "scale_init_kxk": draw(scale),
            "scale_init_1x1": draw(scale),
            "scale_init_identity": draw(scale),
            "scale_init_asymmetric": draw(scale),
        }
    return dict(
        kind=kind,
        in_ch=in_ch,
        out_ch=out_ch,
        groups=groups,
        k=draw(st.sampled_from([3, 5])),
        stride=draw(st.sampled_from([1, 2])),
        options=options,
        size=draw(st.integers(5, 10)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zoo_cases())
# found by hypothesis: groups == out_channels == 1 with 2 inputs is no depthwise block (dbb's pooling branch said so)
@example(dict(kind="dbb", in_ch=2, out_ch=1, groups=1, k=3, stride=1, options={}, size=5, dtype=torch.float32, seed=0))
def test_every_kind_fuses_to_a_plain_conv(case: dict) -> None:
    torch.manual_seed(case["seed"])
    block = make_block(
        case["kind"], case["in_ch"], case["out_ch"], case["k"], case["stride"], case["groups"], **case["options"]
    )
    block = randomize_bn(block, torch.Generator().manual_seed(case["seed"])).to(case["dtype"]).eval()
    fused = reparameterize_model(block)
    assert is_plain(fused) and any(isinstance(m, nn.Conv2d) for m in fused.modules())
    x = torch.randn(2, case["in_ch"], case["size"], case["size"], dtype=case["dtype"])
    report = verify_equivalence(block, fused, x)  # fp64: 1e-10; fp32: 1e-5 + 1e-4 x max|output|
    if case["dtype"] == torch.float64:
        assert report.max_abs_diff <= 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_builds_the_network_and_round_trips_fused_weights(kind: str) -> None:
    spec = {**TINY_SPEC, "block": kind}
    train_form = randomize_bn(build_model(spec)).double()
    fused = reparameterize_model(train_form)
    assert fused.is_fused and is_plain(fused.stages)
    verify_equivalence(train_form, fused, torch.randn(2, 3, 32, 32, dtype=torch.float64))
    deploy = build_model(spec, deploy=True).double()
    deploy.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert torch.equal(deploy.eval()(x), fused(x))
    with pytest.raises(reparam.FormMismatchError, match="train-form"):
        deploy.load_state_dict(train_form.state_dict())


def test_all_kinds_reach_the_same_plain_vgg_shape() -> None:
    counts = {
        kind: sum(p.numel() for p in build_model({**TINY_SPEC, "block": kind}, deploy=True).parameters())
        for kind in ("repvgg", "qarepvgg", "acnet", "dbb", "linear_add")
    }
    assert len(set(counts.values())) == 1, counts


def test_qarepvgg_has_plain_side_branches_and_a_bn_after_the_sum() -> None:
    block = make_block("qarepvgg", 4, 4)
    assert block.branches["conv_1x1"].bn is None and block.branches["conv_1x1"].conv.bias is None
    assert block.branches["identity"].bn is None and isinstance(block.post_norm, nn.BatchNorm2d)


def test_mobileone_is_depthwise_then_pointwise() -> None:
    block = make_block("mobileone", 4, 8, 3, 2, num_conv_branches=3)
    assert block.depthwise.groups == 4 and block.depthwise.stride == 2 and block.pointwise.kernel_size == 1
    assert sum(name.startswith("conv_kxk") for name in block.depthwise.branches) == 3
    with pytest.raises(ValueError, match="groups=2 is not used"):
        make_block("mobileone", 4, 8, groups=2)


def test_spec_rejects_unknown_block_kind_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown block kind 'resnext'.*register_block .*imports=\["):
        build_model({**TINY_SPEC, "block": "resnext"})


def test_a_registered_user_kind_joins_the_family() -> None:
    @register_block("test_double_kxk")
    class DoubleKxK(MultiBranchBlock):
        def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, groups=1, deploy=False):
            super().__init__(in_channels, out_channels, kernel_size, stride, groups, deploy=deploy)
            if not deploy:
                for name in ("a", "b"):
                    self.branches[name] = ConvBN(
                        in_channels, out_channels, kernel_size, stride, self.padding, groups=groups
                    )

    try:
        model = randomize_bn(build_model({**TINY_SPEC, "block": "test_double_kxk"})).double()
        verify_equivalence(model, reparameterize_model(model), torch.randn(1, 3, 32, 32, dtype=torch.float64))
    finally:
        BLOCKS.pop("test_double_kxk")


def test_train_form_files_from_before_the_branch_dict_still_load() -> None:
    block = randomize_bn(make_block("repvgg", 4, 4))
    legacy = {k.replace("branches.", ""): v for k, v in block.state_dict().items()}
    assert "conv_kxk.conv.weight" in legacy
    again = make_block("repvgg", 4, 4)
    again.load_state_dict(legacy, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), block.state_dict().values(), strict=True))


def test_a_whole_model_mismatch_is_traced_to_the_first_block_that_fuses_wrong() -> None:
    """A new contributor's block dropped a branch's bias when fusing: training said only that the model differed."""

    @register_block("test_forgets_a_bias")
    class ForgetsABias(MultiBranchBlock):
        def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, groups=1, deploy=False):
            super().__init__(in_channels, out_channels, kernel_size, stride, groups, deploy=deploy)
            if not deploy:
                self.branches["a"] = ConvBN(in_channels, out_channels, kernel_size, stride, self.padding, groups=groups)

        def equivalent_kernel_and_bias(self):
            kernel, bias = super().equivalent_kernel_and_bias()
            return kernel, torch.zeros_like(bias)

    try:
        spec = {**TINY_SPEC, "block": "repvgg"}
        good = randomize_bn(build_model(spec)).eval()
        assert reparam.first_differing_block(good, torch.randn(2, 3, 32, 32)) is None
        bad = randomize_bn(build_model({**spec, "block": "test_forgets_a_bias"})).eval()
        name, what = reparam.first_differing_block(bad, torch.randn(2, 3, 32, 32))
        assert name == "stages.0.0" and what.startswith("kind 'test_forgets_a_bias', max |diff| ")
        # what training's and deploy's error lines add: where, and whose code that is
        said = where_fusion_differs(bad, torch.randn(2, 3, 32, 32))
        assert said.startswith("the first block that differs is stages.0.0 (kind 'test_forgets_a_bias', max |diff| ")
        assert said.endswith("): its fusion is your code (reparam.register_block): check it")
        assert where_fusion_differs(good, torch.randn(2, 3, 32, 32)).startswith("every block alone fuses exactly")
        # a library user's verify_equivalence says it too
        with pytest.raises(reparam.EquivalenceError, match=r"; the first block that differs is stages\.0\.0 \(kind"):
            verify_equivalence(bad, reparameterize_model(bad), torch.randn(2, 3, 32, 32))
    finally:
        BLOCKS.pop("test_forgets_a_bias")


def test_register_block_refuses_a_taken_kind_and_a_class_that_is_not_a_block() -> None:
    """A library user's register_block("repvgg") replaced the built-in kind silently, and any class was accepted."""
    with pytest.raises(
        ValueError, match=r"block kind 'repvgg' is already reparam\.blocks\.RepVGGBlock; choose another"
    ):

        @register_block("repvgg")
        class Mine(MultiBranchBlock):
            pass

    assert BLOCKS["repvgg"].__name__ == "RepVGGBlock"
    with pytest.raises(TypeError, match="is not a block: a block kind is an nn.Module with fused_form"):
        register_block("test_not_a_block")(nn.Conv2d)
    assert "test_not_a_block" not in BLOCKS
    # the same class again (its module imported twice, as imports=[...] may) is no conflict
    register_block("repvgg")(BLOCKS["repvgg"])
