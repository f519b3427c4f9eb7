"""The CIFAR reader, the digits demo and the datamodule on generated files in the official format."""

import pickle

import numpy as np
import pytest
import torch
from helpers import write_fake_cifar

from reparam.data import ImageDataModule, TensorBatchLoader, load_digits32, random_crop_flip, read_cifar
from reparam.data.sources import CIFAR
from reparam.errors import DataNotFoundError, UserError


def test_reads_official_layout(cifar_root) -> None:
    arrays = read_cifar(cifar_root, "cifar10")
    assert arrays.train_images.shape == (200, 32, 32, 3) and arrays.train_images.dtype == np.uint8
    assert arrays.test_images.shape == (40, 32, 32, 3) and arrays.train_labels.dtype == np.int64
    assert arrays.classes[0] == "airplane" and arrays.num_classes == 10
    # CHW -> HWC: channel c of pixel (0, 0) is byte c*1024 of the row
    raw = pickle.loads((cifar_root / "cifar-10-batches-py" / "data_batch_1").read_bytes(), encoding="bytes")
    assert arrays.train_images[0, 0, 0, 1] == raw[b"data"][0, 1024]
    assert read_cifar(cifar_root, "cifar100").num_classes == 100


def test_data_dir_may_point_at_the_folder_itself(cifar_root) -> None:
    assert len(read_cifar(cifar_root / "cifar-10-batches-py").train_labels) == 200


def test_missing_data_names_the_folder_and_the_ways_out(tmp_path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        read_cifar(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "data.download=true" in message and "data.data_dir=" in message and "experiment=demo" in message


def test_truncated_file_is_a_user_error(tmp_path) -> None:
    folder = write_fake_cifar(tmp_path)
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="data_batch_3 is not a readable CIFAR pickle"):
        read_cifar(tmp_path)


def test_incomplete_folder_lists_missing_files(tmp_path) -> None:
    folder = write_fake_cifar(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match="missing test_batch"):
        read_cifar(tmp_path)


def test_malicious_pickle_is_refused_without_running(tmp_path) -> None:
    folder = write_fake_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(UserError, match="refusing to unpickle"):
        read_cifar(tmp_path)
    assert not marker.exists()


def test_digits_demo_is_real_and_offline() -> None:
    arrays = load_digits32()
    assert arrays.train_images.shape[1:] == (32, 32, 3)
    assert len(arrays.train_labels) + len(arrays.test_labels) == 1797
    assert set(np.unique(arrays.train_labels)) == set(range(10))
    assert arrays.train_images.max() > 200  # ink, not an empty image


def test_datamodule_split_is_seeded_and_disjoint(cifar_root) -> None:
    dm = ImageDataModule("cifar10", str(cifar_root), val_size=40, num_workers=0, batch_size=16)
    dm.setup()
    assert dm.split_sizes() == {"train": 160, "val": 40, "test": 40}
    dm2 = ImageDataModule("cifar10", str(cifar_root), val_size=40, num_workers=0)
    dm2.setup()
    assert np.array_equal(dm._splits["val"][1], dm2._splits["val"][1])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    info = dm.deploy_info()
    assert info["size"] == [3, 32, 32] and len(info["mean"]) == 3 and info["classes"][1] == "automobile"


def test_datamodule_checks_num_classes(cifar_root) -> None:
    dm = ImageDataModule("cifar100", str(cifar_root), num_classes=10, val_size=40)
    with pytest.raises(UserError, match="data.num_classes=10 but cifar100 has 100 classes"):
        dm.setup()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(dataset="mnist"), "unknown dataset 'mnist'"),
        (dict(pipeline="turbo"), "data.pipeline"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_datamodule_rejects_bad_options(kwargs, message) -> None:
    with pytest.raises(UserError, match=message):
        ImageDataModule(**kwargs)


def test_fast_path_matches_standard_path_shapes_and_labels(cifar_root) -> None:
    std = ImageDataModule("cifar10", str(cifar_root), val_size=40, num_workers=0, batch_size=16)
    fast = ImageDataModule("cifar10", str(cifar_root), val_size=40, num_workers=0, batch_size=16, pipeline="fast")
    std.setup()
    fast.setup()
    xs, ys = next(iter(std.val_dataloader()))
    xf, yf = next(iter(fast.val_dataloader()))
    assert xs.shape == xf.shape and xs.dtype == xf.dtype and ys.dtype == yf.dtype
    # without augmentation both paths produce the same normalized pixels and labels
    assert torch.equal(ys, yf) and torch.allclose(xs, xf, atol=1e-5)
    train_batches = list(fast.train_dataloader())
    assert len(train_batches) == len(fast.train_dataloader()) == 160 // 16


def test_random_crop_flip_offsets_stay_within_padding() -> None:
    # each image is a ramp with a unique value per pixel, so the crop offset can be read back
    h = w = 8
    ramp = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w) + 1
    images = ramp.repeat(256, 1, 1, 1)
    out = random_crop_flip(images, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    seen_flip = seen_plain = 0
    offsets = set()
    for img in out[:, 0]:
        nonzero = img[img > 0]
        first = nonzero.min()  # smallest surviving pixel id tells the shift
        row, col = divmod(int(first) - 1, w)
        is_flipped = bool((img[img > 0].reshape(-1)[:2].diff() < 0).any()) if nonzero.numel() > 1 else False
        seen_flip += is_flipped
        seen_plain += not is_flipped
        offsets.add((row, col))
        assert row <= 2 and col <= 2
        # zero padding can only appear in the outer 2 rows/cols
        assert (img[2:-2, 2:-2] > 0).all()
    assert seen_flip > 50 and seen_plain > 50 and len(offsets) == 9


@pytest.mark.parametrize("hflip", [True, False])
def test_hflip_option_reaches_both_pipelines(cifar_root, hflip: bool) -> None:
    # with no crop padding the only change augmentation can make is a mirror
    dm = ImageDataModule("cifar10", str(cifar_root), val_size=40, num_workers=0, crop_padding=0, hflip=hflip)
    dm.setup()
    images = torch.from_numpy(dm._splits["train"][0][:64]).permute(0, 3, 1, 2).contiguous()
    plain = dm._transform(train=False)(images)
    torch.manual_seed(0)
    standard = torch.stack([dm._transform(train=True)(img) for img in images])
    fast = TensorBatchLoader(images, torch.zeros(64), 64, dm.mean, dm.std, augment=True, padding=0, hflip=hflip)
    fast_batch = next(iter(fast))[0]
    for out in (standard, fast_batch):
        mirrored = [
            not torch.allclose(o, p, atol=1e-5) and torch.allclose(o, p.flip(-1), atol=1e-5)
            for o, p in zip(out, plain, strict=True)
        ]
        if hflip:
            assert 10 < sum(mirrored) < 54
        else:
            assert torch.allclose(out, plain, atol=1e-5)


def test_tensor_loader_shards_ddp_ranks_disjointly() -> None:
    images = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)
    labels = torch.arange(10)
    seen = []
    for rank in range(2):
        loader = TensorBatchLoader(images, labels, 3, [0, 0, 0], [1, 1, 1], rank=rank, world_size=2)
        ys = torch.cat([y for _, y in loader])
        assert len(list(loader)) == len(loader)
        seen.append(set(ys.tolist()))
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(10))


