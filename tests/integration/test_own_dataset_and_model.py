"""A dataset kind and a model family of one's own, each one class in the user's own file and one config file in
the user's own config folder (imports=[...], hydra.searchpath=[...]): trained, fused, deployed, with the dataset's
own options passed through to it and recorded for deploy."""

import json
import textwrap
from pathlib import Path

import pytest
from helpers import run_entry

pytestmark = pytest.mark.slow

MY_CODE = textwrap.dedent(
    '''
    """A CSV list of images (path,label) and a plain CNN of RepVGG blocks with a conv + BN stem."""
    import csv
    from pathlib import Path

    import numpy as np
    from torch import nn

    from reparam import make_block
    from reparam.data import DatasetSource, register_dataset
    from reparam.data.registry import FileSplit, SourceSplits
    from reparam.models import ModelFamily, register_model_family


    @register_dataset("csvlist")
    class CSVList(DatasetSource):
        options = frozenset({"train_csv", "test_csv", "image_size"})
        native_size = None
        in_memory = False

        def _rows(self, key):
            path = Path(self.opts[key])
            return path, list(csv.DictReader(path.open()))

        def read(self):
            path, rows = self._rows("train_csv")
            classes = sorted({r["label"] for r in rows})

            def split(path, rows):
                paths = tuple(str(path.parent / r["path"]) for r in rows)
                return FileSplit(paths, np.array([classes.index(r["label"]) for r in rows], dtype=np.int64))

            test = split(*self._rows("test_csv")) if self.opts.get("test_csv") else None
            return SourceSplits(train=split(path, rows), classes=classes, test=test)


    class PlainCNN(nn.Module):
        def __init__(self, num_classes, width):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            self.body = nn.Sequential(make_block("repvgg", width, width), make_block("repvgg", width, width, stride=2))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

        def forward(self, x):
            return self.head(self.body(self.stem(x)))


    @register_model_family
    class PlainCNNFamily(ModelFamily):
        arch = "plaincnn"

        def build(self, spec, deploy=False):
            return PlainCNN(int(spec["num_classes"]), int(spec["width"]))
    '''
)

DATA_CONFIG = """\
_target_: reparam.data.ImageDataModule
dataset: csvlist
train_csv: ???
test_csv: null
image_size: 32
num_classes: null
batch_size: 8
eval_batch_size: 16
val_size: 0.2
num_workers: 0
persistent_workers: false
"""

MODEL_CONFIG = """\
arch: plaincnn
num_classes: ${data.num_classes}
input_size: null
width: 8
"""


def _write_images(root: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        rows = ["path,label"]
        for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200)), ("green", (30, 200, 30))):
            for i in range(n):
                size = (int(rng.integers(24, 60)), int(rng.integers(24, 60)))
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (*size, 3)), 0, 255).astype("uint8")
                name = f"{split}/{label}_{i}.png"
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / name)
                rows.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


def test_a_dataset_and_a_model_of_ones_own_train_fuse_and_deploy(tmp_path: Path, run_env) -> None:
    (tmp_path / "my_code.py").write_text(MY_CODE)
    for group, text in (("data", DATA_CONFIG), ("model", MODEL_CONFIG)):
        (tmp_path / "my_configs" / group).mkdir(parents=True)
        (tmp_path / "my_configs" / group / f"{'csvlist' if group == 'data' else 'plaincnn'}.yaml").write_text(text)
    _write_images(tmp_path / "images")
    own = ["imports=[my_code]", "hydra.searchpath=[file://my_configs]"]
    args = [
        *own,
        "data=csvlist",
        "model=plaincnn",
        f"data.train_csv={tmp_path / 'images' / 'train.csv'}",
        f"data.test_csv={tmp_path / 'images' / 'test.csv'}",
        "trainer=cpu",
        "trainer.max_epochs=1",
    ]
    trained = run_entry("train.py", [*args, "hydra.run.dir=run"], run_env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_images"] == 18 and summary["fusion_argmax_agreement"] == 1.0
    fused_config = json.loads((tmp_path / "run" / "fused" / "config.json").read_text())
    assert fused_config["input"]["classes"] == ["blue", "green", "red"] and fused_config["model"]["arch"] == "plaincnn"
    # the dataset's own option, recorded with the run, reaches deploy's datamodule (it was dropped: not an argument)
    deployed = run_entry(
        "deploy.py",
        ["ckpt=run", "imports=[my_code]", "benchmark.enabled=false", "export.onnx=false", "hydra.run.dir=deployed"],
        run_env,
        cwd=tmp_path,
    )
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    report = json.loads((tmp_path / "deployed" / "report.json").read_text())
    assert report["num_test_images"] == 18
    assert report["correct"]["train_form"] == round(summary["test_acc"] * 18) == report["correct"]["fused"]
    # an option the dataset does not read is refused in one line, not ignored
    refused = run_entry("train.py", [*args, "+data.data_dir=/tmp", "hydra.run.dir=refused"], run_env, cwd=tmp_path)
    assert refused.returncode == 2 and "error: data=csvlist does not read data.data_dir" in refused.stderr
