"""Train a multi-branch network, fuse it at the end, and print a summary (also installed as ``reparam-train``).

python train.py                                  # RepVGG-A0 on CIFAR-10 (data in ./data)
python train.py experiment=demo                  # offline demo on embedded digits
python train.py model=repvgg_b0 trainer.max_epochs=100 data.batch_size=256
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from reparam.entrypoints import train_task
from reparam.overrides import override_hints


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train_task(cfg)


if __name__ == "__main__":
    with override_hints(Path(__file__).parent / "configs", "train"):
        main()
