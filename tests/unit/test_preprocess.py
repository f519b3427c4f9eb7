"""The one preprocessing rule: its record round-trips, old records read as they behaved, files of any mode decode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from reparam.preprocess import NormalizeUint8, Preprocessing, decode_image_bytes


def rule(**kw) -> Preprocessing:
    return Preprocessing(
        **{
            "size": (32, 32),
            "mean": (0.5, 0.4, 0.3),
            "std": (0.2, 0.25, 0.3),
            "classes": ("a", "b"),
            "dataset": "cifar10",
            **kw,
        }
    )


def test_record_round_trips() -> None:
    p = rule(crop_pct=0.875)
    assert Preprocessing.from_record(p.to_record()) == p
    assert p.to_record()["resize_to"] == 37


def test_a_record_written_before_the_resize_rule_reads_as_native_size() -> None:
    old = {
        "dataset": "cifar10",
        "size": [3, 32, 32],
        "mean": [0.5] * 3,
        "std": [0.2] * 3,
        "classes": ["a", "b"],
        "scale": "uint8 pixels / 255, then (x - mean) / std",
    }
    assert Preprocessing.from_record(old).crop_pct == 1.0


def test_native_size_images_are_only_normalized() -> None:
    p = rule()
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mean, std = torch.tensor(p.mean).view(1, 3, 1, 1), torch.tensor(p.std).view(1, 3, 1, 1)
    torch.testing.assert_close(p(x), (x.float() / 255 - mean) / std)


def test_any_size_becomes_the_input_size() -> None:
    p = rule(size=(24, 24), crop_pct=0.875)
    out = p.batch([torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(40, 95), (100, 30), (24, 24)]])
    assert out.shape == (3, 3, 24, 24) and out.dtype == torch.float32


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("P", "BMP"), ("RGB", "WEBP")])
def test_files_of_any_mode_decode_to_rgb(mode: str, fmt: str) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode).save(buf, fmt)
    image = decode_image_bytes(buf.getvalue())
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8


@pytest.mark.parametrize("data,why", [(b"", "empty"), (b"hello, not an image", "not an image")])
def test_non_images_are_one_line_errors(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_image_bytes(data)


def test_a_truncated_image_is_an_error() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    with pytest.raises(ValueError, match="unreadable"):
        decode_image_bytes(buf.getvalue()[:60])


@pytest.mark.parametrize("mean,std", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,), (0.01,))])
def test_one_pass_normalization_is_the_rule_within_float32_rounding(mean, std) -> None:
    """x * scale + shift against the rule as written, (x / 255 - mean) / std, over every uint8 value, in float64."""
    channels = len(mean)
    pixels = torch.arange(256, dtype=torch.uint8).repeat(channels, 4, 1)  # (C, 4, 256): every value per channel
    out = NormalizeUint8(mean, std)(pixels)
    m, s = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1), torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    exact = (pixels.to(torch.float64) / 255.0 - m) / s
    assert out.dtype == torch.float32 and out.shape == pixels.shape
    # a few float32 ulps of the largest value (float32 holds 1/(255 std) and -mean/std to 6e-8 relative)
    assert (out.double() - exact).abs().max().item() <= 4 * torch.finfo(torch.float32).eps * exact.abs().max().item()
    batch = NormalizeUint8(mean, std)(pixels[None].repeat(2, 1, 1, 1))
    assert torch.equal(batch[1], out)  # a batch is normalized image by image, bit for bit
    with pytest.raises(TypeError, match="uint8"):
        NormalizeUint8(mean, std)(pixels.float())