def test_epoch_order_depends_on_seed_and_epoch_only(cifar_root) -> None:
    from reparam.data.datamodule import EpochSeededSampler

    def order(epoch: int) -> list:
        torch.manual_seed(123)  # the run's seed
        dm = ImageDataModule("cifar10", str(cifar_root), val_size=40, num_workers=0)
        dm.setup()
        sampler = dm.train_dataloader().sampler
        assert isinstance(sampler, EpochSeededSampler)
        sampler.set_epoch(epoch)  # what Lightning does before every epoch
        return list(sampler)

    assert order(3) == order(3)  # a run resumed at epoch 3 replays it, the images' augmentation seeds included
    assert [key.image for key in order(3)] != [key.image for key in order(4)]
    assert sorted(key.image for key in order(3)) == list(range(160))
    seeds = [key.seed for key in order(3) + order(4)]
    assert len(set(seeds)) == len(seeds)  # every image of every epoch augmented from a seed of its own


def test_a_worker_augments_an_image_from_its_own_seed_whatever_it_did_before(cifar_root) -> None:
    """Persistent workers are seeded once: a resumed run's new workers and the uninterrupted run's older ones must
    augment the same (image, seed) alike."""
    from unittest import mock

    from reparam.data.seeding import SeededIndex

    dm = ImageDataModule("cifar10", str(cifar_root), val_size=40, num_workers=0)
    dm.setup()
    dataset = dm.train_dataloader().dataset
    with mock.patch("reparam.data.seeding.get_worker_info", return_value=object()):  # as in a worker
        first = dataset[SeededIndex(5, 1234)][0]
        torch.rand(100)  # the worker's RNG moved on (other images, other epochs)
        assert torch.equal(dataset[SeededIndex(5, 1234)][0], first)
        assert not torch.equal(dataset[SeededIndex(5, 4321)][0], first)  # another seed, another crop/flip


