"""OmegaConf resolvers reparam's configs use, registered wherever Hydra starts (it imports every ``hydra_plugins``
module while it starts up), so the scripts, the console commands and ``compose()`` all have them.

``${reparam.cwd:}`` is the directory the command was started in. Unlike ``${hydra:runtime.cwd}`` it resolves before
any job runs: a ``-m`` sweep resolves ``hydra.sweep.dir`` (built on ``paths.log_dir``) in the sweeper, where Hydra's
``hydra:`` resolver fails with "HydraConfig was not set". Hydra 1.3 does not change the working directory
(``hydra.job.chdir=false``), so the value is the same in every job.

``${reparam.run_name:${paths.output_dir},${paths.log_dir}}`` names a run in a tracking UI (MLflow, W&B) by its output
folder, relative to the log folder when it lies inside it (``train/multiruns/2026-12-02_05-42-12-123456/3``): every
run of a sweep had the name ``train``.
"""

import os

from omegaconf import OmegaConf


def run_name(output_dir: str | None, log_dir: str) -> str | None:
    """``output_dir`` relative to ``log_dir`` when inside it, else as given (None before a run has one: --cfg)."""
    if not output_dir:
        return None
    relative = os.path.relpath(os.path.abspath(output_dir), os.path.abspath(log_dir))
    return output_dir if relative == os.pardir or relative.startswith(os.pardir + os.sep) else relative


if not OmegaConf.has_resolver("reparam.cwd"):
    OmegaConf.register_new_resolver("reparam.cwd", os.getcwd)
if not OmegaConf.has_resolver("reparam.run_name"):
    OmegaConf.register_new_resolver("reparam.run_name", run_name)
