"""reparam's Hydra sweeper plugins (Hydra loads sweepers only from the ``hydra_plugins`` namespace package).

Both record what the launcher returns for every job in the launching process (``reparam.sweep.SweepRecord``), so the
end-of-sweep table holds every job whichever launcher ran them. Heavy imports (reparam, Optuna) wait for ``sweep()``:
Hydra imports this module at the start of every run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

__all__ = ["FailTolerantSweeper", "OptunaSearchSweeper"]


class FailTolerantSweeper(BasicSweeper):
    """Hydra's basic sweeper without the re-raise of the first failed job: every job runs, the sweep ends normally."""

    def sweep(self, arguments: list[str]) -> Any:
        from reparam.sweep import SweepRecord, SweepRun, set_active_record

        # BasicSweeper.setup() sets these (typed Optional on the class)
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        swept = [o.get_key_element() for o in overrides if o.is_sweep_override()]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        record = SweepRecord(str(sweep_dir), self.config.get("optimized_metric"))
        set_active_record(record)
        returns, first = [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=first)
            runs = [SweepRun.from_job(result) for result in results]
            for run in runs:
                run.params = {k: v for o in run.overrides for k, _, v in [o.partition("=")] if k in swept}
            record.add_batch(runs)  # on disk after every batch: it survives whatever happens to the sweep later
            returns.append(results)
            first += len(batch)
        return returns


class OptunaSearchSweeper(Sweeper):
    """An Optuna (>= 4) search through any Hydra launcher: ask a batch of ``n_jobs`` trials, launch them, tell the
    study each result (value, failed or pruned). Settings: the ``hparams_search`` node (``reparam.search``)."""

    def __init__(self, params: DictConfig | None = None) -> None:
        self.params: DictConfig | dict[str, Any] = params or {}
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from reparam.search import SearchError, run_search

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        configured = [f"{key!s}={value}" for key, value in self.params.items()]
        try:
            return run_search(self.config, self.launcher, parser.parse_overrides([*configured, *arguments]))
        except SearchError as err:
            print(f"error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
            sys.exit(err.exit_code)
