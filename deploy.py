"""Evaluate the fused model against the train form, benchmark both, export, and report.

    python deploy.py ckpt=logs/train/runs/<run>/checkpoints/last.ckpt
    python deploy.py ckpt=logs/train/runs/<run>/fused benchmark.batch_sizes=[1,64] export.onnx=false
"""

import hydra
from omegaconf import DictConfig

from reparam.cli import guarded
from reparam.deploy import deploy
from reparam.deploy.report import print_deploy_summary


@hydra.main(version_base="1.3", config_path="configs", config_name="deploy")
@guarded
def main(cfg: DictConfig) -> None:
    print_deploy_summary(deploy(cfg))


if __name__ == "__main__":
    main()
