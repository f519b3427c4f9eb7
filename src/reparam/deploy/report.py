"""The deploy report: report.json for tools, plot.png for people, a rich table for the console."""

from __future__ import annotations

import os
from pathlib import Path

from rich.table import Table

from ..artifact import atomic_write_json
from ..report import console, pct, text

__all__ = ["write_report", "plot_benchmark", "print_deploy_summary"]


def write_report(report: dict, directory: str | Path) -> Path:
    return atomic_write_json(Path(directory) / "report.json", report)


def plot_benchmark(benchmark: list[dict], path: str | Path) -> Path | None:
    """Latency and throughput against batch size, one line per form (log scales)."""
    if not benchmark:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for form in dict.fromkeys(r["form"] for r in benchmark):
        rows = sorted((r for r in benchmark if r["form"] == form), key=lambda r: r["batch_size"])
        bs = [r["batch_size"] for r in rows]
        ax_lat.plot(bs, [r["latency_ms_median"] for r in rows], marker="o", label=form)
        ax_tp.plot(bs, [r["throughput_ips"] for r in rows], marker="o", label=form)
    sizes = sorted({r["batch_size"] for r in benchmark})
    for ax, label in ((ax_lat, "latency per batch, median (ms)"), (ax_tp, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    first = benchmark[0]
    fig.suptitle(f"{first['device']}, {first['dtype']}, channels_last={first['channels_last']}, compiled={first['compiled']}")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _ratio(r: dict) -> str:
    spread = f"{r['min']:.2f}..{r['max']:.2f}"
    return f"{r['median']:.2f}x ({spread})" if r["measurable"] else f"no measurable difference ({spread})"


def print_deploy_summary(report: dict) -> None:
    acc, correct = report["accuracy"], report["correct"]
    table = Table(title=f"reparam deploy: {report['checkpoint']}", title_justify="left")
    for col in ("", "train form", "fused"):
        table.add_column(col)
    n = report["num_test_images"]
    table.add_row("test accuracy", pct(acc.get("train_form")), pct(acc.get("fused")))
    table.add_row(f"correct / {n}", text(correct.get("train_form")), text(correct.get("fused")))
    if report.get("recorded_test_acc") is not None:
        table.add_row("recorded at training", pct(report["recorded_test_acc"]), "")
    table.add_row("disagreements", "", text(report.get("disagreements")))
    diff = report.get("max_abs_logit_diff")
    table.add_row("max |logit diff|", "", "-" if diff is None else f"{diff:.2e}")
    console.print(table)

    if report["benchmark"]:
        bench = Table(title=f"inference: {report['benchmark'][0]['device']}", title_justify="left")
        for col in ("form", "batch", "latency ms (median)", "IQR ms", "images/s", "params", "MFLOPs/img", "peak MB"):
            bench.add_column(col, justify="right")
        for r in report["benchmark"]:
            peak = r.get("peak_memory_mb")
            params, flops = r.get("params"), r.get("flops_per_image")
            bench.add_row(r["form"], str(r["batch_size"]), f"{r['latency_ms_median']:.3f}", f"{r['latency_ms_iqr']:.3f}",
                          f"{r['throughput_ips']:.0f}", "-" if params is None else f"{params / 1e6:.2f}M",
                          "-" if flops is None else f"{flops / 1e6:.1f}", "-" if peak is None else f"{peak:.0f}")
        console.print(bench)
        if report.get("speedup_spread"):
            console.print("fused / train form (median over rounds, min..max): "
                          + ", ".join(f"batch {bs}: {_ratio(r)}" for bs, r in report["speedup_spread"].items()))
    int8 = report.get("int8")
    if int8:
        console.print(f"INT8 ({int8['method']}, {int8['calibration_images']} calibration images, reduce_range="
                      f"{int8['reduce_range']}): accuracy {pct(int8['accuracy'])} vs fp32 {pct(int8['fp32_accuracy'])} "
                      f"(drop {int8['accuracy_drop']:.2f} points), {int8['disagreements_vs_fp32']} predictions differ; "
                      f"{int8['model_path']}")
        if int8.get("speedup_vs_fp32"):
            console.print("INT8 (ONNX Runtime) / fused fp32 (torch eager): "
                          + ", ".join(f"batch {bs}: {_ratio(r)}" for bs, r in int8["speedup_vs_fp32"].items()))
    for fmt, exp in report.get("exports", {}).items():
        extra = f", {exp['latency_ms_median']:.2f} ms/batch of {exp['batch_size']} in onnxruntime" if exp.get("latency_ms_median") else ""
        console.print(f"export {fmt}: {exp['path']} (max |diff| {exp['max_abs_diff']:.1e}{extra})")
    console.print(f"report: {report['report_path']}")
