"""The block zoo on the RepVGG-A0 layout, and auto_fuse on every zoo model (CPU).

    python benchmarks/zoo.py [--rounds 3] [--train-steps 3] [--batch 32] [--kinds repvgg dbb ...] [--no-timm]

Part 1, one row per block kind: train-form and fused params, training images/s (SGD steps, forward + backward),
fused inference images/s (BN statistics measured on the inputs first, so every kind runs on realistic values),
conversion time. The kinds are timed round-robin (every kind once per round, several
rounds) so a noisy shared machine slows them alike; each speed is the median over rounds, and each kind's ratio
to repvgg is given with its min..max over rounds.

Part 2, one row per model: auto_fuse's params before/after, max |diff| in fp32 and fp64 against the unfused model
on realistic activations (BN statistics measured on inputs), and the fuse time. A model torch.fx cannot trace (the
linear_add kind computes its conv kernel from parameters) gets a row saying so: it fuses with its own method.

    python benchmarks/zoo.py --training-cost [--batch 128] [--rounds 5] [--train-steps 2] [--kinds ... plain]

The training cost instead, one row per kind on the A0 layout: training images/s (SGD steps, forward + backward +
step, round-robin with every kind once per round, ratio to repvgg as median (min..max) over rounds) and two memory
figures, both measured on one training step in the same process before the timing:
- saved for backward: the distinct tensors autograd keeps from the forward for the backward (parameters and their
  views excluded), found with ``torch.autograd.graph.saved_tensors_hooks``: the activation memory of the step;
- peak step memory: the most memory torch's CPU allocator held at once during one step (forward, backward,
  optimizer step) in allocations made during that step: activations, gradients, temporaries; weights and optimizer
  state that existed before are not counted. From ``torch.profiler`` memory events (``profile_memory=True``).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tbench
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import calibrate_bn, zoo_kinds  # noqa: E402

from reparam import auto_fuse, reparameterize_model  # noqa: E402
from reparam.autofuse import AutoFuseError  # noqa: E402
from reparam.models import build_model  # noqa: E402

KINDS = zoo_kinds()
# --kinds plain: the fused network's training cost (one k x k conv + BN + ReLU per block), as linear_add with only
# its k x k branch (one per-channel scale left): what a block that trains as one conv can reach at best
PLAIN = {"variant": "A0", "block": "linear_add", "block_options": {"use_1x1": False, "use_identity": False}}
MB = 2**20


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_ips(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
) -> float:
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


def saved_for_backward_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of one training forward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    del loss
    return sum(saved.values())


def peak_step_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> int:
    """The most bytes held at once, during one training step, in allocations made during that step (profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_ips(model, optimizer, x, y, 1)
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = [e["args"] for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    # "Total Allocated" counts what the profiler saw allocated and not freed; frees of older blocks are unknown to it
    start = events[0]["Total Allocated"] - events[0]["Bytes"]
    return max(e["Total Allocated"] for e in events) - start


def training_cost_table(kinds: list[str], rounds: int, steps: int, batch: int) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    models, optimizers, saved, peak = {}, {}, {}, {}
    for kind in kinds:
        models[kind], optimizers[kind] = ready_to_train(kind, x, y)
        saved[kind] = saved_for_backward_bytes(models[kind], x, y)
        peak[kind] = peak_step_bytes(models[kind], optimizers[kind], x, y)
    speed = {k: [] for k in kinds}
    for _ in range(rounds):  # round-robin: each kind once per round
        for kind in kinds:
            speed[kind].append(train_ips(models[kind], optimizers[kind], x, y, steps))
    base = "repvgg" if "repvgg" in kinds else kinds[0]
    print(
        f"\n## Training cost on the A0 layout (32x32, 10 classes): batch {batch}, fp32, {rounds} rounds x {steps} "
        "SGD steps"
    )
    print(
        "| block | train-form params | train img/s | train vs repvgg | saved for backward (MiB) | vs repvgg "
        "| peak step memory (MiB) | vs repvgg |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        ratio = [a / b for a, b in zip(speed[kind], speed[base], strict=True)]
        print(
            f"| {kind} | {n_params(models[kind]) / 1e6:.2f}M | {statistics.median(speed[kind]):.1f} | {spread(ratio)} "
            f"| {saved[kind] / MB:.0f} | {saved[kind] / saved[base]:.2f}x | {peak[kind] / MB:.0f} "
            f"| {peak[kind] / peak[base]:.2f}x |"
        )


def ready_to_train(kind: str, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """An A0 of ``kind`` with BN statistics measured on ``x`` and one SGD step taken (warm-up, momentum buffers).

    Measured BN statistics: random-init weights alone drive 22 layers of activations toward denormal floats, which
    CPUs process many times slower, and each kind would be timed on different values.
    """
    spec = PLAIN if kind == "plain" else {"variant": "A0", "block": kind}
    model = calibrate_bn(build_model(spec), x).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    train_ips(model, optimizer, x, y, 1)
    return model, optimizer


def zoo_table(kinds: list[str], rounds: int, steps: int, batch: int) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    models, fused, optimizers, convert_ms = {}, {}, {}, {}
    for kind in kinds:
        models[kind], optimizers[kind] = ready_to_train(kind, x, y)
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
    print(
        "| block | train-form params | train img/s | train vs repvgg | fused params | fused img/s | fused vs repvgg "
        "| convert (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        t_ratio = [a / b for a, b in zip(train_speed[kind], train_speed[base], strict=True)]
        i_ratio = [a / b for a, b in zip(infer_speed[kind], infer_speed[base], strict=True)]
        print(
            f"| {kind} | {n_params(models[kind]) / 1e6:.2f}M | {statistics.median(train_speed[kind]):.1f} "
            f"| {spread(t_ratio)} | {n_params(fused[kind]) / 1e6:.2f}M | {statistics.median(infer_speed[kind]):.0f} "
            f"| {spread(i_ratio)} | {convert_ms[kind]:.0f} |"
        )


def autofuse_row(name: str, model: torch.nn.Module, size: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, size, size)
    calibrate_bn(model, x)
    start = time.perf_counter()
    try:
        fused, report = auto_fuse(model, x, verify=False)
    except AutoFuseError as error:
        print(f"| {name} | {size}x{size} | {n_params(model) / 1e6:.3f}M | not applicable: {str(error)[:90]}... |")
        return
    seconds = time.perf_counter() - start
    with torch.no_grad():
        fp32 = float((fused(x) - model(x)).abs().max())
        scale = float(model(x).abs().max())
        model64 = copy.deepcopy(model).double()
        fused64, _ = auto_fuse(model64, x.double(), verify=False)
        fp64 = float((fused64(x.double()) - model64(x.double())).abs().max())
    print(
        f"| {name} | {size}x{size} | {report.params_before / 1e6:.3f}M | {report.params_after / 1e6:.3f}M "
        f"| {len(report.merged)} | {len(report.skipped)} | {fp32:.1e} | {scale:.1f} | {fp64:.1e} | {seconds:.2f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=KINDS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--no-timm", action="store_true")
    p.add_argument("--training-cost", action="store_true", help="only the training speed and memory table")
    args = p.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    if args.training_cost:
        training_cost_table(args.kinds, args.rounds, args.train_steps, args.batch)
        return
    zoo_table(args.kinds, args.rounds, args.train_steps, args.batch)
    print("\n## auto_fuse (eval mode; BN statistics measured on the 8 inputs; fp32 and fp64 max |fused - model|)")
    print(
        "| model | input | params before | params after | convs merged | left alone | max diff fp32 | max |output| "
        "| max diff fp64 | fuse (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        autofuse_row(f"reparam A0 {kind}", build_model({"variant": "A0", "block": kind}), 32)
    autofuse_row(
        "reparam AsymmetricNet (model=custom)",
        build_model(
            {"arch": "custom", "num_classes": 10, "net": {"_target_": "reparam.models.examples.AsymmetricNet"}}
        ),
        32,
    )
    if not args.no_timm:
        import timm

        for name in ("repvgg_a0", "mobileone_s0", "resnet18"):
            autofuse_row(f"timm {name}", timm.create_model(name, pretrained=False, num_classes=10), 64)


if __name__ == "__main__":
    main()
