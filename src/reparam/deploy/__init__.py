"""Deployment: load either form safely, run every target over the test split, benchmark, export, report."""

from .benchmark import benchmark_targets
from .console import print_deploy_summary
from .evaluate import TargetEvaluation, evaluate_targets
from .export import ExportResult, export_onnx, export_program
from .load import Loaded, load_for_deploy, plain_vgg_like
from .report import DeployReport, TargetReport
from .run import deploy, raise_failed_checks
from .targets import TARGETS, Target, register_target
from .timing import BenchmarkResult, Ratio, count_flops, ratios

__all__ = [
    "TARGETS",
    "BenchmarkResult",
    "DeployReport",
    "ExportResult",
    "Loaded",
    "Target",
    "TargetEvaluation",
    "TargetReport",
    "benchmark_targets",
    "count_flops",
    "deploy",
    "evaluate_targets",
    "export_onnx",
    "export_program",
    "load_for_deploy",
    "plain_vgg_like",
    "print_deploy_summary",
    "raise_failed_checks",
    "Ratio",
    "ratios",
    "register_target",
]
