"""Accuracy of every block kind at equal epochs, with the fusion error and the INT8 drop (CPU).

    python benchmarks/zoo_accuracy.py [--runs repvgg linear_add ...] [--seeds 0 1] [--epochs 10]
        [--data demo|cifar-format] [--model repvgg_tiny] [--no-int8] [--out logs/zoo-accuracy]

Each run is what a user types: ``train.py experiment=demo model.block=<kind> seed=<s> trainer.max_epochs=<E>``, then
``deploy.py ckpt=<run> quantize=int8`` (no speed benchmark, no exports but the ONNX INT8 needs). A run is a kind or
``<kind>:<override>,<override>`` (e.g. ``linear_add:+model.block_options.trainable_scales=false``) to compare
options. ``demo``: the embedded digits (359 test images). ``cifar-format``: generated files in the official
cifar-10-batches-py format with a colour cue (a pipeline check; its accuracy is not CIFAR-10's).

Printed: per run, the test accuracy of every seed and their mean, the difference to the first run (per seed, same
seed = same data order and init stream), the fusion error recorded by the reparameterize callback (max over seeds,
fp32 and fp64, on validation images) and the INT8 drop (deploy.py, minmax calibration). No times: training speed
is zoo.py --training-cost's job (round-robin in one process), not that of separate runs on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from int8 import data_overrides, run  # noqa: E402  (the same train/deploy runner and data options)


def one_run(spec: str, seed: int, args: argparse.Namespace, data: list[str]) -> dict:
    kind, _, extra = spec.partition(":")
    run_dir = args.out / f"{args.data}-{spec.replace(':', '_').replace('=', '-').replace(',', '_')}-seed{seed}"
    run(
        "train.py",
        [
            *data,
            f"model={args.model}",
            f"model.block={kind}",
            *filter(None, extra.split(",")),
            f"seed={seed}",
            f"trainer.max_epochs={args.epochs}",
            f"hydra.run.dir={run_dir}/train",
        ],
    )
    summary = json.loads((run_dir / "train" / "summary.json").read_text())
    result = {
        "test_acc": summary["test_acc"],
        "fp32": summary["fusion_fp32_max_abs_diff"],
        "fp64": summary["fusion_fp64_max_abs_diff"],
        "int8_drop": None,
    }
    if args.int8:
        run(
            "deploy.py",
            [
                f"ckpt={run_dir}/train",
                "quantize=int8",
                "device=cpu",
                "benchmark.enabled=false",
                "export.torch_export=false",
                f"hydra.run.dir={run_dir}/deploy",
            ],
        )
        report = json.loads((run_dir / "deploy" / "report.json").read_text())
        result["int8_drop"] = report["int8"]["accuracy_drop"]
        result["disagreements"] = report["disagreements"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=["repvgg", "qarepvgg", "acnet", "dbb", "mobileone", "linear_add"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data", choices=["demo", "cifar-format"], default="demo")
    p.add_argument("--model", default="repvgg_tiny", help="a model config: repvgg_tiny (the demo's), repvgg_a0, ...")
    p.add_argument("--no-int8", dest="int8", action="store_false")
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "zoo-accuracy")
    args = p.parse_args()
    data = data_overrides(args.data, args.out)
    results: dict[str, list[dict]] = {spec: [] for spec in args.runs}
    for seed in args.seeds:  # every run once per seed, in turn
        for spec in args.runs:
            results[spec].append(one_run(spec, seed, args, data))
            print(f"# done {spec} seed {seed}: {results[spec][-1]}", file=sys.stderr, flush=True)
    base = args.runs[0]
    print(f"# {args.data}, model={args.model}, {args.epochs} epochs, seeds {args.seeds}; test accuracy (%) per seed")
    print(
        f"| run | test acc per seed | mean | vs {base} per seed (points) | fusion max diff fp32 | fp64 "
        "| INT8 drop per seed (points) |"
    )
    print("|---|---|---|---|---|---|---|")
    for spec, rows in results.items():
        acc = [100 * r["test_acc"] for r in rows]
        delta = [a - 100 * b["test_acc"] for a, b in zip(acc, results[base], strict=True)]
        drops = "n/a" if not args.int8 else " / ".join(f"{r['int8_drop']:.2f}" for r in rows)
        print(
            f"| {spec} | {' / '.join(f'{a:.2f}' for a in acc)} | {statistics.mean(acc):.2f} "
            f"| {' / '.join(f'{d:+.2f}' for d in delta)} | {max(r['fp32'] for r in rows):.1e} "
            f"| {max(r['fp64'] for r in rows):.1e} | {drops} |"
        )


if __name__ == "__main__":
    main()