def test_under_ddp_the_order_goes_to_lightnings_distributed_sampler(cifar_root) -> None:
    from types import SimpleNamespace

    from torch.utils.data import RandomSampler

    dm = ImageDataModule("cifar10", str(cifar_root), val_size=40, num_workers=0, batch_size=16)
    dm.setup()
    dm.trainer = SimpleNamespace(world_size=2)
    assert isinstance(dm.train_dataloader().sampler, RandomSampler)  # Lightning replaces it with DistributedSampler


def test_random_erase_blanks_one_rectangle_per_chosen_image() -> None:
    from reparam.data import random_erase

    images = torch.ones(400, 3, 32, 32)
    out = random_erase(images, 0.5, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype and torch.equal(images, torch.ones_like(images))
    zero = out[:, 0] == 0
    assert torch.equal(zero, (out == 0).all(1))  # every channel of an erased pixel
    erased = zero.flatten(1).any(1)
    assert 150 < int(erased.sum()) < 250  # about half the images
    for mask in zero[erased][:50]:  # one axis-aligned rectangle whose area fraction is in torchvision's range
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert int(mask.sum()) == height * width
        assert 0.01 <= height * width / 1024 <= 0.34
    assert torch.equal(random_erase(images, 0.0), images)


@pytest.mark.parametrize("pipeline", ["standard", "fast"])
def test_erasing_reaches_both_pipelines_and_keeps_shapes_and_dtypes(pipeline: str, cifar_root) -> None:
    kwargs = dict(val_size=40, num_workers=0, batch_size=64, pipeline=pipeline, crop_padding=0, hflip=False)
    plain = ImageDataModule("cifar10", str(cifar_root), **kwargs)
    erased = ImageDataModule("cifar10", str(cifar_root), erase_prob=1.0, **kwargs)
    batches = []
    for dm in (plain, erased):
        dm.setup()
        torch.manual_seed(0)
        batches.append(next(iter(dm.train_dataloader())))
    (x0, y0), (x1, y1) = batches
    assert x1.shape == x0.shape and x1.dtype == x0.dtype == torch.float32 and y1.dtype == y0.dtype
    assert torch.equal(y0, y1)
    assert bool(((x1 == 0).flatten(1).sum(1) >= 3 * 20).all())  # every image lost a rectangle (>= 20 pixels)
    assert bool(((x0 == 0).flatten(1).sum(1) < 3 * 20).all())  # without erasing, no such block of exact zeros
    with pytest.raises(UserError, match="data.erase_prob must be a probability"):
        ImageDataModule("cifar10", str(cifar_root), erase_prob=1.5)


def test_a_batch_larger_than_the_training_split_is_one_clear_line(tmp_path) -> None:
    """Training drops the last incomplete batch: a folder smaller than one batch would train nothing and ship the
    initial weights with exit 0 (found by a new user with 32 images and the default batch of 64)."""
    from reparam.data.synthetic import write_digits_folder
    from reparam.errors import UserError

    folder = write_digits_folder(tmp_path / "images", per_class=2, splits=("train", "val"))
    dm = ImageDataModule("imagefolder", str(folder), batch_size=64, num_workers=0, image_size=32)
    dm.setup()
    with pytest.raises(UserError, match=r"data.batch_size=64 is larger than the \d+ training images") as raised:
        dm.train_dataloader()
    images = int(str(raised.value).split("larger than the ")[1].split()[0])
    assert f"data.batch_size={images // 2} or smaller (two steps an epoch; {images} is the most" in str(raised.value)
    dm.val_dataloader()  # evaluation keeps its last, smaller batch


@pytest.mark.parametrize(
    ("splits", "val_size", "note"),
    [
        (("train", "val", "test"), 0.1, None),
        (("train", "val"), 0.1, "the validation split: imagefolder has no test split (no test/ folder)"),
        (("train",), 0.1, "the validation split: imagefolder has no test split (no test/ folder)"),
        (("train", "test"), 0, "also the validation split (data.val_size=0)"),
    ],
)
def test_a_test_split_that_also_validated_is_said(splits, val_size, note, tmp_path, capsys) -> None:
    """Without test/, the test accuracy is measured on the images that chose the best checkpoint: the training
    summary says so beside it (a new user read it as an independent figure)."""
    from reparam.console import print_train_summary
    from reparam.data.synthetic import write_digits_folder
    from reparam.run_summary import TrainSummary

    folder = write_digits_folder(tmp_path / "images", per_class=4, splits=splits)
    dm = ImageDataModule("imagefolder", str(folder), batch_size=4, num_workers=0, image_size=32, val_size=val_size)
    dm.setup()
    if note is None:
        assert dm.test_split_note is None
        return
    assert dm.test_split_note is not None and dm.test_split_note.startswith(note)
    assert "chose the best checkpoint" in dm.test_split_note
    summary = TrainSummary(status="completed", run_dir="r", test_acc=0.5, test_images=8, test_split=dm.test_split_note)
    print_train_summary(summary)
    shown = " ".join(capsys.readouterr().out.split())
    assert "50.00% of 8 images" in shown and "test split" in shown and "chose the best checkpoint" in shown


@pytest.mark.parametrize("layout", ["train/cat", "cat"])
def test_cifar_not_found_in_a_folder_of_ones_own_images_suggests_data_imagefolder(layout, tmp_path) -> None:
    """``data.data_dir=my_images`` without ``data=imagefolder`` looked for CIFAR there and offered a download."""
    from PIL import Image

    (tmp_path / layout).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / layout / "a.png")
    with pytest.raises(DataNotFoundError) as info:
        read_cifar(tmp_path, "cifar10")
    assert f"add data=imagefolder (python train.py data=imagefolder data.data_dir={tmp_path})" in str(info.value)


