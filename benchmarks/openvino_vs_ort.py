"""OpenVINO against ONNX Runtime on the same exported files (fp32 and static INT8), on the CPU.

    pip install openvino
    python benchmarks/openvino_vs_ort.py --run <deploy run dir> [--batch-sizes 1 32 256] [--min-run-time 3] \
        [--threads N]

The deploy run (``deploy.py ckpt=<run> quantize=int8``) provides model.onnx and model.int8.onnx (QDQ); both runtimes
load the same two files. OpenVINO runs as one more deploy target (a class here, not registered): every target goes
through the test split against the fused fp32 model and through deploy's round-robin benchmark, so the accuracy and
the ratios (median and min..max over the interleaved rounds) are measured exactly as deploy.py measures them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from reparam.deploy.benchmark import benchmark_targets
from reparam.deploy.data import deploy_datamodule
from reparam.deploy.evaluate import evaluate_targets
from reparam.deploy.gates import Reference
from reparam.deploy.load import load_for_deploy
from reparam.deploy.targets import OnnxRuntimeTarget, Target, TorchTarget
from reparam.deploy.timing import ratios
from reparam.device import place


class OpenVinoTarget(Target):
    """An ONNX file compiled by OpenVINO for the CPU (latency hint, ``threads`` inference threads).

    ``f32=True`` asks for float32 arithmetic (``INFERENCE_PRECISION_HINT=f32``); without it OpenVINO picks its own,
    which is bfloat16 on CPUs with AVX512_BF16 or AMX: another precision, reported as such.
    """

    runtime = "openvino"

    def __init__(self, path: Path, threads: int, name: str, int8: bool, f32: bool = True) -> None:
        import openvino as ov

        self.name, self.device, self.gate = name, torch.device("cpu"), Reference()
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if f32:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        core = ov.Core()
        self.model = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.model.create_infer_request()
        hint = self.model.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        arithmetic = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}[hint]
        self.precision = f"int8+{arithmetic}" if int8 and arithmetic != "fp32" else "int8" if int8 else arithmetic

    def prepare(self, images: torch.Tensor) -> np.ndarray:
        return place(images, "cpu", torch.float32).contiguous().numpy()

    def forward(self, prepared: np.ndarray) -> np.ndarray:
        return self.request.infer({0: prepared})[0]


def onnxruntime(path: Path, threads: int, name: str, precision: str) -> OnnxRuntimeTarget:
    target = OnnxRuntimeTarget(path, threads, Reference())
    target.name, target.precision = name, precision
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a deploy.py run directory with model.onnx, model.int8.onnx")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--min-run-time", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    import openvino

    torch.set_num_threads(args.threads)
    report = json.loads((args.run / "report.json").read_text())
    loaded = load_for_deploy(report["checkpoint"])
    dm = deploy_datamodule(loaded, {})
    cpu = torch.device("cpu")
    targets = [
        TorchTarget(loaded.fused, cpu, Reference(), name="fused"),
        onnxruntime(args.run / "model.onnx", args.threads, "onnxruntime_fp32", "fp32"),
        OpenVinoTarget(args.run / "model.onnx", args.threads, "openvino_fp32", int8=False),
        OpenVinoTarget(args.run / "model.onnx", args.threads, "openvino_default", int8=False, f32=False),
        onnxruntime(args.run / "model.int8.onnx", args.threads, "onnxruntime_int8", "int8"),
        OpenVinoTarget(args.run / "model.int8.onnx", args.threads, "openvino_int8", int8=True),
    ]
    evaluations = evaluate_targets(targets, dm.test_dataloader())
    results = benchmark_targets(targets, args.batch_sizes, dm.deploy_info()["size"], args.min_run_time, args.rounds)
    print(
        f"# {report['checkpoint']} ({report['model'].get('widths') or report['model'].get('variant')}), "
        f"{evaluations['fused'].num_images} test images, {args.threads} thread(s), openvino {openvino.__version__}"
    )
    print(
        "| target | accuracy | differs from fused fp32 | max abs logit diff | "
        + " | ".join(f"img/s batch {b}" for b in args.batch_sizes)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(args.batch_sizes))
    by = {(r.target, r.batch_size): r.throughput_ips for r in results}
    for target in targets:
        e = evaluations[target.name]
        differs, diff = (
            ("-", "-") if e.comparison is None else (e.comparison.disagreements, f"{e.comparison.max_abs_diff:.1e}")
        )
        print(
            f"| {target.name}: {target.label} | {e.accuracy:.2%} | {differs} | {diff} | "
            + " | ".join(f"{by[(target.name, b)]:.0f}" for b in args.batch_sizes)
            + " |"
        )
    print("\n| ratio (median, min..max over rounds) | " + " | ".join(f"batch {b}" for b in args.batch_sizes) + " |")
    print("|---|" + "---|" * len(args.batch_sizes))
    for numerator, denominator in (
        ("openvino_fp32", "onnxruntime_fp32"),
        ("openvino_default", "onnxruntime_fp32"),
        ("openvino_int8", "onnxruntime_int8"),
    ):
        ratio = ratios(results, numerator, denominator)
        print(f"| {numerator} / {denominator} | " + " | ".join(ratio[b].describe() for b in args.batch_sizes) + " |")


if __name__ == "__main__":
    main()
