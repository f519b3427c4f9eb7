"""Train a RepVGG-style network, fuse it at the end, and print a summary.

    python train.py                                  # RepVGG-A0 on CIFAR-10 (data in ./data)
    python train.py experiment=demo                  # offline demo on embedded digits
    python train.py model=repvgg_b0 trainer.max_epochs=100 data.batch_size=256
"""

import hydra
from omegaconf import DictConfig

from reparam.cli import guarded
from reparam.report import print_train_summary
from reparam.training import optimized_metric, train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@guarded
def main(cfg: DictConfig) -> float | None:
    summary = train(cfg)
    print_train_summary(summary)
    return optimized_metric(cfg, summary)  # what a Hydra sweeper (e.g. Optuna) maximizes


if __name__ == "__main__":
    main()
