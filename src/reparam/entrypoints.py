"""What ``train.py`` / ``deploy.py`` / ``serve.py`` run, and the console commands ``reparam-train`` /
``reparam-deploy`` / ``reparam-serve``.

The console commands read the Hydra configs of the checkout reparam was installed from (``pip install -e .``), or
``$REPARAM_CONFIG_DIR``, or ``./configs``; every override works as with the scripts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from .guard import guarded
from .user_modules import import_user_modules

__all__ = ["train_task", "deploy_task", "serve_task", "train_main", "deploy_main", "serve_main", "config_dir"]


@guarded
def train_task(cfg: DictConfig) -> float | None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    import_user_modules(cfg.get("imports"))
    from .console import print_train_summary
    from .training import optimized_metric, train

    summary = train(cfg)
    # under DDP every process runs this; one table is enough (Lightning sets .rank on the function at import)
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
        print_train_summary(summary, _sibling_command("deploy"), tuple(str(m) for m in cfg.get("imports") or ()))
    return optimized_metric(cfg, summary)  # what a Hydra sweeper (e.g. Optuna) optimizes


def _sibling_command(name: str) -> str:
    """How to run the other entry point the way this one was started: ``python <dir>/deploy.py`` after
    ``python <dir>/train.py``, ``reparam-deploy`` after ``reparam-train``."""
    script = Path(sys.argv[0])
    if script.suffix == ".py":
        sibling = script.with_name(f"{name}.py")
        return f"python {sibling}" if sibling.is_file() else f"reparam-{name}"
    return f"reparam-{name}"


@guarded
def deploy_task(cfg: DictConfig) -> None:
    import_user_modules(cfg.get("imports"))
    if cfg.get("predict"):  # predict=<file or folder>: predictions.csv with the served target, no deploy run
        from .serve.predict import predict_files, print_prediction_summary

        print_prediction_summary(predict_files(cfg))
        return
    from .deploy import deploy, print_deploy_summary, raise_failed_checks

    report = deploy(cfg, raise_failed=False)
    print_deploy_summary(report)  # the table first: it shows what failed beside what passed
    raise_failed_checks(report)


@guarded
def serve_task(cfg: DictConfig) -> None:
    import_user_modules(cfg.get("imports"))
    from .serve import serve

    serve(cfg)


def config_dir() -> Path:
    """``$REPARAM_CONFIG_DIR``, else ``./configs``, else the ``configs/`` of the checkout this package lives in."""
    candidates = [Path(os.environ["REPARAM_CONFIG_DIR"])] if os.environ.get("REPARAM_CONFIG_DIR") else []
    candidates += [Path.cwd() / "configs", Path(__file__).resolve().parents[2] / "configs"]
    for candidate in candidates:
        if (candidate / "train.yaml").is_file():
            return candidate.resolve()
    print(
        "error: no reparam configs found (looked in $REPARAM_CONFIG_DIR, ./configs and the checkout reparam was "
        "installed from); run from a clone of reparam or set REPARAM_CONFIG_DIR=/path/to/reparam/configs",
        file=sys.stderr,
    )
    sys.exit(2)


def _run(task, config_name: str) -> None:  # noqa: ANN001
    import hydra

    from .overrides import override_hints

    configs = config_dir()
    with override_hints(configs, config_name):
        hydra.main(version_base="1.3", config_path=str(configs), config_name=config_name)(task)()


def train_main() -> None:
    """``reparam-train [overrides]``: the same as ``python train.py [overrides]``."""
    _run(train_task, "train")


def deploy_main() -> None:
    """``reparam-deploy ckpt=... [overrides]``: the same as ``python deploy.py ckpt=... [overrides]``."""
    _run(deploy_task, "deploy")


def serve_main() -> None:
    """``reparam-serve ckpt=... [overrides]``: the same as ``python serve.py ckpt=... [overrides]``."""
    _run(serve_task, "serve")
