"""benchmarks/train_throughput.py: ratio and per-step overhead arithmetic, and a toy run of every block kind (the
script the GPU check runs; figures from a toy run mean nothing, only that every row is measured)."""

import sys

import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import train_throughput  # noqa: E402


def test_overhead_is_the_step_time_difference_in_milliseconds() -> None:
    row = train_throughput.Row("linear_add", "fast", 8, plain=[100.0, 200.0], template=[50.0, 200.0])
    assert row.ratios == [0.5, 1.0]
    assert row.overheads_ms == pytest.approx([80.0, 0.0])  # 8 images: 80 ms vs 160 ms a step, then equal
    assert (
        row.markdown()
        == "| linear_add | fast | 150 (100..200) | 125 (50..200) | 0.750 (0.500..1.000) | 40.00 (0.00..80.00) |"
    )


def test_unknown_block_kind_is_one_clear_error(capsys) -> None:
    with pytest.raises(SystemExit):
        train_throughput.parse_args(["--blocks", "repvgg,nope"])
    assert "unknown block kind 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_every_block_kind_and_preset_gets_a_row(capsys) -> None:
    rows = train_throughput.main(
        [
            "--model",
            "tiny",
            "--batch-size",
            "4",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--workers",
            "0",
            "--presets",
            "fast,compiled",
            "--compile-backend",
            "aot_eager",
            "--progress-refresh",
            "1",
        ]
    )
    assert {(r.block, r.preset) for r in rows} == {
        (b, p) for b in train_throughput.BLOCKS for p in ("fast", "compiled")
    }
    assert all(r.plain[0] > 0 and r.template[0] > 0 for r in rows)
    table = capsys.readouterr().out
    assert table.count("\n| ") == 2 * len(train_throughput.BLOCKS) + 1  # header + one row each, no progress bar text


def test_lightnings_loop_alone_has_no_callback_logger_or_checkpointing_of_the_template() -> None:
    """The floor step_ablation.py measures the template against: the module in Lightning's loop, nothing else."""
    import lightning as L

    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, module) -> None:
            seen["callbacks"] = [type(c).__name__ for c in trainer.callbacks]
            seen["logger"], seen["bar"] = trainer.logger, trainer.progress_bar_callback
            seen["checkpoint"] = trainer.checkpoint_callback

    args = train_throughput.parse_args(
        ["--model", "micro", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--workers", "0"]
    )
    preset = train_throughput.PRESETS["fast"]
    rate = train_throughput.template_throughput(
        train_throughput.network_spec(args, "repvgg"),
        train_throughput.datamodule(args, preset),
        args,
        preset,
        extra_callbacks=[Probe()],
        template_parts=False,
    )
    assert rate > 0
    assert seen == {"callbacks": ["StepTimer", "Probe"], "logger": None, "bar": None, "checkpoint": None}


@pytest.mark.slow
def test_step_ablation_measures_every_variant(monkeypatch, capsys) -> None:
    import step_ablation

    argv = "step_ablation.py --model micro --batch-size 4 --steps 2 --warmup 1 --repeats 1 --workers 0 --blocks repvgg"
    monkeypatch.setattr(sys, "argv", [*argv.split(), "--presets", "fast", "--progress-refresh", "0"])
    step_ablation.main()
    table = capsys.readouterr().out
    for variant in ["plain loop", *step_ablation.VARIANTS]:
        assert f"| fast | {variant} | " in table, table
