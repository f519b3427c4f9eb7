"""The fused artifact holds what the model family says: a ``model.pt2`` program only for a family whose fused form has
no constructor (custom), and a missing network class there is one clear error naming the program."""

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_SPEC, randomize_bn

from reparam.artifact import PROGRAM, read_fused_artifact, write_fused_artifact
from reparam.errors import UserError
from reparam.models import build_model, fuse_model

CUSTOM_SPEC = {
    "arch": "custom",
    "num_classes": 10,
    "input_size": [3, 32, 32],
    "net": {"_target_": "reparam.models.examples.AsymmetricNet", "num_classes": 10, "depths": [1, 1, 1]},
}


def _write(tmp_path: Path, spec: dict) -> tuple[Path, torch.nn.Module]:
    fused = fuse_model(spec, randomize_bn(build_model(spec)).eval())
    return write_fused_artifact(tmp_path / spec.get("arch", "repvgg"), fused, {"model": spec}, {}), fused


@pytest.mark.parametrize("spec", [TINY_SPEC, CUSTOM_SPEC], ids=["repvgg", "custom"])
def test_the_artifact_holds_a_program_only_where_the_family_has_no_fused_constructor(tmp_path, spec) -> None:
    folder, fused = _write(tmp_path, spec)
    assert (folder / PROGRAM).is_file() == (spec is CUSTOM_SPEC)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(read_fused_artifact(folder).model(x), fused(x), atol=1e-6)


def test_a_custom_artifact_whose_class_is_missing_names_its_program(tmp_path) -> None:
    folder, _ = _write(tmp_path, CUSTOM_SPEC)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["net"]["_target_"] = "nowhere.Net"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=rf"cannot be built .*nowhere.*{PROGRAM} with a torch.export runtime"):
        read_fused_artifact(folder)
