"""The extension examples in docs/data.md (a CSV-listed dataset) and docs/design.md (a model family) run as
written: registered, read or built, fused."""

import re
import textwrap

import torch
from helpers import ROOT
from torch import nn


def _block(doc: str, marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / doc).read_text(), re.S)
    (found,) = [b for b in blocks if marker in b]
    return textwrap.dedent(found)


def test_the_csv_dataset_example_reads_its_csv(tmp_path) -> None:
    from PIL import Image

    from reparam.data import DATASETS, ImageDataModule

    namespace: dict = {}
    exec(_block("data.md", '@register_dataset("csvlist")'), namespace)
    try:
        for split, n in (("train", 6), ("test", 3)):
            lines = ["path,label"]
            for i in range(n):
                label = ("cat", "dog")[i % 2]
                Image.new("RGB", (20 + i, 30), (200 * (i % 2), 50, 50)).save(tmp_path / f"{split}{i}.png")
                lines.append(f"{split}{i}.png,{label}")
            (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
        dm = ImageDataModule(
            "csvlist",
            train_csv=str(tmp_path / "train.csv"),
            test_csv=str(tmp_path / "test.csv"),
            image_size=16,
            num_workers=0,
            batch_size=2,
            eval_batch_size=8,
            val_size=2,
        )
        assert dm.num_classes == 2 and dm.classes == ["cat", "dog"] and dm.input_size == (16, 16)
        x, y = next(iter(dm.test_dataloader()))
        assert x.shape == (3, 3, 16, 16) and y.tolist() == [0, 1, 0]
    finally:
        DATASETS.pop("csvlist", None)


def test_the_model_family_example_builds_and_fuses_without_a_batchnorm() -> None:
    from reparam.models import MODELS, build_model, fuse_model

    namespace: dict = {}
    exec(_block("design.md", "class SmallCNNFamily"), namespace)
    try:
        spec = {"arch": "smallcnn", "num_classes": 3, "input_size": [3, 16, 16], "width": 8}
        model = build_model(spec).eval()
        fused = fuse_model(spec, model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        x = torch.randn(2, 3, 16, 16)
        assert torch.allclose(fused(x), model(x), atol=1e-5)
    finally:
        MODELS.pop("smallcnn", None)
