"""Your own images end to end: a folder of real image files (the digits as PNG and JPEG of mixed sizes and modes,
one corrupt) trains, fuses, deploys and quantizes; deploy refuses other data."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import compose_config

from reparam.data.synthetic import write_digits_folder
from reparam.deploy import deploy
from reparam.errors import UserError
from reparam.training import train

pytestmark = pytest.mark.slow

TRAIN = [
    "experiment=demo",
    "data=imagefolder",
    "data.image_size=32",
    "data.min_crop_scale=0.5",
    "data.num_workers=1",
    "trainer.max_epochs=4",
    "data.batch_size=16",
]
DEPLOY = [
    "quantize=int8",
    "quantize.calibration_images=128",
    # 40 test images: one image is 2.5 points, so the default max_drop=1.0 demanded no flipped image at all (it
    # failed when xdist's one thread per worker trained a slightly different model); two images of 40 allowed
    "quantize.max_drop=5.0",
    "benchmark.batch_sizes=[8]",
    "benchmark.min_run_time=0.1",
    "benchmark.rounds=1",
    "export.torch_export=false",
    "device=cpu",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = write_digits_folder(
        tmp_path_factory.mktemp("digits") / "images", per_class=40, splits=("train", "val", "test")
    )
    good = next((root / "train" / "3").glob("*.png"))
    (root / "train" / "3" / "corrupt.png").write_bytes(good.read_bytes()[:60])  # a PNG cut short
    return root


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory) -> tuple[Path, object]:
    run = tmp_path_factory.mktemp("run")
    summary = train(
        compose_config("train", [*TRAIN, f"data.data_dir={folder}", "data.skip_bad_images=true"], run_dir=run)
    )
    return run, summary


def test_a_corrupt_file_is_named_before_training(folder, tmp_path) -> None:
    with pytest.raises(UserError, match=r"corrupt\.png: unreadable image .*data\.skip_bad_images=true") as info:
        train(compose_config("train", [*TRAIN, f"data.data_dir={folder}"], run_dir=tmp_path))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "checkpoints").exists()  # stopped before the first step


def test_folder_trains_fuses_exactly_and_records_its_preprocessing(trained, folder) -> None:
    run, summary = trained
    assert summary.fusion_fp64_max_abs_diff <= 1e-10 and summary.fusion_argmax_agreement == 1.0
    assert summary.test_acc > 0.3  # learned from the files (chance: 0.1)
    assert summary.test_split is None  # test/ given: its own images, not the validation split
    assert summary.fusion_fp32_max_rel_diff is not None and summary.fusion_fp32_max_rel_diff < 1e-5
    assert summary.skipped_images == 1  # the corrupt file, counted where the run's record is read first
    assert json.loads((run / "summary.json").read_text())["skipped_images"] == 1
    config = json.loads((run / "fused" / "config.json").read_text())
    record = config["input"]
    assert record["dataset"] == "imagefolder" and record["classes"] == [str(i) for i in range(10)]
    assert record["size"] == [3, 32, 32] and record["crop_pct"] == 0.875 and record["skipped_images"] == 1
    assert config["model"]["input_size"] == [3, 32, 32] and config["model"]["strides"] == [1, 1, 2, 2, 2]
    assert config["model"]["num_classes"] == 10  # counted from the class folders


def test_folder_deploys_and_quantizes_on_its_test_split(trained, folder, tmp_path) -> None:
    run, summary = trained
    report = deploy(compose_config("deploy", [f"ckpt={run}", *DEPLOY], run_dir=tmp_path))
    test_images = sum(1 for _ in (folder / "test").glob("*/*"))
    assert report.dataset == "imagefolder" and report.num_test_images == test_images
    targets = {t.name: t for t in report.targets}
    assert {"fused", "train_form", "onnxruntime_fp32", "onnxruntime_int8"} <= set(targets)
    assert targets["train_form"].gate.passed and targets["onnxruntime_int8"].gate.passed
    assert targets["fused"].accuracy == pytest.approx(summary.test_acc)  # the recorded preprocessing, the same split
    assert report.data_warnings == []


def test_deploy_refuses_other_class_names_and_flags_other_images(trained, folder, tmp_path) -> None:
    run, _ = trained
    renamed = tmp_path / "renamed"
    for i in range(10):
        shutil.copytree(folder / "test" / str(i), renamed / "train" / f"digit{i}")
    with pytest.raises(UserError, match="other class names .*class 0 is 'digit0' here but '0' in the model"):
        deploy(compose_config("deploy", [f"ckpt={run}/fused", f"data.data_dir={renamed}", *DEPLOY], run_dir=tmp_path))
    shuffled = tmp_path / "shuffled"  # the same class names over other images: evaluated, and flagged
    for i in range(10):
        shutil.copytree(folder / "test" / str((i + 1) % 10), shuffled / "train" / str(i))
    report = deploy(
        compose_config(
            "deploy",
            [f"ckpt={run}/fused", f"data.data_dir={shuffled}", "quantize=none", *DEPLOY[3:]],
            run_dir=tmp_path / "d",
        )
    )
    assert report.targets[0].accuracy < 0.3 and len(report.data_warnings) == 2
    assert "points below" in report.data_warnings[0]
    # only train/: the test images are held out of it, the same ones that validate (as the training summary says)
    assert report.data_warnings[1].startswith("the test images are the validation split: imagefolder has no test split")
