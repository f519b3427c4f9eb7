"""The Optuna search's parts on a real SQLite storage: its space, its study (direction, resume), interrupted trials."""

from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from reparam.search import (
    SearchError,
    SearchSettings,
    _counted,
    _retry_interrupted,
    _storage,
    open_study,
    override_value,
    refuse_another_space,
    search_space,
)


def parse(*overrides: str) -> list:
    return OverridesParser.create().parse_overrides(list(overrides))


def settings(**values) -> SearchSettings:
    return SearchSettings.from_config(OmegaConf.create({"hparams_search": {"study_name": "s", **values}}))


def test_space_reads_hydras_sweep_syntax_and_keeps_fixed_overrides() -> None:
    space, fixed = search_space(
        parse(
            "optimizer.lr=tag(log, interval(0.01, 0.5))",
            "data.batch_size=choice(32,64)",
            "trainer.max_epochs=tag(int, interval(2, 5))",
            "module.label_smoothing=interval(0, 0.2)",
            "model.block=choice(repvgg,dbb)",
            "seed=range(1,4)",
            "experiment=demo",
        )
    )
    assert space["optimizer.lr"] == FloatDistribution(0.01, 0.5, log=True)
    assert space["data.batch_size"] == CategoricalDistribution([32, 64])
    assert space["trainer.max_epochs"] == IntDistribution(2, 5)
    assert space["module.label_smoothing"] == FloatDistribution(0.0, 0.2)
    assert space["model.block"] == CategoricalDistribution(["repvgg", "dbb"])
    assert space["seed"] == CategoricalDistribution([1, 2, 3])
    assert fixed == ["experiment=demo"]


@pytest.mark.parametrize(
    "override,line",
    [
        (
            "optimizer.lr=tag(log,interval(0.1,0.01))",
            "optimizer.lr=tag(log,interval(0.1,0.01)): the interval's start is above its end; give it as "
            "interval(0.01,0.1)",
        ),
        (
            "optimizer.lr=tag(log,interval(0,0.5))",
            "optimizer.lr=tag(log,interval(0,0.5)): a log scale needs a start above 0, got 0; e.g. interval(0.005,0.5)",
        ),
    ],
)
def test_a_range_optuna_would_refuse_is_one_line(override: str, line: str) -> None:
    """A reversed interval ended in Optuna's ValueError traceback (a new user's typo)."""
    with pytest.raises(SearchError) as info:
        search_space(parse(override))
    assert str(info.value) == line


def test_a_study_resumed_over_other_ranges_is_refused() -> None:
    """A new user resumed a study with a wider lr range and one more parameter: accepted in silence, its table mixed
    two searches."""
    first, _ = search_space(parse("optimizer.lr=tag(log,interval(0.01,0.5))", "data.batch_size=choice(32,64)"))
    study = optuna.create_study(direction="maximize")
    study.tell(study.ask(first), 0.5)
    refuse_another_space(study, first, "sqlite:///x.db")  # the same ranges: resumed
    wider, _ = search_space(parse("optimizer.lr=tag(log,interval(0.001,0.9))", "data.batch_size=choice(32,64)"))
    with pytest.raises(SearchError) as info:
        refuse_another_space(study, wider, "sqlite:///x.db")
    assert str(info.value) == (  # only the parameter that differs
        f"study '{study.study_name}' in sqlite:///x.db searched optimizer.lr tag(log,interval(0.01,0.5)); this command "
        "searches optimizer.lr tag(log,interval(0.001,0.9)): resume it with the same ranges, or start another with "
        "hparams_search.study_name=<new name>"
    )
    more, _ = search_space(
        parse(
            "optimizer.lr=tag(log,interval(0.01,0.5))", "data.batch_size=choice(32,64)", "seed=tag(int,interval(1,3))"
        )
    )
    with pytest.raises(SearchError, match=r"searched seed \(not searched\); this command searches seed tag\(int,"):
        refuse_another_space(study, more, "sqlite:///x.db")


def test_sampled_values_are_written_back_as_hydra_reads_them() -> None:
    values = [0.0123, 64, "dbb", True, None]
    lines = [f"k={override_value(v)}" for v in values]
    assert [o.value() for o in parse(*lines)] == values


