"""auto_fuse: merge summed linear branches of any model, exactly, and say what it left alone."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_SPEC, calibrate_bn, randomize_bn, zoo_kinds
from torch import nn

from reparam import EquivalenceError, Tolerance, auto_fuse, reparameterize_model, verify_equivalence
from reparam.autofuse import AutoFuseError
from reparam.models import build_model

PLAIN = (nn.Conv2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# linear_add trains as one conv and one BN: auto_fuse finds nothing to merge in it (test_linear_add.py)
@pytest.mark.parametrize("kind", [kind for kind in zoo_kinds() if kind != "linear_add"])
def test_auto_fuse_matches_each_blocks_own_reparameterize(kind: str) -> None:
    spec = {**TINY_SPEC, "block": kind, "block_options": {"num_conv_branches": 2} if kind == "mobileone" else {}}
    model = randomize_bn(build_model(spec)).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    own = reparameterize_model(model)
    fused, report = auto_fuse(model, x)
    assert n_params(fused) == n_params(own) < n_params(model)
    assert all(isinstance(m, PLAIN) for m in fused.modules() if not list(m.children()))
    assert (fused(x) - model(x)).abs().max() <= 1e-10
    assert (fused(x) - own(x)).abs().max() <= 1e-10
    assert report.verification.passed and report.merged and not report.skipped
    assert report.params_before == n_params(model) and report.params_after == n_params(fused)


class ACNetStyle(nn.Module):
    """Written only here: asymmetric branches, identity and BN, summed in varied orders, no fuse method."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()

        def conv_bn(k: tuple[int, int]) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c, c, k, padding=(k[0] // 2, k[1] // 2), bias=False), nn.BatchNorm2d(c))

        self.square, self.wide, self.tall = conv_bn((3, 3)), conv_bn((1, 3)), conv_bn((3, 1))
        self.square2, self.wide2, self.tall2 = conv_bn((3, 3)), conv_bn((1, 3)), conv_bn((3, 1))
        self.point = nn.Conv2d(c, c, 1)
        self.bn_id = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.tall(x) + (self.square(x) + self.wide(x)))  # nested, in any order
        z = self.bn_id(y) + self.wide2(y)
        z = torch.relu(self.tall2(y) + (z + self.point(y)) + self.square2(y) + y)  # identity last, plain x
        return self.head(z.mean((2, 3)))


