"""The training epoch's loss and accuracy: accumulated on the device, logged per epoch, the step loss every N steps."""

import csv
import functools

import lightning as L
import pytest
import torch
from helpers import TINY_SPEC
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from reparam.loggers import CSVLogger
from reparam.metrics import TrainingStats
from reparam.module import ClassifierModule


def test_training_stats_match_torchmetrics_accuracy_and_the_size_weighted_mean_loss() -> None:
    g = torch.Generator().manual_seed(0)
    stats, reference = TrainingStats(), MulticlassAccuracy(10, average="micro")
    losses, sizes = [], []
    for n in (8, 8, 3):  # a short last batch: the epoch loss weights batches by their size
        logits, target = torch.randn(n, 10, generator=g), torch.randint(0, 10, (n,), generator=g)
        loss = torch.nn.functional.cross_entropy(logits, target)
        stats.update(logits, target, loss)
        reference.update(logits, target)
        losses.append(loss.item())
        sizes.append(n)
    result = stats.compute()
    assert result.acc.item() == pytest.approx(reference.compute().item(), abs=1e-7)
    assert result.loss.item() == pytest.approx(
        sum(loss * n for loss, n in zip(losses, sizes, strict=True)) / sum(sizes), rel=1e-6
    )
    stats.reset()
    assert stats.update_count == 0 and stats.total.item() == 0


class StepLosses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.slow
def test_a_fit_logs_epoch_loss_and_accuracy_and_the_step_loss_every_n_steps(tmp_path) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(40, 3, 32, 32), torch.randint(0, 10, (40,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # 5 steps an epoch
    module = ClassifierModule(TINY_SPEC, functools.partial(torch.optim.SGD, lr=0.05))
    steps = StepLosses()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        log_every_n_steps=3,
        logger=CSVLogger(tmp_path, name="csv"),
        callbacks=[steps],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    step_rows = [r for r in rows if r.get("train/loss_step")]
    # Lightning writes step values every log_every_n_steps steps (3, 6, 9 of 10): the loss of exactly those steps
    assert [int(r["step"]) for r in step_rows] == [2, 5, 8]
    assert [float(r["train/loss_step"]) for r in step_rows] == pytest.approx(
        [steps.losses[i] for i in (2, 5, 8)], rel=1e-5
    )
    epoch_rows = [r for r in rows if r.get("train/loss_epoch")]
    assert len(epoch_rows) == 2
    for epoch, row in enumerate(epoch_rows):
        losses = steps.losses[5 * epoch : 5 * (epoch + 1)]
        assert float(row["train/loss_epoch"]) == pytest.approx(sum(losses) / len(losses), rel=1e-5)
        acc = float(row["train/acc"])
        assert 0.0 <= acc <= 1.0 and (acc * 40) == pytest.approx(round(acc * 40), abs=1e-4)  # k correct of 40
    assert module.train_stats.update_count == 0  # reset for the next epoch


class ScriptedScores(L.LightningModule):
    """Validation accuracy from a script, one value per epoch; each training epoch takes about ``step_s``."""

    def __init__(self, scores: list[float], step_s: float) -> None:
        super().__init__()
        self.scores, self.step_s = scores, step_s
        self.layer = torch.nn.Linear(2, 2)
        self.epoch_ends: list[float] = []

    def training_step(self, batch, batch_idx):
        import time

        time.sleep(self.step_s)
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", self.scores[self.current_epoch])
        self.log("val/loss", 1.0)

    def on_fit_start(self) -> None:
        import time

        self.fit_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        import time

        self.epoch_ends.append(time.perf_counter() - self.fit_start)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_time_to_best_is_the_end_of_the_epoch_whose_checkpoint_is_kept(tmp_path) -> None:
    """The best checkpoint is saved after the other callbacks' epoch end: time to best was the next epoch's end
    (a new user's demo kept epoch 8 of 10 and was told the time to the end of epoch 9, past the training time)."""
    from reparam.callbacks import BestCheckpoint, SpeedMonitor

    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    module = ScriptedScores([0.1, 0.9, 0.5, 0.9], step_s=0.1)
    speed = SpeedMonitor()
    best = BestCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max", tie_break="val/loss")
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=[best, speed],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, data, data)
    assert best.best_model_path.endswith("epoch=1-step=4.ckpt")  # the tie at epoch 3 keeps epoch 1
    # epochs of two 0.1 s steps: epoch 1's end, not epoch 2's (the module's clock and the callback's differ by
    # the hooks between them, well under a step)
    assert speed.time_to_best_s == pytest.approx(module.epoch_ends[1], abs=0.05)
    assert speed.time_to_best_s < module.epoch_ends[2] - 0.15


def test_a_resumed_runs_summary_says_its_times_count_from_the_resume(capsys) -> None:
    """A resumed run showed 'epochs trained 8' beside a total time of its last 6 epochs, unlabelled (a new user
    read the times as the whole run's)."""
    from reparam.console import print_train_summary
    from reparam.run_summary import TrainSummary

    summary = TrainSummary(
        status="completed", run_dir="r", epochs=8, total_time_s=77.0, time_to_best_s=20.9, resumed_from="r/last.ckpt"
    )
    print_train_summary(summary)
    shown = " ".join(capsys.readouterr().out.split())
    assert "resumed from │ r/last.ckpt" in shown
    for row in ("total time (since resuming)", "time to best epoch (since resuming)", "training images/s (since"):
        assert row in shown
    print_train_summary(TrainSummary(status="completed", run_dir="r", epochs=8, total_time_s=77.0))
    assert "since resuming" not in capsys.readouterr().out


def test_the_training_rate_is_sampled_across_short_epochs_without_their_validation(tmp_path) -> None:
    """every_n_steps counted within an epoch: epochs shorter than it (25 steps against 50) never logged
    speed/images_per_s. Counted over the run, a window spanning an epoch end leaves out the validation between.
    And the validation inside fit was never left out of the epoch's training time (trainer.training is already
    False at on_validation_start): the summary's training images/s counted every epoch's validation."""
    from lightning.pytorch.loggers import CSVLogger as LightningCSV

    from reparam.callbacks import SpeedMonitor

    class SlowValidation(ScriptedScores):
        def validation_step(self, batch, batch_idx):
            import time

            time.sleep(0.3)  # much longer than the training steps: it must not count
            super().validation_step(batch, batch_idx)

    data = DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)  # 3 steps an epoch, 2 images each
    module = SlowValidation([0.1, 0.2, 0.3, 0.4], step_s=0.05)
    speed = SpeedMonitor(every_n_steps=4)
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=[speed],
        logger=LightningCSV(tmp_path, name="csv"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2), data)
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("speed/images_per_s")]
    assert [int(r["step"]) for r in rows] == [4, 8, 12]  # steps 4, 8, 12 of the run's 12, over epoch ends
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    for row in rows:  # 2 images per 0.05 s step: about 40 images/s; with a 0.9 s validation inside, under 10
        assert 25 < float(row["speed/images_per_s"]) <= 41
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        epochs = [float(r["speed/epoch_images_per_s"]) for r in csv.DictReader(f) if r.get("speed/epoch_images_per_s")]
    assert len(epochs) == 4 and all(25 < rate <= 41 for rate in epochs), epochs
    assert speed.train_images == 24 and 25 < speed.train_images_per_s <= 41
