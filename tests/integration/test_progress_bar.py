"""The progress bar redraws every few steps (each redraw reads logged values back and formats them), and turning
it off with trainer.enable_progress_bar=false still builds a trainer."""

from pathlib import Path

from helpers import compose_config
from lightning.pytorch.callbacks import ProgressBar

from reparam.callbacks import ConsoleProgressBar
from reparam.training import build_components


def test_the_default_bar_redraws_every_20_steps(tmp_path: Path) -> None:
    _, _, trainer = build_components(compose_config("train", ["trainer.accelerator=cpu"], run_dir=tmp_path))
    bar = trainer.progress_bar_callback
    assert isinstance(bar, ConsoleProgressBar) and bar.refresh_rate == 20


def test_no_progress_bar_drops_the_configured_one(tmp_path: Path) -> None:
    cfg = compose_config("train", ["trainer.accelerator=cpu", "++trainer.enable_progress_bar=false"], run_dir=tmp_path)
    _, _, trainer = build_components(cfg)  # Lightning refuses a bar callback with enable_progress_bar=False
    assert trainer.progress_bar_callback is None
    assert not any(isinstance(c, ProgressBar) for c in trainer.callbacks)