def test_auto_fuse_a_model_without_any_fuse_method() -> None:
    torch.manual_seed(0)
    model = ACNetStyle().double()
    x = torch.randn(4, 6, 9, 8, dtype=torch.float64)
    calibrate_bn(model, x)
    fused, report = auto_fuse(model, x)
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and all(c.kernel_size == (3, 3) for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert (fused(x) - model(x)).abs().max() <= 1e-10
    fused32, _ = auto_fuse(model.float(), x.float())
    with torch.no_grad():
        assert (fused32(x.float()) - model(x.float())).abs().max() <= 1e-5 * max(
            1.0, float(model(x.float()).abs().max())
        )


def test_auto_fuse_leaves_alone_what_is_not_provably_one_conv_and_says_why() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.pw = nn.Conv2d(4, 8, 1)
            self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            y = self.pw(self.dw(x))  # depthwise-separable: merging would make a dense 3x3 conv
            return y + self.b(torch.relu(self.a(y)))  # a residual around a nonlinear path

    model = Mixed().eval()
    x = torch.randn(2, 4, 8, 8)
    fused, report = auto_fuse(model, x)
    reasons = {s.reason for s in report.skipped}
    assert any("grouped (e.g. depthwise) conv into a larger dense one" in r for r in reasons), reasons
    assert any("different inputs" in r for r in reasons), reasons
    assert not report.merged and n_params(fused) == n_params(model)
    assert "left alone" in report.summary()


def test_untraceable_model_is_one_clear_error() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(AutoFuseError, match="torch.fx cannot trace DataDependent"):
        auto_fuse(DataDependent(), torch.randn(1, 3, 4, 4))


def test_an_untraceable_part_is_named_and_a_block_with_its_own_fusion_points_to_reparameterize_model() -> None:
    """A library user's auto_fuse on a linear_add model was told to rewrite their forward's control flow."""
    model = build_model({**TINY_SPEC, "block": "linear_add"}).eval()
    with pytest.raises(AutoFuseError) as caught:
        auto_fuse(model, torch.randn(1, 3, 32, 32))
    said = str(caught.value)
    assert said.startswith("torch.fx cannot trace LinearAddBlock at stages.0.0 of RepVGG (")
    assert said.endswith("LinearAddBlock has a fusion of its own: fuse with reparam.reparameterize_model(model)")

    class Inner(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.gate = nn.Conv2d(3, 3, 1), nn.Sequential(Inner())

        def forward(self, x):
            return self.gate(self.conv(x))

    with pytest.raises(AutoFuseError, match=r"cannot trace Inner at gate\.0 of Outer .*free of data-dependent"):
        auto_fuse(Outer(), torch.randn(1, 3, 4, 4))


class TwoHeads(nn.Module):
    """A model returning a tuple and a dict (detection- and multi-task-style outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.side = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.bn(self.conv(x)) + self.side(x)
        return y, {"pooled": y.mean((2, 3)), "nothing": None}


def test_outputs_of_any_nesting_are_compared_tensor_by_tensor() -> None:
    """auto_fuse and verify_equivalence failed on a tuple output with AttributeError inside reparam."""
    model = randomize_bn(TwoHeads()).eval()
    x = torch.randn(2, 3, 8, 8)
    fused, report = auto_fuse(model, x)
    assert report.verification.passed and len(report.merged) == 1
    checked = verify_equivalence(model, fused, x)
    # predictions are the rows of 2-D outputs (the pooled head: 2 images), not feature maps' rows or pixels
    assert checked.passed and checked.predictions == 2 and checked.num_samples == 4
    assert checked.describe().endswith("; 0 of 2 predictions differ")
    feature_map = verify_equivalence(model.conv, model.conv, x)
    assert feature_map.predictions == 0 and "predictions" not in feature_map.describe()
    other = randomize_bn(TwoHeads()).eval()
    with pytest.raises(EquivalenceError, match="fused model differs from the reference"):
        verify_equivalence(model, other, x)

    class Flat(TwoHeads):
        def forward(self, x):
            return super().forward(x)[0]

    with pytest.raises(EquivalenceError, match="the outputs differ in structure"):
        verify_equivalence(model, Flat().eval(), x)
    with pytest.raises(ValueError, match="reference holds float32 parameters and the fused model bfloat16"):
        verify_equivalence(model, fused.to(torch.bfloat16), x)


def test_the_summary_names_what_was_merged_and_left_alone() -> None:
    model = randomize_bn(TwoHeads()).eval()
    _, report = auto_fuse(model, torch.randn(2, 3, 8, 8))
    lines = report.summary().splitlines()
    assert lines[0].startswith("auto_fuse (torch.fx): 4 ops merged into 1 conv; params ")
    assert lines[1].split(" <- ")[1] == "conv, bn, side, add"
    _, nothing = auto_fuse(nn.Sequential(nn.ReLU()), torch.randn(1, 3, 4, 4))
    assert nothing.summary().startswith("auto_fuse (torch.fx): nothing merged; params 0 -> 0")


class Signed(nn.Module):
    """Branches scaled by numbers, negated and subtracted (as in hand-written re-weighted blocks)."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.kxk, self.bn, self.pw = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Conv2d(4, 6, 1)

    def forward(self, x):
        a, b = self.bn(self.kxk(x)), self.pw(x)
        if self.form == "sub":
            y = a - b
        elif self.form == "scaled":
            y = 0.5 * a + b * 3
        elif self.form == "divided":
            y = a / 4 - (-b).mul(2)
        else:
            y = torch.sub(a, b.div(2)).neg()
        return torch.relu(y)


@pytest.mark.parametrize("form", ["sub", "scaled", "divided", "method"])
def test_numbers_negation_and_subtraction_merge_exactly(form: str) -> None:
    """A library user's 0.5 * BN(conv(x)) + conv1x1(x) and BN(conv(x)) - conv1x1(x) were left alone, unexplained."""
    model = randomize_bn(Signed(form)).double().eval()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    fused, report = auto_fuse(model, x)
    assert len(report.merged) == 1 and not report.skipped, report.summary()
    assert sum(isinstance(m, nn.Conv2d) for m in fused.modules()) == 1
    assert (fused(x) - model(x)).abs().max() <= 1e-12


def test_a_shift_before_a_padded_conv_is_left_alone_with_that_reason() -> None:
    model = randomize_bn(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1))).eval()
    fused, report = auto_fuse(model, torch.randn(2, 3, 8, 8))
    assert not report.merged
    assert [s.reason for s in report.skipped] == [
        "a per-channel shift (a bias, BN) before a zero-padded conv: the padded border would not see the shift"
    ]


def test_auto_fuse_leaves_the_model_untouched() -> None:
    model = randomize_bn(build_model(TINY_SPEC)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    auto_fuse(model, torch.randn(1, 3, 32, 32))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


timm = pytest.importorskip("timm")


@pytest.mark.parametrize(
    "name,same_params",
    [
        ("repvgg_a0", True),
        # 13 s on 2 cores (timm's MobileOne at 224, fused twice): make test-slow and CI run it
        pytest.param("mobileone_s0", True, marks=pytest.mark.slow),
        ("resnet18", False),
    ],
)
def test_auto_fuse_third_party_models_like_their_own_reparameterization(name: str, same_params: bool) -> None:
    """timm's models, their own fusion never called, against timm's reparameterize_model on the same weights."""
    from timm.utils.model import reparameterize_model as timm_reparameterize

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    x = torch.randn(4, 3, 64, 64)
    calibrate_bn(model, x)
    fused, report = auto_fuse(model, x, tolerance=Tolerance(1e-4, 1e-3))  # fp32 through ~30 layers; fp64 below
    theirs = timm_reparameterize(model)
    if same_params:  # the multi-branch blocks became exactly as many convs and weights as timm's own fusion
        assert n_params(fused) == n_params(theirs) < n_params(model)
    else:  # timm does not fold ResNet's BNs; auto_fuse does
        assert n_params(fused) < n_params(theirs) == n_params(model)
        assert any("different inputs" in s.reason for s in report.skipped)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    with torch.no_grad():
        ours, timm_out, train32 = fused(x), theirs(x), model(x)
        model64 = model.double()
        truth = model64(x.double())
        fused64, _ = auto_fuse(model64, x.double())
        assert float((fused64(x.double()) - truth).abs().max()) <= 1e-10  # the algebra itself is exact
    # fp32: the fused model is no farther from the fp64 truth than the train form's own fp32 rounding (2x headroom)
    rounding = float((train32.double() - truth).abs().max())
    assert float((ours.double() - truth).abs().max()) <= 2 * rounding + 1e-6
    assert float((ours.double() - timm_out.double()).abs().max()) <= 4 * rounding + 1e-6
