"""model=timm: timm's RepVGG and MobileOne with weights from a local file (no network), a new head, fused exactly."""

import pytest
import torch
from helpers import calibrate_bn
from torch.nn.modules.batchnorm import _BatchNorm

from reparam.errors import UserError
from reparam.models import build_model, complete_spec, fuse_model, input_size, load_pretrained

timm = pytest.importorskip("timm")


def _weights_file(tmp_path, name: str, suffix: str = ".safetensors"):
    """timm's model with random weights and realistic BN statistics (ImageNet's 1000-class head), saved to a file."""
    torch.manual_seed(0)
    source = calibrate_bn(timm.create_model(name, num_classes=1000), torch.randn(2, 3, 64, 64))
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return path, state


@pytest.mark.parametrize("name", ["repvgg_a0", "mobileone_s0"])
def test_pretrained_file_loads_with_a_new_head_and_fuses_exactly_at_224(tmp_path, name, caplog) -> None:
    path, state = _weights_file(tmp_path, name)
    spec = complete_spec(
        {"arch": "timm", "name": name, "num_classes": None, "input_size": None, "pretrained": str(path)},
        num_classes=lambda: 5,
        image_size=(224, 224),
    )
    assert spec["num_classes"] == 5 and input_size(spec) == (3, 224, 224)
    model = build_model(spec)
    with caplog.at_level("INFO", logger="reparam.models.timm_models"):
        assert load_pretrained(model, spec) == str(path)
    own = model.state_dict()
    body = [k for k in state if not k.startswith("head.fc.")]
    # the run's log says the file was read, into what, and that the head is new (a new user could not tell)
    assert (
        f"model.pretrained: {len(body)} tensors loaded from {path} into timm's {name}; the classifier (head.fc) "
        f"starts new for 5 classes ({len(state) - len(body)} tensors of the file left out)"
    ) in caplog.text
    assert all(torch.equal(own[k], state[k]) for k in body)  # every pretrained tensor but the head's
    assert own["head.fc.weight"].shape == (5, state["head.fc.weight"].shape[1])

    # timm's own model with the same weights is the reference; fused in float64 the way the callback verifies
    reference = timm.create_model(name, num_classes=5)
    reference.load_state_dict(own)
    reference = reference.double().eval()
    fused = fuse_model(spec, model.double().eval())
    assert not any(isinstance(m, _BatchNorm) for m in fused.modules())  # every branch folded into one conv
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), fused(x)
    relative = float((got - expected).abs().max() / expected.abs().max())
    assert relative <= 1e-10, relative

    # the deploy constructor holds the fused structure: fused weights round-trip through it
    skeleton = build_model(spec, deploy=True).double()
    skeleton.load_state_dict(fused.state_dict())
    with torch.no_grad():
        assert torch.equal(skeleton.eval()(x), got)


def test_torch_weights_file_is_read_as_tensors_only(tmp_path) -> None:
    path, state = _weights_file(tmp_path, "repvgg_a0", ".pth")
    spec = {"arch": "timm", "name": "repvgg_a0", "num_classes": 3, "pretrained": str(path)}
    model = build_model(spec)
    load_pretrained(model, spec)
    assert torch.equal(model.state_dict()["stem.conv_kxk.conv.weight"], state["stem.conv_kxk.conv.weight"])


def test_weights_of_another_model_are_one_clear_error(tmp_path) -> None:
    path, _ = _weights_file(tmp_path, "mobileone_s0")
    spec = {"arch": "timm", "name": "repvgg_a0", "num_classes": 3, "pretrained": str(path)}
    with pytest.raises(UserError, match="does not fit timm's repvgg_a0"):
        load_pretrained(build_model(spec), spec)
    with pytest.raises(UserError, match="is not a file"):
        load_pretrained(build_model(spec), {**spec, "pretrained": str(tmp_path / "missing.safetensors")})


def test_unknown_timm_model_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="timm has no model 'repvgg_z9'"):
        build_model({"arch": "timm", "name": "repvgg_z9", "num_classes": 3})
