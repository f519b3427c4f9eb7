"""PT2E (torchao, x86 Inductor quantizer) vs ONNX Runtime static INT8 on the same fused model (CPU).

    python benchmarks/int8_pt2e.py --run logs/int8-bench/demo-qarepvgg [--batch-sizes 1 32 256] [--calibration 512]

Needs `pip install torchao` and a C++ compiler (Inductor compiles the INT8 kernels). Uses the run's fused/ folder and
the deploy run's model.int8.onnx written by `python benchmarks/int8.py`; both INT8 models are calibrated on the same
training-split images and evaluated on the whole test split; throughput is timed round-robin with the fused model in
torch eager (3 rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tbench

from reparam.artifact import read_fused_artifact
from reparam.data import ImageDataModule
from reparam.deploy.quantize import OrtModel


def pt2e_int8(model: torch.nn.Module, calibration: torch.Tensor) -> torch.nn.Module:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    batch = torch.export.Dim("batch", min=1, max=4096)
    exported = torch.export.export(model.eval(), (calibration[:32],), dynamic_shapes=({0: batch},)).module()
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for start in range(0, len(calibration), 32):
            prepared(calibration[start : start + 32])
    return convert_pt2e(prepared)


@torch.no_grad()
def accuracy(model, loader) -> float:  # noqa: ANN001
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("logs/int8-bench/demo-qarepvgg"))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--calibration", type=int, default=512)
    args = p.parse_args()
    artifact = read_fused_artifact(args.run / "train" / "fused")
    data = artifact.config["data"]
    dm = ImageDataModule(
        data["dataset"], data["data_dir"], val_size=data["val_size"], num_workers=0, eval_batch_size=256
    )
    dm.setup()
    calibration = dm.calibration_images(args.calibration)
    fused = artifact.model.eval()
    start = time.perf_counter()
    quantized = pt2e_int8(fused, calibration)
    with torch.no_grad():
        compiled = torch.compile(quantized)
        compiled(calibration[:32])
    prep = time.perf_counter() - start
    ort = OrtModel(args.run / "deploy" / "model.int8.onnx")
    forms = {"fused eager fp32": fused, "PT2E INT8 (inductor)": compiled, "ORT INT8": ort}
    print(f"# {args.run}, {torch.get_num_threads()} threads; PT2E quantize + compile + first call {prep:.0f} s")
    print("| form | test accuracy |")
    print("|---|---|")
    for name, model in forms.items():
        print(f"| {name} | {accuracy(model, dm.test_dataloader()):.2%} |")
    print(
        "\n| batch | fused eager img/s | PT2E INT8 img/s | ORT INT8 img/s | PT2E / fused | ORT / fused | ORT / PT2E |"
    )
    print("|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for bs in args.batch_sizes:
            x = torch.randn(bs, 3, 32, 32)
            for model in forms.values():
                for _ in range(3):
                    model(x)  # warm-up (PT2E recompiles for a new batch size)
            rates = {name: [] for name in forms}
            for _ in range(3):
                for name, model in forms.items():
                    m = tbench.Timer("m(x)", globals={"m": model, "x": x}).blocked_autorange(min_run_time=1.0)
                    rates[name].append(bs / m.median)
            f, q, o = (rates[n] for n in forms)

            def ratio(a, b):  # noqa: ANN001, ANN202
                r = [i / j for i, j in zip(a, b, strict=True)]
                return f"{statistics.median(r):.2f}x ({min(r):.2f}..{max(r):.2f})"

            print(
                f"| {bs} | {statistics.median(f):.0f} | {statistics.median(q):.0f} | {statistics.median(o):.0f} | "
                f"{ratio(q, f)} | {ratio(o, f)} | {ratio(o, q)} |"
            )


if __name__ == "__main__":
    main()
