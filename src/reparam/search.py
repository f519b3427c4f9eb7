"""Hyperparameter search with Optuna (>= 4): ``python train.py -m experiment=demo hparams_search=demo``.

The sweeper (``hydra_plugins.reparam_sweeper.OptunaSearchSweeper``) asks the study for trials, launches them through
whichever Hydra launcher is configured (in this process, or submitit's processes / SLURM jobs), tells the study each
result it gets back and records it in the sweep table. A trial's job reports its validation accuracy every epoch
to the same study (:class:`TrialPruning`) and stops when the pruner says so; it then ends as ``pruned``.

Settings live in the ``hparams_search`` config node (read by the sweeper and by every trial), the search space in
``hydra.sweeper.params`` (Hydra's ``interval()``, ``choice()``, ``range()``, ``tag(log, ...)``) and on the command
line. The direction comes from ``optimized_metric`` (``reparam.run_summary.SUMMARY_METRICS``), never from a second
setting. The study lives in an RDB storage: ``sqlite:///<sweep dir>/optuna.db`` unless ``hparams_search.storage``
names any SQLAlchemy URL, so ``optuna-dashboard <storage>`` shows it and ``hparams_search.resume=true`` continues it.
Optuna is imported only here, and only when a search or a trial runs.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import lightning as L
from omegaconf import DictConfig, OmegaConf

from .errors import UserError
from .run_summary import SUMMARY_FILE, SUMMARY_METRICS, TrainSummary
from .sweep import SweepRecord, SweepRun, continue_command, print_sweep_summary, set_active_record

if TYPE_CHECKING:
    import optuna

__all__ = [
    "SearchSettings",
    "SearchError",
    "TrialPruning",
    "search_space",
    "override_value",
    "open_study",
    "EPOCH_METRICS",
    "DB_FILE",
    "run_search",
    "trial_pruning",
]

DB_FILE = "optuna.db"
# summary values that are also measured every epoch (what a pruner compares), and the logged metric that is
EPOCH_METRICS = {"best_val_acc": "val/acc"}
PRUNERS = ("median", "hyperband", "none")


class SearchError(UserError):
    """A search that cannot start as configured (the line says how to fix it)."""


@dataclass
class SearchSettings:
    """The ``hparams_search`` config node."""

    study_name: str
    storage: str | None = None  # any SQLAlchemy URL; None: sqlite:///<sweep dir>/optuna.db
    resume: bool = False
    n_trials: int = 16
    n_jobs: int = 1  # trials launched together (in parallel with submitit_local / submitit_slurm)
    seed: int | None = 0
    n_startup_trials: int = 5  # TPE samples at random this many trials before modelling
    pruner: str = "median"  # median | hyperband | none
    pruner_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the Optuna pruner
    trial: int | None = None  # set by the sweeper on each trial's command line

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SearchSettings:
        node = cfg.get("hparams_search")
        if node is None:
            raise SearchError(
                "no hparams_search settings: start a search with a preset, e.g. "
                "python train.py -m experiment=demo hparams_search=demo"
            )
        values = cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))  # a mapping node gives a dict
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise SearchError(
                f"unknown hparams_search setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        settings = cls(**values)
        if settings.pruner not in PRUNERS:
            raise SearchError(
                f"hparams_search.pruner={settings.pruner} is not a pruner; choose one of {', '.join(PRUNERS)}"
            )
        if settings.n_trials < 1 or settings.n_jobs < 1:
            raise SearchError("hparams_search.n_trials and hparams_search.n_jobs must be >= 1")
        return settings

    def storage_url(self, sweep_dir: str | Path) -> str:
        return self.storage or f"sqlite:///{Path(sweep_dir).resolve() / DB_FILE}"

    def make_pruner(self) -> optuna.pruners.BasePruner:
        import optuna

        options = dict(self.pruner_options or {})
        if self.pruner == "median":
            return optuna.pruners.MedianPruner(**{"n_startup_trials": 4, "n_warmup_steps": 1, **options})
        if self.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(**{"min_resource": 1, **options})
        return optuna.pruners.NopPruner()


def direction(metric: str | None) -> Literal["maximize", "minimize"]:
    """``maximize`` or ``minimize``, from the summary value the runs return (the one source of truth)."""
    if not metric or metric not in SUMMARY_METRICS:
        raise SearchError(
            f"a search optimizes the summary value named by optimized_metric (now {metric!r}); choose "
            f"one of {', '.join(SUMMARY_METRICS)}"
        )
    return "maximize" if SUMMARY_METRICS[metric] == "max" else "minimize"


def _storage(url: str) -> optuna.storages.RDBStorage:
    import optuna

    # SQLite serializes writers: parallel trials reporting at once wait for the lock instead of failing at once
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's errors (bad URL, missing driver, unwritable file)
        raise SearchError(
            f"hparams_search.storage={url} cannot be opened ({' '.join(str(err).split())[:200]}); "
            "give an SQLAlchemy URL such as sqlite:///path/optuna.db"
        ) from err


def sampler_seed(seed: int | None, trials_held: int) -> int | None:
    """The sampler's seed for a study that already holds ``trials_held`` trials: ``seed + trials_held``.

    A sampler seeded alike on every start draws the same random parameters again: a resumed search would rerun its
    first trials. Moving the seed on by the trials already held keeps a new search as seeded and a resumed one
    reproducible from the study's state."""
    return None if seed is None else seed + trials_held


