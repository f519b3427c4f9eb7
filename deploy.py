"""Evaluate the fused model against the train form, benchmark both, export, and report (also ``reparam-deploy``).

python deploy.py ckpt=logs/train/runs/<run>/checkpoints/last.ckpt
python deploy.py ckpt=logs/train/runs/<run>/fused benchmark.batch_sizes=[1,64] export.onnx=false
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from reparam.entrypoints import deploy_task
from reparam.overrides import override_hints


@hydra.main(version_base="1.3", config_path="configs", config_name="deploy")
def main(cfg: DictConfig) -> None:
    deploy_task(cfg)


if __name__ == "__main__":
    with override_hints(Path(__file__).parent / "configs", "deploy"):
        main()
