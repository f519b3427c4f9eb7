"""The block zoo on the RepVGG-A0 layout, and auto_fuse on every zoo model (CPU).

    python benchmarks/zoo.py [--rounds 3] [--train-steps 3] [--batch 32] [--kinds repvgg dbb ...] [--no-timm]

Part 1, one row per block kind: train-form and fused params, training images/s (SGD steps, forward + backward),
fused inference images/s (BN statistics measured on the inputs first, so every kind runs on realistic values),
conversion time. The kinds are timed round-robin (every kind once per round, several
rounds) so a noisy shared machine slows them alike; each speed is the median over rounds, and each kind's ratio
to repvgg is given with its min..max over rounds.

Part 2, one row per model: auto_fuse's params before/after, max |diff| in fp32 and fp64 against the unfused model
on realistic activations (BN statistics measured on inputs), and the fuse time.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tbench

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import calibrate_bn  # noqa: E402

from reparam import auto_fuse, reparameterize_model  # noqa: E402
from reparam.models import build_model  # noqa: E402

KINDS = ["repvgg", "qarepvgg", "acnet", "dbb", "mobileone"]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_ips(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return steps * len(x) / (time.perf_counter() - start)


@torch.inference_mode()
def infer_ips(model: torch.nn.Module, x: torch.Tensor) -> float:
    m = tbench.Timer("model(x)", globals={"model": model, "x": x}).blocked_autorange(min_run_time=0.5)
    return len(x) / m.median


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}..{max(values):.2f})"


def zoo_table(kinds: list[str], rounds: int, steps: int, batch: int) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    models, fused, optimizers, convert_ms = {}, {}, {}, {}
    for kind in kinds:
        # BN statistics measured on the inputs: random-init weights alone drive 22 layers of activations toward
        # denormal floats, which CPUs process many times slower, and each kind would be timed on different values
        models[kind] = calibrate_bn(build_model({"variant": "A0", "block": kind}), x).train()
        optimizers[kind] = torch.optim.SGD(models[kind].parameters(), lr=1e-3, momentum=0.9)
        train_ips(models[kind], optimizers[kind], x, y, 1)  # warm-up
        timer = tbench.Timer("f(m)", globals={"f": reparameterize_model, "m": models[kind].eval()})
        convert_ms[kind] = timer.blocked_autorange(min_run_time=1.0).median * 1e3
        fused[kind] = reparameterize_model(models[kind])
        infer_ips(fused[kind], x)  # warm-up
    train_speed = {k: [] for k in kinds}
    infer_speed = {k: [] for k in kinds}
    for _ in range(rounds):  # round-robin: each kind once per round
        for kind in kinds:
            train_speed[kind].append(train_ips(models[kind].train(), optimizers[kind], x, y, steps))
            infer_speed[kind].append(infer_ips(fused[kind], x))
    base = "repvgg" if "repvgg" in kinds else kinds[0]
    print(f"\n## Block zoo on the A0 layout (32x32, 10 classes): batch {batch}, {rounds} rounds x {steps} train steps")
    print("| block | train-form params | train img/s | train vs repvgg | fused params | fused img/s | fused vs repvgg "
          "| convert (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        t_ratio = [a / b for a, b in zip(train_speed[kind], train_speed[base])]
        i_ratio = [a / b for a, b in zip(infer_speed[kind], infer_speed[base])]
        print(f"| {kind} | {n_params(models[kind]) / 1e6:.2f}M | {statistics.median(train_speed[kind]):.1f} "
              f"| {spread(t_ratio)} | {n_params(fused[kind]) / 1e6:.2f}M | {statistics.median(infer_speed[kind]):.0f} "
              f"| {spread(i_ratio)} | {convert_ms[kind]:.0f} |")


def autofuse_row(name: str, model: torch.nn.Module, size: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, size, size)
    calibrate_bn(model, x)
    start = time.perf_counter()
    fused, report = auto_fuse(model, x, verify=False)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        fp32 = float((fused(x) - model(x)).abs().max())
        scale = float(model(x).abs().max())
        model64 = copy.deepcopy(model).double()
        fused64, _ = auto_fuse(model64, x.double(), verify=False)
        fp64 = float((fused64(x.double()) - model64(x.double())).abs().max())
    print(f"| {name} | {size}x{size} | {report.params_before / 1e6:.3f}M | {report.params_after / 1e6:.3f}M "
          f"| {len(report.merged)} | {len(report.skipped)} | {fp32:.1e} | {scale:.1f} | {fp64:.1e} | {seconds:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=KINDS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--no-timm", action="store_true")
    args = p.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    zoo_table(args.kinds, args.rounds, args.train_steps, args.batch)
    print("\n## auto_fuse (eval mode; BN statistics measured on the 8 inputs; fp32 and fp64 max |fused - model|)")
    print("| model | input | params before | params after | convs merged | left alone | max diff fp32 | max |output| "
          "| max diff fp64 | fuse (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        autofuse_row(f"reparam A0 {kind}", build_model({"variant": "A0", "block": kind}), 32)
    autofuse_row("reparam AsymmetricNet (model=custom)", build_model(
        {"arch": "custom", "num_classes": 10, "net": {"_target_": "reparam.models.examples.AsymmetricNet"}}), 32)
    if not args.no_timm:
        import timm

        for name in ("repvgg_a0", "mobileone_s0", "resnet18"):
            autofuse_row(f"timm {name}", timm.create_model(name, pretrained=False, num_classes=10), 64)


if __name__ == "__main__":
    main()
