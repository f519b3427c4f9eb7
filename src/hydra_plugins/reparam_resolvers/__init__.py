"""OmegaConf resolvers reparam's configs use, registered wherever Hydra starts (it imports every ``hydra_plugins``
module while it starts up), so the scripts, the console commands and ``compose()`` all have them.

``${reparam.cwd:}`` is the directory the command was started in. Unlike ``${hydra:runtime.cwd}`` it resolves before
any job runs: a ``-m`` sweep resolves ``hydra.sweep.dir`` (built on ``paths.log_dir``) in the sweeper, where Hydra's
``hydra:`` resolver fails with "HydraConfig was not set". Hydra 1.3 does not change the working directory
(``hydra.job.chdir=false``), so the value is the same in every job.
"""

import os

from omegaconf import OmegaConf

if not OmegaConf.has_resolver("reparam.cwd"):
    OmegaConf.register_new_resolver("reparam.cwd", os.getcwd)
