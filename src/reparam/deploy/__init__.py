"""Deployment: load either form safely, evaluate, benchmark, export, report."""

from .benchmark import BenchmarkResult, benchmark_forms, count_flops
from .evaluate import Evaluation, evaluate_forms
from .export import ExportResult, export_onnx, export_program
from .load import Loaded, load_for_deploy, plain_vgg_like
from .run import deploy

__all__ = [
    "BenchmarkResult",
    "Evaluation",
    "ExportResult",
    "Loaded",
    "benchmark_forms",
    "count_flops",
    "deploy",
    "evaluate_forms",
    "export_onnx",
    "export_program",
    "load_for_deploy",
    "plain_vgg_like",
]
