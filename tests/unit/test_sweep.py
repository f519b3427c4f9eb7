"""Ranking the runs of a sweep: best first in the metric's own direction, missing values last."""

from reparam.sweep import rank_runs


def runs(**values: float | None) -> list[dict]:
    return [{"job": i, "summary": {} if v is None else {"m": v, "best_val_acc": v, "fusion_fp32_max_abs_diff": v}}
            for i, v in enumerate(values.values())]


def jobs(ranked: list[dict]) -> list[int]:
    return [r["job"] for r in ranked]


def test_accuracy_ranks_highest_first_and_missing_last() -> None:
    assert jobs(rank_runs(runs(a=0.5, b=None, c=0.9, d=0.0), "best_val_acc")) == [2, 0, 3, 1]


def test_fusion_error_ranks_lowest_first() -> None:
    assert jobs(rank_runs(runs(a=1e-6, b=None, c=0.0, d=3e-5), "fusion_fp32_max_abs_diff")) == [2, 0, 3, 1]


def test_no_metric_keeps_job_order() -> None:
    assert jobs(rank_runs(runs(a=0.1, b=0.9), None)) == [0, 1]
