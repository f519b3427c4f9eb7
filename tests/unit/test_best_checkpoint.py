"""BestCheckpoint: the best val/acc kept as Lightning keeps it, and of epochs that tie on it, the lowest val/loss."""

from pathlib import Path

import lightning as L
import pytest
import torch

from reparam.callbacks import BestCheckpoint

# scripted validations: epochs 1, 2 and 3 tie on accuracy; epoch 2 has the lowest loss of the three
ACC = [0.5, 0.8, 0.8, 0.8, 0.7]
LOSS = [1.0, 0.5, 0.4, 0.6, 0.3]


class Scripted(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        epoch = self.current_epoch
        self.log("val/acc", ACC[epoch])
        self.log("val/loss", LOSS[epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=2)


def fit(tmp_path: Path, epochs: int, tie_break: str | None, ckpt_path: str | None = None) -> BestCheckpoint:
    best = BestCheckpoint(
        dirpath=tmp_path,
        filename="epoch{epoch:03d}",
        monitor="val/acc",
        mode="max",
        auto_insert_metric_name=False,
        tie_break=tie_break,
    )
    last = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[best, last],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(Scripted(), loader(), loader(), ckpt_path=ckpt_path)
    return best


@pytest.mark.parametrize(("tie_break", "kept"), [("val/loss", "epoch002.ckpt"), (None, "epoch001.ckpt")])
def test_a_tie_on_accuracy_goes_to_the_lower_validation_loss(tmp_path: Path, tie_break, kept) -> None:
    best = fit(tmp_path, len(ACC), tie_break)
    assert Path(best.best_model_path).name == kept  # None: Lightning's rule, the first of equal scores
    assert float(best.best_model_score) == pytest.approx(0.8)
    assert sorted(p.name for p in tmp_path.glob("epoch*.ckpt")) == [kept]  # one best file, the others removed


def test_a_resumed_run_breaks_ties_against_the_kept_checkpoints_loss(tmp_path: Path) -> None:
    """Stopped after epoch 1 (kept: epoch 1 at loss 0.5) and resumed: epoch 2 ties at a lower loss and wins, epoch 3
    ties at a higher one and does not; both need the kept loss restored from the checkpoint."""
    fit(tmp_path, 2, "val/loss")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    state = next(v for k, v in saved.items() if k.startswith("ModelCheckpoint{'monitor': 'val/acc'"))
    assert state["best_tie_value"] == pytest.approx(0.5)  # under ModelCheckpoint's key: older checkpoints restore
    best = fit(tmp_path, 4, "val/loss", ckpt_path=str(tmp_path / "last.ckpt"))
    assert Path(best.best_model_path).name == "epoch002.ckpt" and best.best_tie_value == pytest.approx(0.4)
