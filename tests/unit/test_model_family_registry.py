"""Model families of one's own: registered with @register_model_family, fused with conv + BN pairs outside blocks
folded, and loaded back from the fused weights even where ``build`` ignores ``deploy``."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from reparam import make_block
from reparam.convert import fold_conv_bn_pairs
from reparam.models import MODELS, ModelFamily, build_model, fuse_model, model_family, register_model_family
from reparam.models.family import MODELS as FAMILY_MODELS


def _random_bn(bn: nn.BatchNorm2d, generator: torch.Generator) -> nn.BatchNorm2d:
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.05)
        if bn.affine:
            bn.weight.copy_(torch.randn(bn.num_features, generator=generator))
            bn.bias.copy_(torch.randn(bn.num_features, generator=generator))
    return bn


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    channels=st.sampled_from([(2, 4, 1), (4, 4, 2), (4, 4, 4), (3, 6, 3)]),
    kernel=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2]),
    bias=st.booleans(),
    affine=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_folding_a_conv_bn_pair_computes_the_same_function(channels, kernel, stride, bias, affine, seed) -> None:
    cin, cout, groups = channels
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias),
        _random_bn(nn.BatchNorm2d(cout, affine=affine), generator),
        nn.ReLU(),
    ).eval()
    x = torch.randn(2, cin, 9, 9, generator=generator)
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        reference = model.to(dtype)
        folded = fold_conv_bn_pairs(__import__("copy").deepcopy(reference))
        assert isinstance(folded[1], nn.Identity) and folded[0].bias is not None
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        expected, got = reference(x.to(dtype)), folded(x.to(dtype))
        assert got.dtype == dtype
        assert (got - expected).abs().max() <= tolerance * (1 + expected.abs().max())


def test_a_bn_without_running_statistics_or_not_after_a_conv_stays() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(), nn.BatchNorm2d(4)
    ).eval()
    folded = fold_conv_bn_pairs(model)
    assert [type(m) for m in folded] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.BatchNorm2d]


class _StemNet(nn.Module):
    """Blocks that fuse themselves, a conv + BN stem outside them."""

    def __init__(self, num_classes: int, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(make_block("repvgg", width, width), make_block("repvgg", width, width, stride=2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


@pytest.fixture()
def stem_family():
    @register_model_family
    class StemFamily(ModelFamily):
        arch = "test_stem"

        def build(self, spec, deploy=False):  # ignores deploy, as a first family of one's own may
            return _StemNet(int(spec["num_classes"]))

    yield StemFamily
    del FAMILY_MODELS["test_stem"]


def test_a_registered_family_builds_fuses_and_loads_its_fused_weights(stem_family) -> None:
    spec = {"arch": "test_stem", "num_classes": 3, "input_size": [3, 16, 16]}
    assert MODELS["test_stem"].__class__ is stem_family and model_family(spec) is MODELS["test_stem"]
    model = build_model(spec)
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            _random_bn(m, generator)
    model = model.double().eval()
    fused = fuse_model(spec, model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())  # the stem's BN is folded too
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    assert (fused(x) - model(x)).abs().max() < 1e-12
    # what a fused artifact's weights are loaded into: the same structure, although build() ignored deploy
    skeleton = MODELS["test_stem"].fused_skeleton(spec)
    skeleton.load_state_dict(fused.float().state_dict(), strict=True)
    assert torch.equal(skeleton(x.float()), fused.float()(x.float()))


def test_a_taken_arch_or_a_class_that_is_no_family_is_refused(stem_family) -> None:
    class Other(ModelFamily):
        arch = "test_stem"

    with pytest.raises(ValueError, match="model arch 'test_stem' is already registered by .*StemFamily"):
        register_model_family(Other)
    register_model_family(stem_family)  # the same class again (a module imported twice): accepted
    with pytest.raises(TypeError, match="takes a ModelFamily subclass"):
        register_model_family(nn.Module)

    class Nameless(ModelFamily):
        pass

    with pytest.raises(ValueError, match="must set arch"):
        register_model_family(Nameless)
    assert "test_stem" in MODELS and set(MODELS) >= {"repvgg", "custom", "timm"}