@pytest.mark.parametrize(
    "values,fragment",
    [
        ({"pruner": "fast"}, "hparams_search.pruner=fast is not a pruner"),
        ({"n_trail": 3}, "unknown hparams_search setting(s) n_trail"),
        ({"n_jobs": 0}, "must be >= 1"),
    ],
)
def test_bad_settings_say_what_to_fix(values: dict, fragment: str) -> None:
    with pytest.raises(SearchError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        settings(**values)


def test_default_storage_is_sqlite_in_the_sweep_dir(tmp_path: Path) -> None:
    assert settings().storage_url(tmp_path) == f"sqlite:///{tmp_path}/optuna.db"
    assert settings(storage="postgresql://h/db").storage_url(tmp_path) == "postgresql://h/db"


def test_direction_follows_optimized_metric_and_a_study_is_resumed_only_when_asked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/optuna.db"
    storage = _storage(url)
    study = open_study(settings(), storage, url, "best_val_acc")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    with pytest.raises(SearchError, match="already exists .* hparams_search.resume=true"):
        open_study(settings(), storage, url, "best_val_acc")
    with pytest.raises(SearchError, match="created to maximize but optimized_metric=total_time_s is to minimize"):
        open_study(settings(resume=True), storage, url, "total_time_s")
    with pytest.raises(SearchError, match="no study 'other'"):
        open_study(settings(study_name="other", resume=True), storage, url, "best_val_acc")
    assert open_study(settings(resume=True), storage, url, "best_val_acc").study_name == "s"
    other = open_study(settings(study_name="t"), storage, url, "fusion_fp32_max_abs_diff")
    assert other.direction == optuna.study.StudyDirection.MINIMIZE


def test_unusable_storage_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="hparams_search.storage=nosuchdb://x cannot be opened"):
        _storage("nosuchdb://x")


def test_a_trial_killed_with_the_search_is_run_again_and_counted_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/optuna.db"
    storage = _storage(url)
    study = open_study(settings(), storage, url, "best_val_acc")
    space = {"lr": FloatDistribution(0.01, 0.5)}
    done = study.ask(space)
    study.tell(done, 0.5)
    killed = study.ask(space)  # left RUNNING, as by a SIGTERM mid-trial
    resumed = open_study(settings(resume=True), storage, url, "best_val_acc")
    _retry_interrupted(resumed, storage)
    assert _counted(resumed) == 1
    frozen = resumed.trials[killed.number]
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["interrupted"]
    retry = resumed.ask(space)  # the queued retry comes first, with the killed trial's parameters
    assert retry.params == killed.params and retry.user_attrs["retry_of"] == killed.number
    resumed.tell(retry, 0.6)
    assert _counted(resumed) == 2


def test_a_resumed_search_does_not_draw_its_first_trials_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/optuna.db"
    storage = _storage(url)
    space = {"lr": FloatDistribution(0.01, 0.5), "block": CategoricalDistribution(["repvgg", "acnet", "dbb"])}
    study = open_study(settings(n_startup_trials=10), storage, url, "best_val_acc")
    first = []
    for value in (0.5, 0.6, 0.7):
        trial = study.ask(space)
        study.tell(trial, value)
        first.append(trial.params)
    resumed = open_study(settings(n_startup_trials=10, resume=True), storage, url, "best_val_acc")
    later = []
    for value in (0.5, 0.6, 0.7):  # still random draws (startup): the sampler's seed alone decides them
        trial = resumed.ask(space)
        resumed.tell(trial, value)
        later.append(trial.params)
    assert all(params not in first for params in later), (first, later)


def test_a_trial_is_not_pruned_after_its_last_epoch(tmp_path: Path) -> None:
    """A new user's trial ran both of its 2 epochs and was then pruned: neither tested nor fused, for no time saved."""
    from types import SimpleNamespace

    import torch

    from reparam.search import TrialPruning

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    for value in (0.9, 0.8, 0.85):  # finished trials, all far ahead at every epoch
        trial = study.ask()
        trial.report(value, step=0)
        trial.report(value, step=1)
        study.tell(trial, value)
    study.ask()  # trial 3, the one running
    values = {"n_trials": 8, "trial": 3, "pruner_options": {"n_startup_trials": 1, "n_warmup_steps": 0}}
    pruning = TrialPruning(settings(**values), url, "best_val_acc")
    strategy = SimpleNamespace(broadcast=lambda value, src=0: value)
    for epoch, max_epochs, pruned in ((1, 2, None), (0, 2, 0)):  # behind at the last epoch: kept; at the first: pruned
        pruning.best, pruning.pruned_at_epoch, pruning._trial = None, None, None
        trainer = SimpleNamespace(
            sanity_checking=False,
            callback_metrics={"val/acc": torch.tensor(0.1)},
            is_global_zero=True,
            current_epoch=epoch,
            max_epochs=max_epochs,
            strategy=strategy,
            should_stop=False,
        )
        pruning.on_validation_end(trainer, None)  # type: ignore[arg-type]
        assert pruning.pruned_at_epoch == pruned and trainer.should_stop == (pruned is not None), (epoch, max_epochs)
