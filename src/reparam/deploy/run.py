"""What ``python deploy.py`` does: load, export, build every target, evaluate them in one pass over the test split,
benchmark them together, report. No step here knows a runtime: the targets (:mod:`reparam.deploy.targets`) do."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..compare import Tolerance
from ..convert import where_fusion_differs
from ..data import ImageDataModule
from ..device import resolve_device
from ..errors import UserError, reraise_as_user_error
from .benchmark import benchmark_targets
from .data import accuracy_warning, deploy_datamodule
from .evaluate import COMPARISON_PRECISION, TargetEvaluation, evaluate_targets
from .export import ExportResult, export_onnx, export_program
from .gates import Equivalence
from .load import CKPT_REQUIRED, Loaded, load_for_deploy
from .machine import Machine, cpu_threads
from .plot import plot_benchmark
from .quantize import int8_settings_problem
from .report import DeployReport, TargetReport, outcome_of, write_report
from .report_index import record_report, weights_sha256
from .targets import TARGETS, Selection, Target, TargetContext, build_targets, select_targets, shorthand_targets
from .timing import BenchmarkResult

__all__ = ["deploy", "raise_failed_checks"]

log = logging.getLogger("reparam.deploy")  # progress, on the console and in deploy.log


def deploy(cfg: DictConfig, raise_failed: bool = True) -> DeployReport:
    """Every step of a deploy run. Writes report.json before failing (exit 2) on a check that did not pass; with
    ``raise_failed=False`` the caller does that (:func:`raise_failed_checks`), after showing the report."""
    ckpt, device = _ckpt(cfg), _device(cfg)
    problem = int8_settings_problem(_plain_dict(cfg.quantize))
    if problem:
        raise UserError(problem)
    selection = select_targets(_requested_targets(cfg), device, onnx_export=bool(cfg.export.onnx))
    loaded = load_for_deploy(ckpt)
    dm = deploy_datamodule(loaded, _plain_dict(cfg.data))
    # one test batch: the finiteness check and every export's parity check
    example = next(iter(dm.test_dataloader()))[0][: cfg.export.check_batch_size]
    _refuse_overflowing_weights(loaded, example)
    out_dir = Path(cfg.paths.output_dir)
    with cpu_threads(cfg.benchmark.threads) as machine:
        log.info(f"deploying {loaded.source} ({loaded.chosen_because}) into {out_dir}")
        exports = _export(loaded.fused, example, cfg.export, out_dir, onnx=cfg.export.onnx or _needs_onnx(selection))
        context = TargetContext(
            loaded,
            device,
            bool(cfg.benchmark.channels_last),
            machine.threads,
            out_dir,
            exports.get("onnx"),
            dm.calibration_images,
            cfg.benchmark.get("compile_mode"),
        )
        settings = {"tolerance": _plain_dict(cfg.tolerance), **_plain_dict(cfg.target_settings)}
        targets = build_targets(selection, context, settings)
        log.info(f"evaluating {', '.join(t.name for t in targets)} on the test split of {dm.hparams['dataset']}")
        evaluations = evaluate_targets(targets, dm.test_dataloader())
        wrong_fusion = _locate_wrong_fusion(targets, evaluations, loaded, dm)
        timed = cfg.benchmark.enabled and not wrong_fusion
        benchmark = _benchmark(targets, cfg.benchmark, dm) if timed else []
        machine.review(benchmark)
    report = _report(loaded, dm, device, cfg, targets, evaluations, selection, benchmark, exports, machine)
    if wrong_fusion:
        report.benchmark_skipped = "the fused model does not compute the train form's function: its speed means nothing"
    _publish(report, cfg)
    # serve.py and deploy.py predict=... find this report through the run directory's index
    record_report(report.report_path, loaded.source, weights_sha256(loaded.fused), report.device)
    if raise_failed:
        raise_failed_checks(report)
    return report


def _plain_dict(node: DictConfig) -> dict[str, Any]:
    """A config node as plain Python (interpolations resolved), with the string keys a Hydra config node has."""
    container = OmegaConf.to_container(node, resolve=True)
    assert isinstance(container, dict), f"{node} is not a config mapping"
    return {str(key): value for key, value in container.items()}


def _ckpt(cfg: DictConfig) -> str:
    if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt in (None, ""):
        raise UserError(CKPT_REQUIRED)
    return str(cfg.ckpt)


def _device(cfg: DictConfig) -> torch.device:
    with reraise_as_user_error("device", ValueError):
        return resolve_device(cfg.device)


def _requested_targets(cfg: DictConfig) -> list[str]:
    """``targets=[...]`` plus what ``benchmark.dtype``, ``benchmark.compile`` and ``quantize=int8`` add."""
    return [*cfg.targets, *shorthand_targets(str(cfg.benchmark.dtype), bool(cfg.benchmark.compile), cfg.quantize.mode)]


def _locate_wrong_fusion(
    targets: list[Target], evaluations: dict[str, TargetEvaluation], loaded: Loaded, dm: ImageDataModule
) -> bool:
    """Whether the train form's check failed, i.e. the fusion itself is wrong; if so, its failure line says which
    block fuses wrong and whose code that is (as training's does), instead of a general advice."""
    train = next((t for t in targets if t.name == "train_form"), None)
    if train is None or loaded.train_form is None:
        return False
    if train.gate.check(outcome_of(train, evaluations[train.name], evaluations[targets[0].name])).passed:
        return False
    example = next(iter(dm.test_dataloader()))[0][:2]
    where = where_fusion_differs(loaded.train_form, example)
    if where is not None and isinstance(train.gate, Equivalence):
        train.gate = dataclasses.replace(train.gate, advice=where)
    return True


@torch.inference_mode()
def _refuse_overflowing_weights(loaded: Loaded, images: torch.Tensor) -> None:
    """Weights that overflow (a run that diverged: 1e21 after a few steps at a huge learning rate) give inf or nan
    logits, and every check after this then fails as a wrong fusion would ("a bug: please report it"): said as
    what it is, before anything is built or exported."""
    for form, model in (("fused model", loaded.fused), ("train form", loaded.train_form)):
        if model is None:
            continue
        logits = model(images.to(next(model.parameters()).device, next(model.parameters()).dtype))
        if bool(torch.isfinite(logits).all()):
            continue
        name, weight = max(
            ((n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point()),
            key=lambda item: float(item[1].detach().abs().nan_to_num(float("inf")).max()) if item[1].numel() else 0.0,
        )
        largest = float(weight.detach().abs().nan_to_num(float("inf")).max())
        raise UserError(
            f"{loaded.source}: the {form}'s logits on the test images are not finite (inf or nan): its weights are "
            f"too large to compute with in float32 (largest |{name}| = {largest:.1e}), as a diverged run's are; "
            "deploy a checkpoint from before it diverged (ckpt=<run>/checkpoints/<file>), or train again with a "
            "lower optimizer.lr"
        )


def _needs_onnx(selection: Selection) -> bool:
    return any(TARGETS[name].needs_onnx for name in selection.names)


def _export(
    fused: torch.nn.Module, example: torch.Tensor, export: DictConfig, out_dir: Path, onnx: bool
) -> dict[str, ExportResult]:
    """The exported files, each checked against the fused model on ``example`` (real test images)."""
    exports = {}
    formats = [name for name, wanted in (("ONNX", onnx), ("torch.export", export.torch_export)) if wanted]
    if formats:
        log.info(f"exporting {' and '.join(formats)}, each checked against the fused model")
    if onnx:
        exports["onnx"] = export_onnx(fused, example, out_dir / "model.onnx", opset=export.opset)
    if export.torch_export:
        exports["torch_export"] = export_program(fused, example, out_dir / "model.pt2")
    return exports


def _benchmark(targets: list[Target], bench: DictConfig, dm: ImageDataModule) -> list[BenchmarkResult]:
    with reraise_as_user_error("benchmark", ValueError):
        return benchmark_targets(
            targets, list(bench.batch_sizes), dm.deploy_info()["size"], float(bench.min_run_time), int(bench.rounds)
        )


def _report(
    loaded: Loaded,
    dm: ImageDataModule,
    device: torch.device,
    cfg: DictConfig,
    targets: list[Target],
    evaluations: dict[str, TargetEvaluation],
    selection: Selection,
    benchmark: list[BenchmarkResult],
    exports: dict[str, ExportResult],
    machine: Machine,
) -> DeployReport:
    reference = evaluations[targets[0].name]
    out_dir = Path(cfg.paths.output_dir)
    # the training run's test accuracy, and on how many images (a batch-limited test, or other data, differ)
    recorded_acc = loaded.recorded.get("test_acc")
    recorded_images = loaded.recorded.get("test_images") if recorded_acc is not None else None
    return DeployReport(
        checkpoint=str(loaded.source),
        source_kind=loaded.kind,
        weights_chosen_because=loaded.chosen_because,
        dataset=dm.hparams["dataset"],
        num_test_images=reference.num_images,
        recorded_test_acc=recorded_acc,
        recorded_test_images=recorded_images if isinstance(recorded_images, int) else None,
        model=loaded.spec,
        device=str(device),
        comparison_precision=COMPARISON_PRECISION,
        tolerance=Tolerance(float(cfg.tolerance.atol), float(cfg.tolerance.rtol)),
        targets=[TargetReport.of(t, evaluations[t.name], reference, benchmark) for t in targets],
        skipped_targets=selection.skipped,
        benchmark=benchmark,
        exports=exports,
        machine=machine,
        report_path=str(out_dir / "report.json"),
        data_warnings=[
            w
            for w in (
                accuracy_warning(reference.accuracy, recorded_acc),
                # as the training summary says it: these accuracies are not independent of the choice of checkpoint
                f"the test images are {dm.test_split_note}" if dm.test_split_note else None,
            )
            if w
        ],
    )


def raise_failed_checks(report: DeployReport) -> None:
    """Exit 2 with the most fundamental failed check: equivalence, then export parity, then an accuracy drop."""
    failures = report.failures()
    if failures:
        more = f" ({len(failures) - 1} more failed check(s) in the report)" if len(failures) > 1 else ""
        raise UserError(f"{failures[0]}; see {report.report_path}{more}")


def _publish(report: DeployReport, cfg: DictConfig) -> None:
    """report.json, plot.png and the loggers, all from the same report."""
    # the layout of every target timed, as they ran (a registered variant may set its own)
    layouts = {r.channels_last for r in report.benchmark}
    layout = f"channels_last={layouts.pop()}" if len(layouts) == 1 else "channels_last per target (report.json)"
    title = f"{report.device}, {layout}, {report.machine.threads} CPU thread(s)"
    plot = plot_benchmark(report.benchmark, Path(report.report_path).with_name("plot.png"), title)
    report.plot_path = None if plot is None else str(plot)
    write_report(report)
    _log_report(report, cfg)


def _numbers(prefix: str, value: Any) -> dict[str, float]:
    """The report's numeric leaves as flat ``deploy/a/b`` metrics (lists of benchmark rows by target and batch)."""
    if isinstance(value, bool) or value is None:
        return {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)}
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _numbers(f"{prefix}/{key}", item).items()}
    if isinstance(value, list) and all(isinstance(r, dict) and "target" in r for r in value):
        rows = ((f"{prefix}/{r['target']}/batch{r.get('batch_size')}", r) for r in value)
        return {k: v for row_prefix, r in rows for k, v in _numbers(row_prefix, r).items()}
    return {}


def _log_report(report: DeployReport, cfg: DictConfig) -> None:
    """Send the report to the loggers of ``logger=...`` (none by default)."""
    from ..training import instantiate_group

    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:
        return
    data = report.to_dict()
    numbers = {
        k: v
        for key in (
            "accuracy",
            "correct",
            "disagreements",
            "max_abs_logit_diff",
            "speedup",
            "speedup_vs_plain_vgg",
            "targets",
            "benchmark",
            "exports",
        )
        for k, v in _numbers(f"deploy/{key}", data.get(key)).items()
    }
    for logger in loggers:
        logger.log_hyperparams(
            {
                "checkpoint": data["checkpoint"],
                "dataset": data["dataset"],
                "model": data["model"],
                "tolerance": data["tolerance"],
            }
        )
        logger.log_metrics(numbers, step=0)
        logger.finalize("success")
