"""INT8 figures: RepVGG-A0 vs QARepVGG-A0 (or any --blocks), trained briefly, then deploy.py quantize=int8 (CPU).

    python benchmarks/int8.py [--epochs 3] [--data demo|cifar-format] [--batch-sizes 1 32 256] [--min-run-time 3]
        [--blocks repvgg qarepvgg linear_add] [--out logs/int8-bench]

``demo``: the embedded digits. ``cifar-format``: generated files in the official cifar-10-batches-py format (a
learnable colour cue; the accuracy is not CIFAR-10's). Each model is trained with train.py and deployed with deploy.py
(exactly what a user runs); the tables are read back from report.json: fp32 and INT8 test accuracy and the drop, then
throughput of every runtime (torch eager train form / fused / plain-VGG limit, ONNX Runtime fp32 and INT8) with the
INT8 / fused-eager ratio as median (min..max) over the interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, args: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0, 2):  # 2: deploy refused the INT8 model (drop over max_drop); the report is kept
        sys.exit(f"{script} failed:\n{proc.stderr[-3000:]}")


def data_overrides(data: str, out: Path) -> list[str]:
    """train.py overrides for ``demo`` (the digits) or ``cifar-format`` (generated official-format files in ``out``)."""
    if data == "demo":
        return ["experiment=demo"]
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import write_fake_cifar

    write_fake_cifar(out / "data", "cifar10", per_batch=240, n_test=400)
    return [
        "experiment=demo",
        "data=cifar10",
        f"data.data_dir={out / 'data'}",
        "data.val_size=200",
        "data.num_workers=0",
        "data.batch_size=64",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data", choices=["demo", "cifar-format"], default="demo")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--min-run-time", type=float, default=3.0)
    p.add_argument("--no-benchmark", action="store_true")
    p.add_argument("--blocks", nargs="+", default=["repvgg", "qarepvgg"])
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "int8-bench")
    args = p.parse_args()
    data = data_overrides(args.data, args.out)
    reports = {}
    for block in args.blocks:
        run_dir = args.out / f"{args.data}-{block}"
        run(
            "train.py",
            [
                *data,
                "model=repvgg_a0",
                f"model.block={block}",
                f"trainer.max_epochs={args.epochs}",
                "test=false",
                f"hydra.run.dir={run_dir}/train",
            ],
        )
        bench = [
            f"benchmark.batch_sizes=[{','.join(map(str, args.batch_sizes))}]",
            f"benchmark.min_run_time={args.min_run_time}",
            "benchmark.rounds=3",
        ]
        run(
            "deploy.py",
            [
                f"ckpt={run_dir}/train",
                "quantize=int8",
                "device=cpu",
                "export.torch_export=false",
                *(["benchmark.enabled=false"] if args.no_benchmark else bench),
                f"hydra.run.dir={run_dir}/deploy",
            ],
        )
        reports[block] = json.loads((run_dir / "deploy" / "report.json").read_text())
    first = next(iter(reports.values()))
    print(f"# {args.data}, A0 layout, {args.epochs} epochs, {first['num_test_images']} test images")
    print("| block | fp32 accuracy | INT8 accuracy | drop (points) | INT8 predictions differing | calibration |")
    print("|---|---|---|---|---|---|")
    for block, r in reports.items():
        q = r["int8"]
        print(
            f"| {block} | {q['fp32_accuracy']:.2%} | {q['accuracy']:.2%} | {q['accuracy_drop']:.2f} | "
            f"{q['disagreements_vs_fp32']} | {q['method']}, {q['calibration_images']} images, "
            f"reduce_range={q['reduce_range']} |"
        )
    if args.no_benchmark:
        return
    print(f"\n# throughput (images/s, {first['benchmark'][0]['device']}, {first['benchmark'][0]['threads']} threads)")
    print(
        "| block | batch | train form | fused | plain VGG | ORT fp32 | ORT INT8 | INT8 / fused eager "
        "| INT8 / ORT fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for block, r in reports.items():
        by = {(b["target"], b["batch_size"]): b["throughput_ips"] for b in r["benchmark"]}
        for bs in args.batch_sizes:
            fused_ratio, ort_ratio = (
                r["int8"]["speedup_vs_fp32"][str(bs)],
                r["int8"]["speedup_vs_onnxruntime_fp32"][str(bs)],
            )
            cells = [
                f"{by.get((form, bs), float('nan')):.0f}"
                for form in ("train_form", "fused", "plain_vgg", "onnxruntime_fp32", "onnxruntime_int8")
            ]
            ratio = [f"{x['median']:.2f}x ({x['min']:.2f}..{x['max']:.2f})" for x in (fused_ratio, ort_ratio)]
            print(f"| {block} | {bs} | {' | '.join(cells)} | {' | '.join(ratio)} |")


if __name__ == "__main__":
    main()
