"""The RepVGG family: shapes, parameter counts, spec validation, fused round trip."""

import pytest
import torch
from helpers import TINY_SPEC, randomize_bn
from torch import nn

from reparam import reparameterize_model, verify_equivalence
from reparam.blocks import MultiBranchBlock
from reparam.models import (
    MODELS,
    VARIANTS,
    ModelFamily,
    RepVGGSpec,
    build_model,
    complete_spec,
    fuse_model,
    fuse_model_with_report,
    input_size,
    model_family,
)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_build_and_keep_4x4_maps(variant: str) -> None:
    model = build_model({"variant": variant, "num_classes": 10}, deploy=True).eval()
    features = model.stages(torch.zeros(1, 3, 32, 32))
    assert features.shape[-2:] == (4, 4)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a0_widths_and_param_counts_follow_the_paper() -> None:
    train_form = build_model({"variant": "A0"})
    widths, depths = train_form.spec.resolved()
    assert widths == [48, 48, 96, 192, 1280] and depths == [1, 2, 4, 14, 1]
    fused = reparameterize_model(train_form)
    n_train = sum(p.numel() for p in train_form.parameters())
    n_fused = sum(p.numel() for p in fused.parameters())
    # the paper's ImageNet A0 has 8.30M fused params, 1.28M of them in its 1000-way head
    assert 6.9e6 < n_fused < 7.1e6 and n_fused < n_train


def test_tiny_model_fuses_exactly_in_float64() -> None:
    model = randomize_bn(build_model(TINY_SPEC)).double()
    fused = reparameterize_model(model)
    assert fused.is_fused and not model.is_fused
    report = verify_equivalence(model, fused, torch.randn(4, 3, 32, 32, dtype=torch.float64))
    assert report.max_abs_diff <= 1e-10 and report.argmax_agreement == 1.0


def test_fused_weights_round_trip_through_deploy_constructor() -> None:
    fused = reparameterize_model(randomize_bn(build_model(TINY_SPEC)))
    deploy = build_model(TINY_SPEC, deploy=True)
    deploy.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(deploy.eval()(x), fused(x))


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"variant": "C9"}, "unknown RepVGG variant 'C9'"),
        ({"variant": None, "widths": [4, 4, 4, 4, 4]}, "needs both model.widths and model.depths"),
        ({"variant": "A0", "depths": [1, 1, 1]}, "model.depths needs 5 positive integers"),
        ({"variant": "A0", "num_classes": 1}, "num_classes >= 2"),
        ({"variant": "A0", "colour": "red"}, r"unknown model option\(s\) \['colour'\]"),
    ],
)
def test_bad_specs_are_named(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(spec)


def test_spec_round_trips_through_dict() -> None:
    spec = RepVGGSpec.from_dict(TINY_SPEC)
    assert RepVGGSpec.from_dict(spec.to_dict()) == spec


def test_plain_vgg_limit_computes_the_fused_function() -> None:
    from reparam.deploy.load import plain_vgg_like

    fused = reparameterize_model(randomize_bn(build_model(TINY_SPEC)))
    plain = plain_vgg_like(fused)
    assert all(
        isinstance(m, (nn.Conv2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear, nn.Sequential))
        for m in plain.modules()
    )
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(plain(x), fused(x), atol=1e-6)


@pytest.mark.parametrize("block", ["repvgg", "dbb"])
def test_kernel_size_5_fuses_exactly_and_round_trips_through_the_deploy_constructor(block: str) -> None:
    spec = {**TINY_SPEC, "kernel_size": 5, "block": block}
    train_form = randomize_bn(build_model(spec)).double().eval()
    fused = fuse_model(spec, train_form)
    assert {m.kernel_size for m in fused.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)} == {(5, 5)}
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    report = verify_equivalence(train_form, fused, x)
    assert report.max_abs_diff <= 1e-10 and report.argmax_agreement == 1.0
    deploy = build_model(spec, deploy=True).double().eval()
    deploy.load_state_dict(fused.state_dict(), strict=True)
    assert torch.equal(deploy(x), fused(x))


def test_specs_without_kernel_size_build_3x3_blocks() -> None:
    assert "kernel_size" not in TINY_SPEC  # as recorded before the field existed
    model = build_model(TINY_SPEC)
    assert model.spec.kernel_size == 3
    assert {m.kernel_size for m in model.modules() if isinstance(m, MultiBranchBlock)} == {3}


def test_even_kernel_size_is_named() -> None:
    with pytest.raises(ValueError, match=r"model.kernel_size must be odd .* got 4"):
        build_model({**TINY_SPEC, "kernel_size": 4})


def test_every_family_is_registered_under_its_arch() -> None:
    assert {"repvgg", "custom", "timm"} <= set(MODELS)
    assert all(family.arch == arch and isinstance(family, ModelFamily) for arch, family in MODELS.items())
    with pytest.raises(ValueError, match=r"unknown model arch 'resnet'; choose one of \['custom', "):
        model_family({"arch": "resnet"})
    assert model_family(TINY_SPEC) is MODELS["repvgg"]  # specs recorded before 'arch' existed


CUSTOM_SPEC = {
    "arch": "custom",
    "num_classes": 10,
    "input_size": [3, 32, 32],
    "net": {"_target_": "reparam.models.examples.AsymmetricNet", "num_classes": 10},
}


def test_a_family_without_a_fused_constructor_fuses_by_auto_fuse_and_exports_a_program() -> None:
    assert MODELS["custom"].exports_program and not MODELS["repvgg"].exports_program
    with pytest.raises(ValueError, match="has no fused constructor"):
        build_model(CUSTOM_SPEC, deploy=True)
    train_form = randomize_bn(build_model(CUSTOM_SPEC)).double().eval()
    fused, report = fuse_model_with_report(CUSTOM_SPEC, train_form, torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    assert report is not None and not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert verify_equivalence(train_form, fused, x).max_abs_diff <= 1e-10


def test_complete_spec_fills_what_the_data_decides_per_family() -> None:
    repvgg = complete_spec({**TINY_SPEC, "num_classes": None}, lambda: 7, (64, 64))
    assert repvgg["num_classes"] == 7 and repvgg["input_size"] == [3, 64, 64] and repvgg["strides"] == [1, 2, 2, 2, 2]
    custom = complete_spec({**CUSTOM_SPEC, "input_size": None}, lambda: 3, (48, 48))
    assert custom["num_classes"] == 10 and custom["input_size"] == [3, 48, 48] and "strides" not in custom
    assert input_size(custom) == (3, 48, 48) and input_size(TINY_SPEC) == (3, 32, 32)


def test_a_custom_network_gets_the_class_count_an_image_folder_counts(tmp_path) -> None:
    """model=custom with data=imagefolder: the config's ${model.num_classes} reached the network as null (Hydra
    resolves it before the folder is counted), and building it failed with torch's 'empty(): ... NoneType'."""
    from helpers import compose_config
    from omegaconf import OmegaConf

    cfg = compose_config("train", ["data=imagefolder", f"data.data_dir={tmp_path}", "model=custom"], tmp_path)
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    assert spec["num_classes"] is None and spec["net"]["num_classes"] is None
    completed = complete_spec(spec, lambda: 3, (32, 32))
    assert completed["net"]["num_classes"] == 3
    assert build_model(completed).eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
