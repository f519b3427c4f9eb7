"""What ``python deploy.py`` does: load, evaluate both forms, benchmark, export, report."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..data import ImageDataModule
from ..compare import Tolerance, strict_fp32, tf32_enabled
from ..errors import UserError, reraise_as_user_error
from ..models import RepVGG
from .benchmark import benchmark_forms, ratios, resolve_device, speedups
from .evaluate import evaluate_forms
from .export import export_onnx, export_program
from .load import Loaded, load_for_deploy, plain_vgg_like
from .quantize import OrtModel, quantize_int8
from .report import plot_benchmark, write_report

__all__ = ["deploy", "build_datamodule"]


def build_datamodule(loaded: Loaded, overrides: dict[str, Any]) -> ImageDataModule:
    """The training run's data config, with the command line's non-null ``data.*`` values on top."""
    accepted = inspect.signature(ImageDataModule).parameters
    params = {k: v for k, v in loaded.data.items() if k in accepted}
    params.update({k: v for k, v in overrides.items() if v is not None})
    params.pop("num_classes", None)  # deploy compares the model's class count itself, with its own message
    if "dataset" not in params:
        raise UserError(f"{loaded.source} records no data config; pass data.dataset=cifar10|cifar100|digits (and data.data_dir=/path/to/data for CIFAR)")
    with reraise_as_user_error("data", ValueError, TypeError):
        dm = ImageDataModule(**params)
    dm.setup("test")
    return dm


def deploy(cfg: DictConfig) -> dict[str, Any]:
    if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt in (None, ""):
        raise UserError("ckpt is required: python deploy.py ckpt=<run>/checkpoints/last.ckpt (or ckpt=<run>/fused)")
    out_dir = Path(cfg.paths.output_dir)
    with reraise_as_user_error("device", ValueError):
        device = resolve_device(cfg.device)
    loaded = load_for_deploy(cfg.ckpt)
    dm = build_datamodule(loaded, OmegaConf.to_container(cfg.data, resolve=True))
    if loaded.spec.get("num_classes") != dm.num_classes:
        raise UserError(
            f"{loaded.source} is a {loaded.spec.get('num_classes')}-class model but {dm.hparams.dataset} has "
            f"{dm.num_classes} classes; pass the checkpoint that was trained on it, or data.dataset=cifar10|cifar100|digits"
        )

    forms = {"train_form": loaded.train_form, "fused": loaded.fused} if loaded.train_form is not None else {"fused": loaded.fused}
    tolerance = Tolerance(float(cfg.tolerance.atol), float(cfg.tolerance.rtol))
    with strict_fp32():  # TF32 alone would exceed an fp32 tolerance on Ampere+ GPUs
        evaluation = evaluate_forms(forms, dm.test_dataloader(), device, tolerance)
        precision = "float32, TF32 off" if not tf32_enabled() else "float32 with TF32"
    comparison = evaluation.comparison
    report: dict[str, Any] = {
        "checkpoint": str(loaded.source),
        "source_kind": loaded.kind,
        "weights_chosen_because": loaded.chosen_because,
        "dataset": dm.hparams.dataset,
        "num_test_images": evaluation.num_images,
        "accuracy": {"train_form": evaluation.accuracy.get("train_form"), "fused": evaluation.accuracy["fused"]},
        "correct": {"train_form": evaluation.correct.get("train_form"), "fused": evaluation.correct["fused"]},
        "disagreements": comparison.disagreements if comparison else None,
        "max_abs_logit_diff": comparison.max_abs_diff if comparison else None,
        "max_abs_logit": comparison.max_abs_reference if comparison else None,
        "comparison": comparison.to_dict() if comparison else None,
        "comparison_device": str(device),
        "comparison_precision": precision,
        "recorded_test_acc": loaded.recorded.get("test_acc"),
        "model": loaded.spec,
        "tolerance": {"atol": tolerance.atol, "rtol": tolerance.rtol},
    }

    exports = {}
    example = next(iter(dm.test_dataloader()))[0][: cfg.export.check_batch_size]
    quantize = cfg.get("quantize") or {}
    if cfg.export.onnx or quantize.get("mode"):
        exports["onnx"] = export_onnx(loaded.fused, example, out_dir / "model.onnx", opset=cfg.export.opset)
    if cfg.export.torch_export:
        exports["torch_export"] = export_program(loaded.fused, example, out_dir / "model.pt2")
    report["exports"] = {fmt: r.to_dict() for fmt, r in exports.items()}

    runtimes = {}
    onnx_ok = "onnx" in exports and exports["onnx"].ok
    if onnx_ok and cfg.benchmark.get("onnxruntime", True):
        runtimes["onnxruntime_fp32"] = OrtModel(exports["onnx"].path, cfg.benchmark.threads)
    if quantize.get("mode") == "int8":
        if not onnx_ok:
            raise UserError("quantize=int8 needs the fp32 ONNX export, which failed its parity check; see the report")
        runtimes["onnxruntime_int8"] = _quantize(loaded, dm, exports["onnx"].path, quantize, out_dir, report, cfg)

    bench_cfg = cfg.benchmark
    results = []
    if bench_cfg.enabled:
        bench_forms = dict(forms)
        if isinstance(loaded.fused, RepVGG):  # a custom network has no plain-VGG counterpart
            bench_forms["plain_vgg"] = plain_vgg_like(loaded.fused)
        bench_forms.update(runtimes)
        with reraise_as_user_error("benchmark", ValueError, KeyError):
            results = benchmark_forms(
                bench_forms, list(bench_cfg.batch_sizes), device, bench_cfg.dtype, bench_cfg.channels_last,
                bench_cfg.compile, bench_cfg.threads, bench_cfg.min_run_time, dm.deploy_info()["size"],
                rounds=int(bench_cfg.get("rounds", 3)),
            )
    report["benchmark"] = [r.to_dict() for r in results]
    report["speedup"] = {str(bs): s for bs, s in speedups(results).items()} if "train_form" in forms else {}
    report["speedup_spread"] = {str(bs): r.to_dict() for bs, r in ratios(results, "fused", "train_form").items()}
    report["speedup_vs_plain_vgg"] = {str(bs): s for bs, s in speedups(results, "fused", "plain_vgg").items()}
    if "int8" in report:
        report["int8"]["throughput"] = {str(r.batch_size): r.throughput_ips for r in results
                                        if r.form == "onnxruntime_int8"}
        report["int8"]["speedup_vs_fp32"] = {str(bs): r.to_dict() for bs, r in
                                             ratios(results, "onnxruntime_int8", "fused").items()}
        report["int8"]["speedup_vs_onnxruntime_fp32"] = {
            str(bs): r.to_dict() for bs, r in ratios(results, "onnxruntime_int8", "onnxruntime_fp32").items()}

    report["plot_path"] = str(plot_benchmark(report["benchmark"], out_dir / "plot.png")) if results else None
    report["report_path"] = str(out_dir / "report.json")
    report["equivalent"] = None if comparison is None else bool(
        comparison.passed and report["correct"]["train_form"] == report["correct"]["fused"])
    write_report(report, out_dir)
    _log_report(report, cfg)

    failed_exports = [fmt for fmt, r in exports.items() if not r.ok]
    int8 = report.get("int8")
    if report["equivalent"] is False:
        raise UserError(
            f"the fused model is NOT equivalent to the train form: correct {report['correct']['train_form']} vs "
            f"{report['correct']['fused']}, max |logit diff| {report['max_abs_logit_diff']:.3e} "
            f"(tolerance {cfg.tolerance.atol} + {cfg.tolerance.rtol} x max|logit|); see {report['report_path']}"
        )
    if failed_exports:
        raise UserError(f"export parity failed for {', '.join(failed_exports)}; see {report['report_path']}")
    if int8 is not None and int8["accuracy_drop"] > int8["max_drop"]:
        raise UserError(
            f"INT8 accuracy dropped {int8['accuracy_drop']:.2f} points (fp32 {int8['fp32_accuracy']:.2%} -> INT8 "
            f"{int8['accuracy']:.2%}), more than quantize.max_drop={int8['max_drop']}; train with model.block=qarepvgg, "
            f"whose fused weights quantize well, or try quantize.method=percentile; see {report['report_path']}"
        )
    return report


def _quantize(loaded: Loaded, dm: ImageDataModule, fp32_onnx: str, quantize: DictConfig, out_dir: Path,
              report: dict[str, Any], cfg: DictConfig) -> OrtModel:
    """INT8 model of the fused form, evaluated on the whole test split against the fp32 fused model (CPU)."""
    calibration = dm.calibration_images(int(quantize.calibration_images))
    path = out_dir / "model.int8.onnx"
    with reraise_as_user_error("quantize", ValueError):
        settings = quantize_int8(fp32_onnx, path, calibration, str(quantize.method), quantize.reduce_range)
    int8 = OrtModel(path, cfg.benchmark.threads)
    evaluation = evaluate_forms({"fused": loaded.fused, "int8": int8}, dm.test_dataloader(), torch.device("cpu"))
    fp32_acc, int8_acc = evaluation.accuracy["fused"], evaluation.accuracy["int8"]
    report["int8"] = {
        "accuracy": int8_acc, "fp32_accuracy": fp32_acc, "accuracy_drop": (fp32_acc - int8_acc) * 100,
        "correct": evaluation.correct["int8"], "disagreements_vs_fp32": evaluation.comparison.disagreements,
        "max_abs_logit_diff_vs_fp32": evaluation.comparison.max_abs_diff, "max_drop": float(quantize.max_drop),
        "model_path": str(path), **settings,
    }
    return int8


def _numbers(prefix: str, value: Any) -> dict[str, float]:
    """The report's numeric leaves as flat ``deploy/a/b`` metrics (lists of benchmark rows by form and batch)."""
    if isinstance(value, bool) or value is None:
        return {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)}
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _numbers(f"{prefix}/{key}", item).items()}
    if isinstance(value, list) and all(isinstance(r, dict) and "form" in r for r in value):
        return {k: v for r in value for k, v in _numbers(f"{prefix}/{r['form']}/batch{r.get('batch_size')}", r).items()}
    return {}


def _log_report(report: dict[str, Any], cfg: DictConfig) -> None:
    """Send the report to the loggers of ``logger=...`` (none by default)."""
    from ..training import instantiate_group

    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:
        return
    numbers = {k: v for key in ("accuracy", "correct", "disagreements", "max_abs_logit_diff", "speedup",
                                "speedup_vs_plain_vgg", "benchmark", "exports")
               for k, v in _numbers(f"deploy/{key}", report.get(key)).items()}
    for logger in loggers:
        logger.log_hyperparams({"checkpoint": report["checkpoint"], "dataset": report["dataset"],
                                "model": report["model"], "tolerance": report["tolerance"]})
        logger.log_metrics(numbers, step=0)
        logger.finalize("success")
