"""Serve the fused model over HTTP (also ``reparam-serve``): the fastest target deploy checked, with batching.

python serve.py ckpt=logs/train/runs/<run>
python serve.py ckpt=logs/train/runs/<run>/fused serve.target=fused serve.port=8080
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from reparam.entrypoints import serve_task
from reparam.overrides import override_hints


@hydra.main(version_base="1.3", config_path="configs", config_name="serve")
def main(cfg: DictConfig) -> None:
    serve_task(cfg)


if __name__ == "__main__":
    with override_hints(Path(__file__).parent / "configs", "serve"):
        main()