def open_study(
    settings: SearchSettings, storage: optuna.storages.BaseStorage, url: str, metric: str | None
) -> optuna.Study:
    """Create the study, or load it with ``resume=true``; an existing study is never continued silently."""
    import optuna

    held = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    exists = settings.study_name in held
    if exists and not settings.resume:
        raise SearchError(
            f"study '{settings.study_name}' already exists in {url}; continue it with "
            "hparams_search.resume=true, or start another with hparams_search.study_name=<new name>"
        )
    if not exists and settings.resume:
        raise SearchError(
            f"hparams_search.resume=true but there is no study '{settings.study_name}' in {url}; "
            "drop resume to start it (same hparams_search.study_name and storage / sweep dir to resume)"
        )
    sampler = optuna.samplers.TPESampler(
        seed=sampler_seed(settings.seed, held.get(settings.study_name, 0)),
        n_startup_trials=settings.n_startup_trials,
        constant_liar=settings.n_jobs > 1,
    )
    study = optuna.create_study(
        storage=storage,
        study_name=settings.study_name,
        direction=direction(metric),
        sampler=sampler,
        pruner=settings.make_pruner(),
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction(metric):
        raise SearchError(
            f"study '{settings.study_name}' was created to {study.direction.name.lower()} but "
            f"optimized_metric={metric} is to {direction(metric)}; use the study's metric or a new study"
        )
    return study


def refuse_another_space(study: optuna.Study, space: dict[str, Any], url: str) -> None:
    """A resumed study searched over other ranges is refused: its table would mix two searches, and TPE would model
    trials that the new ranges cannot sample."""
    searched: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        searched.update(trial.distributions)
    if searched and searched != space:
        # only what differs: a preset's space is five parameters, and the one changed was hard to find among them
        keys = sorted(k for k in searched.keys() | space.keys() if searched.get(k) != space.get(k))

        def described(ranges: dict[str, Any]) -> str:
            return ", ".join(f"{k} {_described(ranges[k]) if k in ranges else '(not searched)'}" for k in keys)

        raise SearchError(
            f"study '{study.study_name}' in {url} searched {described(searched)}; this command searches "
            f"{described(space)}: resume it with the same ranges, or start another with "
            "hparams_search.study_name=<new name>"
        )


def _described(distribution: Any) -> str:
    """An Optuna distribution as the override that makes it: ``tag(log,interval(0.01,0.5))``, ``choice(a,b)``."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return "choice(" + ",".join(override_value(c) for c in distribution.choices) + ")"
    tags = [t for t, on in (("log", distribution.log), ("int", isinstance(distribution.low, int))) if on]
    interval = f"interval({distribution.low:g},{distribution.high:g})"
    return f"tag({','.join(tags)},{interval})" if tags else interval


def search_space(overrides: list[Any]) -> tuple[dict[str, Any], list[str]]:
    """Optuna distributions for the sweep overrides (``interval``, ``choice``, ``range``; ``tag(log, ...)`` for a
    log scale, ``tag(int, ...)`` for integers) and the fixed ``key=value`` overrides, from overrides parsed by
    Hydra's ``OverridesParser``."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: dict[str, Any] = {}
    fixed: list[str] = []
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed.append(override.input_line)
            continue
        value = override.value()
        if isinstance(value, IntervalSweep):
            log = "log" in value.tags
            assert value.start is not None and value.end is not None  # interval(start, end) parses both
            if value.start > value.end:
                raise SearchError(
                    f"{override.input_line}: the interval's start is above its end; give it as "
                    f"interval({value.end:g},{value.start:g})"
                )
            if log and value.start <= 0:
                raise SearchError(
                    f"{override.input_line}: a log scale needs a start above 0, got {value.start:g}; e.g. "
                    f"interval({value.end / 100:g},{value.end:g})"
                )
            if "int" in value.tags:  # Hydra's interval() bounds are floats: tag(int, interval(2, 8)) for integers
                space[key] = IntDistribution(int(value.start), int(value.end), log=log)
            else:
                space[key] = FloatDistribution(float(value.start), float(value.end), log=log)
        elif isinstance(value, ChoiceSweep):
            space[key] = CategoricalDistribution([_plain(v) for v in value.list])
        elif isinstance(value, RangeSweep):
            space[key] = CategoricalDistribution([_plain(v) for v in override.sweep_iterator()])
        else:  # pragma: no cover - Hydra has no other sweep kind
            raise SearchError(f"{override.input_line}: not a search range; use interval(), choice() or range()")
    return space, fixed


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def override_value(value: Any) -> str:
    """A sampled value as Hydra reads it back (``true``, ``null``, ``0.0123``, ``dbb``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


class TrialPruning(L.Callback):
    """Reports the running best of the epoch metric to the trial after every validation, and stops training when the
    study's pruner says the trial falls behind (global rank zero decides; every rank stops)."""

    def __init__(self, settings: SearchSettings, url: str, metric: str) -> None:
        if metric not in EPOCH_METRICS:
            raise SearchError(
                f"hparams_search.pruner={settings.pruner} compares a value measured every epoch, but "
                f"optimized_metric={metric} is measured once at the end; set hparams_search.pruner=none"
            )
        if settings.trial is None:
            raise ValueError("TrialPruning follows one trial: hparams_search.trial must be set")
        self.settings, self.url, self.monitor = settings, url, EPOCH_METRICS[metric]
        self.trial_number = settings.trial
        self.maximize = SUMMARY_METRICS[metric] == "max"
        self.best: float | None = None
        self.pruned_at_epoch: int | None = None
        self._trial: optuna.Trial | None = None

    @property
    def pruned(self) -> bool:
        return self.pruned_at_epoch is not None

    def _load_trial(self) -> optuna.Trial:
        import optuna

        if self._trial is None:
            storage = _storage(self.url)
            study = optuna.load_study(
                study_name=self.settings.study_name, storage=storage, pruner=self.settings.make_pruner()
            )
            study_id = storage.get_study_id_from_name(self.settings.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
            self._trial = optuna.Trial(study, trial_id)
        return self._trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        prune = False
        if trainer.is_global_zero:
            value = float(trainer.callback_metrics[self.monitor])
            if math.isfinite(value):
                better = self.best is None or (value > self.best if self.maximize else value < self.best)
                self.best = value if better else self.best
            if self.best is not None:
                trial = self._load_trial()
                trial.report(self.best, step=trainer.current_epoch)
                # after the last epoch nothing is left to save: a trial pruned there lost its test and fused model
                last = trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs - 1
                prune = not last and trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at_epoch = trainer.current_epoch
            trainer.should_stop = True


def trial_pruning(cfg: DictConfig) -> TrialPruning | None:
    """The pruning callback for a job that is a search trial (``hparams_search.trial`` set, a pruner chosen)."""
    node = cfg.get("hparams_search")
    if node is None or node.get("trial") is None:
        return None
    settings = SearchSettings.from_config(cfg)
    if settings.pruner == "none":
        return None
    from hydra.core.hydra_config import HydraConfig

    sweep_dir = HydraConfig.get().sweep.dir if HydraConfig.initialized() else cfg.paths.output_dir
    return TrialPruning(settings, settings.storage_url(sweep_dir), cfg.get("optimized_metric"))


def _retry_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """Trials left running by a killed search are no result: mark them failed-and-interrupted (not counted), and
    queue their parameters so the resumed search runs them again, once. Returns how many."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    interrupted = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in interrupted:
        storage.set_trial_user_attr(
            storage.get_trial_id_from_study_id_trial_number(study_id, trial.number), "interrupted", True
        )
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return len(interrupted)


def _counted(study: optuna.Study) -> int:
    """Finished trials that count towards ``n_trials`` (completed, pruned, failed; not the interrupted ones)."""
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return sum(not t.user_attrs.get("interrupted") for t in finished)


def _say_resumed(study: optuna.Study, url: str, n_trials: int, retried: int) -> None:
    """What a resumed search found: the trials done, the interrupted ones it runs again, the trials to go."""
    from .console import console

    done = _counted(study)
    again = f", {retried} interrupted trial(s) to run again with the same parameters" if retried else ""
    console.print(
        f"resuming study '{study.study_name}' ({url}): {done} of {n_trials} trials done{again}; "
        f"{max(0, n_trials - done)} to go",
        soft_wrap=True,
        markup=False,
    )


def _refresh(record: SweepRecord, study: optuna.Study) -> None:
    """The record of every trial of the study, this session's and earlier ones', written to sweep_summary.json."""
    trials = study.get_trials(deepcopy=False)
    record.pending.clear()
    record.runs = [SweepRun(**t.user_attrs["reparam_run"]) for t in trials if "reparam_run" in t.user_attrs]
    record.runs += [
        SweepRun(
            job=t.number,
            overrides=[],
            run_dir=str(Path(record.sweep_dir) / str(t.number)),  # what it left there (its last.ckpt, its log)
            status="interrupted",
            trial=t.number,
            params=dict(t.params),
            error="stopped with the search, run again when it resumed",
        )
        for t in trials
        if t.user_attrs.get("interrupted") and "reparam_run" not in t.user_attrs
    ]
    record.write()


def run_search(config: DictConfig, launcher: Any, overrides: list[Any], typed: Sequence[str] = ()) -> list[Any]:
    """The search loop of ``OptunaSearchSweeper``: ask ``n_jobs`` trials, launch them as one batch through the
    launcher, tell the study what came back (value, pruned or failed), until ``n_trials`` trials have finished.
    ``typed``, the command line's overrides (Hydra's included), make the command that continues a stopped search."""
    import optuna
    from optuna.trial import TrialState

    settings = SearchSettings.from_config(config)
    metric = config.get("optimized_metric")
    space, fixed = search_space(overrides)
    if not space:
        raise SearchError(
            "nothing to search: give hydra.sweeper.params or a range on the command line, e.g. "
            "'optimizer.lr=interval(0.01,0.3)'"
        )
    if settings.pruner != "none" and metric not in EPOCH_METRICS:
        raise SearchError(
            f"hparams_search.pruner={settings.pruner} compares a value measured every epoch, but "
            f"optimized_metric={metric} is measured once at the end; set hparams_search.pruner=none"
        )
    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    url = settings.storage_url(sweep_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(url)
    study = open_study(settings, storage, url, metric)
    seed = sampler_seed(settings.seed, len(study.trials))
    if settings.resume:
        refuse_another_space(study, space, url)
    _retry_interrupted(study, storage)  # a search killed outright left them running
    if settings.resume:
        _say_resumed(study, url, settings.n_trials, len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))))
    record = SweepRecord(
        str(sweep_dir),
        metric,
        study={
            "study_name": settings.study_name,
            "storage": url,
            "direction": study.direction.name.lower(),
            "sampler": f"TPESampler(seed={seed}, n_startup_trials={settings.n_startup_trials})",
            "pruner": settings.pruner,
            "n_trials": settings.n_trials,
            "space": {k: repr(v) for k, v in space.items()},
        },
    )
    set_active_record(record)
    _refresh(record, study)
    returns = []
    try:
        while (remaining := settings.n_trials - _counted(study)) > 0:
            trials = [study.ask(space) for _ in range(min(settings.n_jobs, remaining))]
            # job number = trial number: a resumed search never reuses an earlier run directory
            first = trials[0].number
            if [t.number for t in trials] != list(range(first, first + len(trials))):
                raise SearchError(
                    f"another process is adding trials to study '{settings.study_name}' ({url}); "
                    "run one search per study"
                )
            batch = [
                [*fixed, *(f"{k}={override_value(v)}" for k, v in t.params.items()), f"hparams_search.trial={t.number}"]
                for t in trials
            ]
            try:
                results = launcher.launch(batch, initial_job_idx=first)
            except Exception:  # a job of the batch ended without a result (killed outright): keep the finished ones
                with contextlib.suppress(Exception):  # the launcher's error is the one to see
                    _keep_finished_trials(study, trials, batch, sweep_dir, metric)
                raise
            for trial, result in zip(trials, results, strict=True):
                run = SweepRun.from_job(result, params=dict(trial.params), trial=trial.number)
                trial.set_user_attr("reparam_run", run.to_dict())
                if run.status == "ok":
                    study.tell(trial, run.value)
                else:
                    study.tell(trial, state=TrialState.PRUNED if run.status == "pruned" else TrialState.FAIL)
            _refresh(record, study)
            returns.append(results)
    except BaseException:  # Ctrl-C, SIGTERM, a failure: the trials done so far, as the end of a search shows them
        with contextlib.suppress(Exception):
            _print_stopped_search(record, study, storage, settings.n_trials, typed)
        raise
    return returns


def _keep_finished_trials(
    study: optuna.Study, trials: list[Any], batch: list[list[str]], sweep_dir: Path, metric: str | None
) -> None:
    """The trials of a batch whose launch raised (submitit: one job left no result) that finished all the same, told
    to the study from their run's ``summary.json``: the launcher's results are all or nothing, and a completed trial
    was counted as interrupted and run again."""
    from optuna.trial import TrialState

    if metric is None:
        return
    for trial, overrides in zip(trials, batch, strict=True):
        run_dir = sweep_dir / str(trial.number)
        summary = TrainSummary.read(run_dir / SUMMARY_FILE)
        value = summary.value(metric) if summary is not None and summary.status == "completed" else None
        pruned = summary is not None and summary.status == "pruned"
        if summary is None or not (pruned or (value is not None and math.isfinite(value))):
            continue
        run = SweepRun(
            job=trial.number,
            overrides=overrides,
            run_dir=str(run_dir),
            status="pruned" if pruned else "ok",
            value=None if value is None else float(value),
            params=dict(trial.params),
            duration_s=summary.total_time_s,
            trial=trial.number,
            summary=summary.to_dict(),
        )
        trial.set_user_attr("reparam_run", run.to_dict())
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, run.value)


def _print_stopped_search(
    record: SweepRecord,
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    n_trials: int,
    typed: Sequence[str],
) -> None:
    """The trials in flight are interrupted now (run again first when the search resumes), then the table of the
    trials so far, ``sweep_summary.json`` with ``stopped``, and the command that continues the search."""
    from .console import console

    _retry_interrupted(study, storage)
    _refresh(record, study)
    done = _counted(study)
    record.stopped = {"trials": n_trials, "done": done}
    path = record.write()
    if record.runs:
        print_sweep_summary(record)
        console.print(f"sweep summary: {path}", soft_wrap=True, markup=False)
    command = continue_command(typed, ["hparams_search.resume=true"])
    print(
        f"the search stopped with {done} of {n_trials} trials done; continue it with: {command}",
        file=sys.stderr,
        flush=True,
    )
