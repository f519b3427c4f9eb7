"""The served model: the chosen deploy target, rebuilt from what deploy checked, and top-k class names on top.

ONNX-based targets run the very file deploy evaluated (``model.int8.onnx``, ``model.onnx``); torch targets are
built from the loaded fused model exactly as deploy builds them (same class, dtype, layout and compile mode).
Used by the server's inference workers and by ``deploy.py predict=...``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import torch

from ..deploy.gates import Reference
from ..deploy.load import Loaded
from ..deploy.targets import TARGETS, Target, TorchTarget
from ..errors import reraise_as_user_error
from ..preprocess import Preprocessing
from .choice import ServedTarget

__all__ = ["build_target", "recorded_preprocessing", "with_class_names", "Prediction", "Classifier"]


def build_target(served: ServedTarget, loaded: Loaded, device: torch.device | str, threads: int) -> Target:
    """The target ``served`` names, ready to predict; its gate is the report's concern, so it carries none."""
    cls = TARGETS[served.name]
    if cls.needs_onnx:  # the ONNX targets take (path, threads, gate, details); Target itself declares no constructor
        return cls(served.artifact, threads, Reference(), {})  # type: ignore[call-arg]
    if not issubclass(cls, TorchTarget):
        raise TypeError(f"target {served.name} is neither an ONNX nor a PyTorch target")
    device = torch.device(device)
    cls.check_device(device)
    return TorchTarget(
        cls.network(loaded),
        device,
        Reference(),
        dtype=cls.dtype,
        channels_last=served.channels_last,
        compiled=cls.compiled,
        name=served.name,
        form=cls.form,
        compile_mode=served.compile_mode,
    )


def recorded_preprocessing(loaded: Loaded) -> Preprocessing:
    """The preprocessing rule recorded with the weights: ``fused/config.json``'s ``input`` (for a checkpoint, that of
    its run's ``fused/``); failing both, the training run's data config rebuilds it (same train-split statistics)."""
    record = loaded.input_info
    if not record and loaded.kind == "checkpoint":
        from ..deploy.report_index import run_dir_of

        config = run_dir_of(loaded.source) / "fused" / "config.json"
        try:
            record = json.loads(config.read_text()).get("input") or {}
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            record = {}
    if record:
        with reraise_as_user_error(f"the preprocessing recorded with {loaded.source}", ValueError):
            return Preprocessing.from_record(record)
    from ..deploy.data import deploy_datamodule

    return deploy_datamodule(loaded, {}).preprocessing


def with_class_names(preprocessing: Preprocessing, loaded: Loaded) -> Preprocessing:
    """The rule with class names: the recorded ones, or the class indices where none were recorded."""
    if preprocessing.classes:
        return preprocessing
    return replace(preprocessing, classes=tuple(str(i) for i in range(int(loaded.spec.get("num_classes") or 0))))


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, most probable first."""

    classes: list[str]
    indices: list[int]
    probabilities: list[float]

    def to_dict(self) -> dict:
        return {
            "class": self.classes[0],
            "index": self.indices[0],
            "probability": self.probabilities[0],
            "top_k": [
                {"class": c, "index": i, "probability": p}
                for c, i, p in zip(self.classes, self.indices, self.probabilities, strict=True)
            ],
        }


class Classifier:
    """A target, the recorded preprocessing and class names: uint8 batches at the model's input size in (see
    :func:`~reparam.serve.http_input.model_sized_image`), top-k predictions out."""

    def __init__(self, target: Target, preprocessing: Preprocessing, top_k: int = 5) -> None:
        self.target, self.classes = target, list(preprocessing.classes)
        self.normalize = preprocessing.normalize()  # the rule's last step, once per batch
        self.top_k = max(1, min(int(top_k), len(self.classes))) if self.classes else max(1, int(top_k))

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (CPU float32) for a uint8 batch at the input size."""
        if len(images) == 0:
            return torch.empty(0, len(self.classes))
        return torch.softmax(self.target.predict(self.normalize(images)).float().cpu(), dim=1)

    def name_of(self, index: int) -> str:
        return self.classes[index] if index < len(self.classes) else str(index)

    def predictions(self, probabilities: torch.Tensor) -> list[Prediction]:
        k = min(self.top_k, probabilities.shape[1]) if probabilities.ndim == 2 else self.top_k
        values, indices = probabilities.topk(k, dim=1) if len(probabilities) else (probabilities, probabilities)
        return [
            Prediction([self.name_of(int(i)) for i in idx], [int(i) for i in idx], [float(v) for v in vals])
            for vals, idx in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    def __call__(self, images: torch.Tensor) -> list[Prediction]:
        return self.predictions(self.probabilities(images))
