"""``python deploy.py ckpt=... predict=<image file or folder>``: predictions.csv over image files, with the target
and the preprocessing the server would use. A file that cannot be read as an image is a row with its reason, not
the end of the run."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from ..artifact import atomic_write_text
from ..deploy.load import load_for_deploy
from ..deploy.machine import usable_cores
from ..deploy.report_index import weights_sha256
from ..device import resolve_device
from ..errors import UserError, reraise_as_user_error
from .choice import ServedTarget, agreement_share, choose_target
from .http_input import BadInput, max_pixels_problem, model_sized_image
from .model import Classifier, Prediction, build_target

__all__ = ["PredictionRun", "image_files", "predict_files", "print_prediction_summary"]

CSV_NAME = "predictions.csv"


@dataclass
class PredictionRun:
    csv_path: Path
    target: ServedTarget
    predicted: int
    unreadable: dict[str, str]  # file -> why


def image_files(path: Path) -> list[Path]:
    """The file itself, or every file under the folder (hidden ones left out), in path order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"predict={path} does not exist; pass an image file or a folder of images")
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise UserError(f"predict={path} holds no files; pass an image file or a folder of images")
    return files


def _rows(files: list[tuple[str, Prediction | str]], top_k: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["file", "status", *[f"{kind}_{i}" for i in range(1, top_k + 1) for kind in ("class", "probability")], "error"]
    )
    for name, result in files:
        if isinstance(result, str):
            writer.writerow([name, "unreadable", *[""] * (2 * top_k), result])
            continue
        cells = [
            c for pair in zip(result.classes, (f"{p:.6f}" for p in result.probabilities), strict=True) for c in pair
        ]
        writer.writerow([name, "ok", *cells, *[""] * (2 * top_k - len(cells)), ""])
    return out.getvalue()


def predict_files(cfg: DictConfig) -> PredictionRun:
    options = cfg.prediction
    if int(options.batch_size) < 1 or int(options.top_k) < 1:
        raise UserError("prediction.batch_size and prediction.top_k must be >= 1")
    problem = max_pixels_problem(int(options.max_pixels), "prediction.max_pixels")
    if problem:
        raise UserError(problem)
    with reraise_as_user_error("device", ValueError):
        device = resolve_device(cfg.device)
    files = image_files(Path(str(cfg.predict)).expanduser())
    from .model import recorded_preprocessing, with_class_names

    loaded = load_for_deploy(str(cfg.ckpt))
    preprocessing = with_class_names(recorded_preprocessing(loaded), loaded)
    served = choose_target(
        loaded.source,
        weights_sha256(loaded.fused),
        device.type,
        target=options.target,
        report=options.report,
        max_batch_size=int(options.batch_size),
        recorded_accuracy=loaded.recorded.get("test_acc"),
        options="prediction",
        min_agreement=agreement_share(options.min_agreement, "prediction.min_agreement"),
    )
    classifier = Classifier(build_target(served, loaded, device, usable_cores()), preprocessing, int(options.top_k))
    geometry = preprocessing.geometry()
    results: list[tuple[str, Prediction | str]] = []
    for start in range(0, len(files), int(options.batch_size)):
        inputs, names = [], []
        for path in files[start : start + int(options.batch_size)]:
            try:
                inputs.append(
                    model_sized_image(
                        path.read_bytes(), preprocessing, int(options.max_pixels), geometry, "prediction.max_pixels"
                    )
                )
                names.append(str(path))
            except BadInput as err:
                results.append((str(path), err.detail))
            except OSError as err:
                results.append((str(path), f"cannot read the file ({err.strerror})"))
        if inputs:
            import torch

            results += list(zip(names, classifier(torch.stack(inputs)), strict=True))
    order = {str(p): i for i, p in enumerate(files)}
    results.sort(key=lambda r: order[r[0]])
    csv_path = Path(cfg.paths.output_dir) / CSV_NAME
    atomic_write_text(csv_path, _rows(results, classifier.top_k))
    unreadable = {name: r for name, r in results if isinstance(r, str)}
    return PredictionRun(csv_path, served, len(results) - len(unreadable), unreadable)


def print_prediction_summary(run: PredictionRun) -> None:
    print(
        f"{run.csv_path}: {run.predicted} image(s) predicted by {run.target.name} ({run.target.label}); "
        f"chosen: {run.target.chosen_because}"
    )
    if run.unreadable:
        print(f"{len(run.unreadable)} file(s) could not be read as images (listed in the CSV):")
        for name, why in list(run.unreadable.items())[:10]:
            print(f"  {name}: {why}")
        if len(run.unreadable) > 10:
            print(f"  ... and {len(run.unreadable) - 10} more")
