"""The one device-placement helper: what it moves, what it leaves alone, and its errors."""

import pytest
import torch
from torch import nn

from reparam.device import describe_device, device_of, place, resolve_device


def test_auto_is_cpu_without_a_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="is not a device"):
        resolve_device("gpu0")


def test_place_converts_floats_only_and_keeps_containers() -> None:
    x = torch.randn(2, 3, 4, 4)
    y = torch.tensor([1, 2])
    px, py = place((x, y), "cpu", dtype=torch.float64, channels_last=True)
    assert px.dtype == torch.float64 and py.dtype == torch.int64
    assert px.is_contiguous(memory_format=torch.channels_last)
    assert place({"a": y}, "cpu")["a"] is y  # already there: no copy


def test_place_moves_modules_in_place() -> None:
    conv = nn.Conv2d(3, 4, 3)
    assert place(conv, "cpu", dtype=torch.float64) is conv
    assert conv.weight.dtype == torch.float64 and device_of(conv) == torch.device("cpu")
    assert device_of(nn.ReLU()) == torch.device("cpu")
    assert describe_device("cpu").startswith("cpu (")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_place_on_cuda_round_trip() -> None:
    model = place(nn.Conv2d(3, 4, 3), "cuda")
    x = place(torch.randn(1, 3, 8, 8), device_of(model))
    assert model(x).device.type == "cuda"
