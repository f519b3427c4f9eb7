"""How long reparameterize_model takes on the RepVGG family (CPU), and how exact it is.

    python benchmarks/convert_speed.py [--variants A0 B0] [--threads N]

Prints one row a variant: median wall time of a full conversion (deep copy + fold of every block,
float64 arithmetic), the fused parameter count, and the float32 equivalence on random inputs.
"""

from __future__ import annotations

import argparse
import platform

import torch
import torch.utils.benchmark as tbench

from reparam import reparameterize_model, verify_equivalence
from reparam.models import VARIANTS, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=sorted(VARIANTS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads")
    print(
        "| variant | train-form params | fused params | convert median (ms) | IQR (ms) | max abs diff fp32 "
        "| argmax agreement |"
    )
    print("|---|---|---|---|---|---|---|")
    for variant in args.variants:
        model = build_model({"variant": variant}).eval()
        timer = tbench.Timer(
            "reparameterize_model(model)", globals={"reparameterize_model": reparameterize_model, "model": model}
        )
        m = timer.blocked_autorange(min_run_time=2.0)
        fused = reparameterize_model(model)
        report = verify_equivalence(model, fused, torch.randn(32, 3, 32, 32))
        n_train = sum(p.numel() for p in model.parameters())
        n_fused = sum(p.numel() for p in fused.parameters())
        print(
            f"| {variant} | {n_train / 1e6:.2f}M | {n_fused / 1e6:.2f}M | {m.median * 1e3:.1f} | {m.iqr * 1e3:.1f} "
            f"| {report.max_abs_diff:.2e} | {report.argmax_agreement:.0%} |"
        )


if __name__ == "__main__":
    main()
