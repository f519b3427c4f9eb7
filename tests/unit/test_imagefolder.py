"""data=imagefolder and the dataset registry: layouts, bad data (one line each), the recorded evaluation rule."""

import shutil
from pathlib import Path

import pytest
import torch
from helpers import compose_config

from reparam.data import DATASETS, ImageDataModule
from reparam.data.synthetic import write_digits_folder
from reparam.errors import UserError
from reparam.models import stride_plan
from reparam.preprocess import Preprocessing, read_image_file


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """3 images per digit class in train/, PNG and JPEG of mixed sizes and modes."""
    return write_digits_folder(tmp_path_factory.mktemp("src") / "f", per_class=3, splits=("train",))


@pytest.fixture
def folder(source, tmp_path) -> Path:
    shutil.copytree(source, tmp_path / "f")
    return tmp_path / "f"


def _dm(folder, **options) -> ImageDataModule:
    options = {"image_size": 16, "num_workers": 0, "batch_size": 4, "val_size": 5, **options}
    dm = ImageDataModule("imagefolder", str(folder), **options)
    dm.setup()
    return dm


def _error(folder, **options) -> str:
    with pytest.raises(UserError) as info:
        _dm(folder, **options)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_registry_holds_every_dataset_and_names_them_on_a_typo() -> None:
    assert {"cifar10", "cifar100", "digits", "imagefolder"} <= set(DATASETS)
    with pytest.raises(UserError, match="unknown dataset 'imagefoldr'; choose one of ") as info:
        ImageDataModule("imagefoldr")
    assert str(info.value).split("choose one of ")[1].startswith(", ".join(sorted(DATASETS)))  # every one, by name


def test_an_option_the_dataset_does_not_read_is_refused() -> None:
    with pytest.raises(UserError, match="data=digits does not read data.data_dir; .* data=imagefolder"):
        ImageDataModule("digits", data_dir="/some/folder")
    with pytest.raises(UserError, match="data=cifar10 does not read data.image_size"):
        ImageDataModule("cifar10", image_size=64)
    with pytest.raises(UserError, match="data.pipeline=fast .* use data.pipeline=standard"):
        ImageDataModule("imagefolder", "/x", pipeline="fast")


def test_demo_with_a_folder_is_an_error_not_the_digits(tmp_path) -> None:
    from reparam.guard import find_user_error
    from reparam.training import build_components

    with pytest.raises(Exception) as info:  # noqa: PT011 - Hydra wraps it; the entry points print the UserError
        build_components(compose_config("train", ["experiment=demo", f"data.data_dir={tmp_path}"], run_dir=tmp_path))
    assert "data=digits does not read data.data_dir" in str(find_user_error(info.value))


def test_folder_reads_every_mode_splits_val_seeded_and_counts_classes(folder) -> None:
    dm = _dm(folder)
    assert dm.classes == [str(i) for i in range(10)] and dm.num_classes == 10
    assert dm.split_sizes() == {"train": 25, "val": 5, "test": 5}  # no val/ or test/: held out of train/, seeded
    assert dm.split_sizes() == _dm(folder).split_sizes() and dm._splits["val"].paths == _dm(folder)._splits["val"].paths
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_evaluation_is_exactly_the_recorded_rule(folder) -> None:
    dm = _dm(folder, crop_pct=0.5)
    rule = Preprocessing.from_record(dm.deploy_info())
    assert rule.size == (16, 16) and rule.resize_to == 32 and rule.classes == tuple(dm.classes)
    x, y = next(iter(dm.test_dataloader()))
    paths = dm._splits["test"].paths[: len(y)]
    assert torch.equal(x, torch.stack([rule(read_image_file(p)) for p in paths]))


def test_imagenet_normalization_is_recorded(folder) -> None:
    assert _dm(folder, normalization="imagenet").deploy_info()["mean"] == [0.485, 0.456, 0.406]


def test_missing_train_folder_says_where_the_classes_go(folder, tmp_path) -> None:
    # data_dir named the train/ split itself: the fix is its parent, not a train/train/ folder
    message = _error(folder / "train")
    assert "has no train/ folder" in message and message.endswith(f"use data.data_dir={folder}"), message
    classes = tmp_path / "my_images"  # class folders with no train/ above them
    shutil.copytree(folder / "train", classes)
    message = _error(classes)
    assert "has no train/ folder" in message and f"move them into {classes}/train/" in message


def test_single_class_and_empty_class_and_differing_splits(folder) -> None:
    (folder / "train" / "extra").mkdir()
    assert "class folder" in _error(folder) and "holds no readable images" in _error(folder)
    (folder / "train" / "extra").rmdir()
    (folder / "val" / "0").mkdir(parents=True)
    assert "other class folders than" in _error(folder)
    shutil.rmtree(folder / "val")
    for i in range(1, 10):
        shutil.rmtree(folder / "train" / str(i))
    assert "holds one class folder (0); a classifier needs two or more" in _error(folder)


@pytest.mark.parametrize("bad", ["empty.png", "notes.txt", "garbage.jpg"])
def test_a_bad_file_is_named_or_skipped_and_counted(folder, bad) -> None:
    path = folder / "train" / "4" / bad
    path.write_bytes(b"" if bad == "empty.png" else b"this is not an image")
    message = _error(folder)
    assert str(path) in message and "data.skip_bad_images=true" in message
    dm = _dm(folder, skip_bad_images=True)
    assert dm.skipped and str(path) in dm.skipped[0] and dm.deploy_info()["skipped_images"] == 1
    assert sum(dm.split_sizes()[s] for s in ("train", "val")) == 30


def test_a_file_that_fails_in_a_worker_is_one_line(folder) -> None:
    """A JPEG cut short passes the scan (its header is fine) and fails when a worker decodes it."""
    options = {"num_workers": 1, "persistent_workers": False, "val_size": 10, "eval_batch_size": 4}
    jpeg = Path(next(p for p in _dm(folder, **options)._splits["val"].paths if p.endswith(".jpg")))
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    with pytest.raises(UserError) as info:
        list(_dm(folder, **options).val_dataloader())
    assert str(info.value).startswith(f"{jpeg}: unreadable image") and "Traceback" not in str(info.value)
    batches = [len(y) for _, y in _dm(folder, **options, skip_bad_images=True).val_dataloader()]
    assert sum(batches) == 9 and len(batches) == 3  # left out of its batch (4 + 4 + 2 images)


def test_stride_plan_follows_the_input_size() -> None:
    assert stride_plan(32, 32) == [1, 1, 2, 2, 2]  # CIFAR: 32 -> 4
    assert stride_plan(224, 224) == [2, 2, 2, 2, 2]  # ImageNet: 224 -> 7
    assert stride_plan(64, 96) == [1, 2, 2, 2, 2] and stride_plan(128, 128) == [2, 2, 2, 2, 2]
    assert stride_plan(8, 8) == [1, 1, 1, 1, 2]
