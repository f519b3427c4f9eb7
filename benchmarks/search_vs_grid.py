"""A pruned Optuna search against a grid over the same ranges, on the demo: wall time and best validation accuracy.

    python benchmarks/search_vs_grid.py --out /tmp/svg [--trials 16] [--epochs 10] [--search-override O ...]
                                        [-- extra overrides for both...]

Both are ``python train.py -m experiment=demo`` over ``optimizer.lr`` (log scale, 0.01 to 0.5) and
``module.label_smoothing`` (0 to 0.2) with the same epochs: the grid takes sqrt(trials) points of each (16 = 4 x 4),
the search ``--trials`` trials (TPE, seeded, median pruning; ``--search-override`` changes the search alone, e.g.
``--search-override +hparams_search.pruner_options.n_warmup_steps=3`` or ``hparams_search.pruner=hyperband``).
The search runs first, so any warm-up (file cache, cudnn autotuning) favours the grid. Prints one JSON line per run
and the ratio; docs/search.md records the results.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LR, SMOOTHING = (0.01, 0.5), (0.0, 0.2)


def run(name: str, args: list[str], out: Path) -> dict:
    sweep = out / name
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *args, f"hydra.sweep.dir={sweep}"],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    (out / f"{name}.log").write_text(proc.stdout[-20000:] + "\n--- stderr ---\n" + proc.stderr[-20000:])
    report = json.loads((sweep / "sweep_summary.json").read_text())
    best = report["best"] or {}
    return {
        "name": name,
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        "runs": len(report["runs"]),
        "counts": report["counts"],
        "best_val_acc": best.get("value"),
        "best_params": best.get("params"),
        "epochs_trained": sum(r["summary"].get("epochs") or 0 for r in report["runs"]),
        "reproduce": report["reproduce"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--search-override", action="append", default=[], help="an override for the search alone")
    parser.add_argument("--no-grid", action="store_true", help="the search alone (the grid is deterministic on a CPU)")
    parser.add_argument("extra", nargs="*", help="overrides for both, e.g. trainer=gpu")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    side = round(math.sqrt(args.trials))
    lrs = [LR[0] * (LR[1] / LR[0]) ** (i / (side - 1)) for i in range(side)]
    smoothings = [SMOOTHING[0] + (SMOOTHING[1] - SMOOTHING[0]) * i / (side - 1) for i in range(side)]
    common = ["experiment=demo", f"trainer.max_epochs={args.epochs}", "logger=none", *args.extra]
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "common": common,
                "search_overrides": args.search_override,
            }
        ),
        flush=True,
    )
    search = run(
        "search",
        [
            *common,
            "hparams_search=optuna",
            "hparams_search.study_name=demo_lr_ls",
            f"hparams_search.n_trials={args.trials}",
            f"optimizer.lr=tag(log,interval({LR[0]},{LR[1]}))",
            f"module.label_smoothing=interval({SMOOTHING[0]},{SMOOTHING[1]})",
            *args.search_override,
        ],
        args.out,
    )
    print(json.dumps(search), flush=True)
    if args.no_grid:
        return
    grid = run(
        "grid",
        [
            *common,
            "optimizer.lr=" + ",".join(f"{v:.4g}" for v in lrs),
            "module.label_smoothing=" + ",".join(f"{v:.4g}" for v in smoothings),
        ],
        args.out,
    )
    print(json.dumps(grid), flush=True)
    if search["best_val_acc"] is not None and grid["best_val_acc"] is not None:
        print(
            json.dumps(
                {
                    "wall_ratio_search_over_grid": round(search["wall_s"] / grid["wall_s"], 3),
                    "best_val_acc_points_search_minus_grid": round(
                        100 * (search["best_val_acc"] - grid["best_val_acc"]), 2
                    ),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