def test_few_training_steps_an_epoch_are_warned_about_with_a_batch_size_that_gives_more(tmp_path, caplog) -> None:
    """150 own images at the default batch of 64 are two steps an epoch: BatchNorm's running statistics lag, the
    validations are poor for many epochs (a new user's run), and nothing said why."""
    from reparam.data.synthetic import write_digits_folder

    folder = write_digits_folder(tmp_path / "images", per_class=5, splits=("train", "test"))
    for batch_size, warned in ((16, True), (4, False)):
        caplog.clear()
        dm = ImageDataModule("imagefolder", str(folder), batch_size=batch_size, num_workers=0, image_size=32)
        dm.setup()
        with caplog.at_level("WARNING", logger="reparam.data.datamodule"):
            dm.train_dataloader()
        assert dm.split_sizes()["train"] == 36  # 4 of 40 held out to validate
        said = [r.getMessage() for r in caplog.records if "training step(s) an epoch" in r.getMessage()]
        assert bool(said) == warned, said
        if warned:  # 4: the largest power of two that leaves 8 steps or more (9)
            assert said[0].startswith(
                "2 training step(s) an epoch (36 images at data.batch_size=16; each epoch leaves out a partial batch "
                "of 4, other images each time): "
            )
            assert said[0].endswith("e.g. data.batch_size=4")


def test_cifar_one_level_off_names_where_it_is(tmp_path) -> None:
    """data.data_dir one level above the folder that holds cifar-10-batches-py: the message offered a download
    first (which fails offline) and did not say the data was right there."""
    write_fake_cifar(tmp_path / "datasets")
    with pytest.raises(DataNotFoundError) as info:
        read_cifar(tmp_path, "cifar10")
    found = tmp_path / "datasets" / "cifar-10-batches-py"
    assert str(info.value) == (
        f"cifar10 not found at {tmp_path / 'cifar-10-batches-py'}, but {found} exists: use data.data_dir={found.parent}"
    )
    assert read_cifar(found.parent, "cifar10").train_images.shape[0] == 200  # and that works


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_unpacked_one_level_too_deep_names_where_it_is(tmp_path, name) -> None:
    """cifar-100-python/cifar-100-python/{train,test,meta} (an archive unpacked into a folder of its name): the
    message said the folder was incomplete and to download again, with every file one level down."""
    outer = tmp_path / "deep" / CIFAR[name].folder
    write_fake_cifar(outer, name)
    with pytest.raises(DataNotFoundError) as info:
        read_cifar(tmp_path / "deep", name)
    message = str(info.value)
    assert message.startswith(f"{outer} holds no {name} batch files (")
    assert message.endswith(f"but {outer / CIFAR[name].folder} has them: use data.data_dir={outer}")
    assert "download" not in message
    assert read_cifar(outer, name).test_images.shape[0] == 40  # and that works


def test_a_folder_of_cifar_batch_files_under_another_name_is_read(tmp_path) -> None:
    """The README says data.data_dir may point at the folder of batch files itself; it had to be named
    cifar-10-batches-py."""
    folder = write_fake_cifar(tmp_path)
    renamed = folder.rename(tmp_path / "my_cifar_copy")
    assert read_cifar(renamed, "cifar10").test_images.shape[0] == 40


def test_the_unpacked_archive_is_pointed_at(tmp_path) -> None:
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not really")
    with pytest.raises(DataNotFoundError, match=r"cifar-10-python.tar.gz is there: unpack it \(tar xzf "):
        read_cifar(tmp_path, "cifar10")
