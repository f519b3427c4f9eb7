"""Inference speed of RepVGG train form vs fused form vs a plain VGG of the same shape.

    python benchmarks/inference.py --variant A0 --batch-sizes 1 32 256 [--device auto] [--channels-last]
        [--compile] [--dtype float32|bfloat16|float16] [--threads N] [--min-run-time 2]

Random weights with randomized BN statistics (speed does not depend on the values). Prints a
markdown table: median latency, IQR, throughput, speedup over the train form, share of the plain-VGG limit.
"""

from __future__ import annotations

import argparse

import torch


from reparam import reparameterize_model  # noqa: E402
from reparam.deploy.benchmark import benchmark_forms  # noqa: E402
from reparam.deploy.load import plain_vgg_like  # noqa: E402
from reparam.models import build_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="A0")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--min-run-time", type=float, default=2.0)
    args = p.parse_args()

    train_form = build_model({"variant": args.variant}).eval()
    fused = reparameterize_model(train_form)
    forms = {"train_form": train_form, "fused": fused, "plain_vgg": plain_vgg_like(fused)}
    results = benchmark_forms(forms, args.batch_sizes, args.device, args.dtype, args.channels_last, args.compile,
                              args.threads, args.min_run_time)
    by = {(r.form, r.batch_size): r for r in results}
    r0 = results[0]
    print(f"# RepVGG-{args.variant}, {r0.device}, torch {torch.__version__}, {r0.threads} threads, {args.dtype}, "
          f"channels_last={args.channels_last}, compile={args.compile}")
    print("| form | batch | latency median (ms) | IQR (ms) | throughput (img/s) | vs train form | vs plain VGG | params | GFLOPs/img |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        base = by[("train_form", r.batch_size)].throughput_ips
        limit = by[("plain_vgg", r.batch_size)].throughput_ips
        print(f"| {r.form} | {r.batch_size} | {r.latency_ms_median:.2f} | {r.latency_ms_iqr:.2f} | {r.throughput_ips:.0f} "
              f"| {r.throughput_ips / base:.2f}x | {r.throughput_ips / limit:.1%} | {r.params / 1e6:.2f}M "
              f"| {r.flops_per_image / 1e9:.3f} |")


if __name__ == "__main__":
    main()
