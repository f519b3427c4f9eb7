"""Inference speed of RepVGG train form vs fused form vs a plain VGG of the same shape.

    python benchmarks/inference.py --variant A0 --batch-sizes 1 32 256 [--device auto] [--channels-last]
        [--compile] [--dtype float32|bfloat16|float16] [--threads N] [--min-run-time 2]

Random weights with randomized BN statistics (speed does not depend on the values). The three networks are deploy
targets (reparam.deploy.targets.TorchTarget) in the same precision, timed round-robin like deploy.py does. Prints a
markdown table: median latency, IQR, throughput, speedup over the train form, share of the plain-VGG limit.
"""

from __future__ import annotations

import argparse

import torch

from reparam import reparameterize_model
from reparam.deploy.benchmark import benchmark_targets
from reparam.deploy.gates import Reference
from reparam.deploy.load import plain_vgg_like
from reparam.deploy.targets import TorchTarget
from reparam.device import resolve_device
from reparam.models import build_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="A0")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--min-run-time", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    train_form = build_model({"variant": args.variant}).eval()
    fused = reparameterize_model(train_form)
    networks = {"train_form": train_form, "fused": fused, "plain_vgg": plain_vgg_like(fused)}
    targets = [
        TorchTarget(
            net,
            device,
            Reference(),
            dtype=DTYPES[args.dtype],
            channels_last=args.channels_last,
            compiled=args.compile,
            name=name,
            form=name,
        )
        for name, net in networks.items()
    ]
    results = benchmark_targets(targets, args.batch_sizes, min_run_time=args.min_run_time, rounds=args.rounds)
    by = {(r.target, r.batch_size): r for r in results}
    r0 = results[0]
    print(
        f"# RepVGG-{args.variant}, {r0.device}, torch {torch.__version__}, {r0.threads} threads, {args.dtype}, "
        f"channels_last={args.channels_last}, compile={args.compile}"
    )
    print(
        "| target | batch | latency median (ms) | IQR (ms) | throughput (img/s) | vs train form | vs plain VGG "
        "| params | GFLOPs/img |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        base = by[("train_form", r.batch_size)].throughput_ips
        limit = by[("plain_vgg", r.batch_size)].throughput_ips
        print(
            f"| {r.target} | {r.batch_size} | {r.latency_ms_median:.2f} | {r.latency_ms_iqr:.2f} "
            f"| {r.throughput_ips:.0f} | {r.throughput_ips / base:.2f}x | {r.throughput_ips / limit:.1%} "
            f"| {r.params / 1e6:.2f}M | {r.flops_per_image / 1e9:.3f} |"
        )


if __name__ == "__main__":
    main()
