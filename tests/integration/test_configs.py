"""Every config option composes and resolves; every experiment trains and fuses under fast_dev_run."""

from pathlib import Path

import pytest
from helpers import CONFIGS, compose_config
from omegaconf import OmegaConf, open_dict

GROUPS = [
    "data",
    "model",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "debug",
    "speed",
    "hparams_search",
    "paths",
    "hydra",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


CASES = [(g, o) for g in GROUPS for o in options(g)]


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), f"configs/{group} is empty"


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_resolves(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"{group}={option}"], run_dir=tmp_path)
    assert str(tmp_path.parent) not in OmegaConf.select(cfg, "hydra.run.dir", throw_on_resolution_failure=True)
    with open_dict(cfg):
        del cfg["hydra"]
    container = OmegaConf.to_container(cfg, resolve=True)  # raises on a broken interpolation
    assert container["paths"]["output_dir"] == str(tmp_path)
    if group in ("data", "model", "trainer", "optimizer", "scheduler"):
        assert "_target_" in container[group] or group == "model"
    if group == "model":
        assert container["model"]["num_classes"] == container["data"]["num_classes"]


@pytest.mark.parametrize("logger,key", [("mlflow", "run_name"), ("wandb", "name")])
def test_tracked_runs_are_named_by_their_folder(logger: str, key: str, tmp_path: Path) -> None:
    """Every MLflow / W&B run was named "train": a sweep's runs could be told apart only by their parameters."""
    elsewhere = compose_config("train", [f"logger={logger}"], run_dir=tmp_path / "elsewhere")
    assert OmegaConf.select(elsewhere, f"logger.{logger}.{key}") == str(tmp_path / "elsewhere")
    below = "train/multiruns/2026-12-02_05-42-12-000001/3"  # a sweep's job folder under logs/: that path
    inside = compose_config("train", [f"logger={logger}"], run_dir=f"{elsewhere.paths.log_dir}/{below}")
    assert OmegaConf.select(inside, f"logger.{logger}.{key}") == below


def test_deploy_config_composes(tmp_path: Path) -> None:
    cfg = compose_config("deploy", ["ckpt=some/where"], run_dir=tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]
    assert OmegaConf.to_container(cfg, resolve=True)["ckpt"] == "some/where"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_runs_under_fast_dev_run(experiment: str, tmp_path: Path) -> None:
    """On the experiment's own dataset kind, written by its source's ``example_data`` in its real format: a new
    dataset's experiment runs here without a line of test code."""
    from reparam.data import DATASETS
    from reparam.training import train

    chosen = compose_config("train", [f"experiment={experiment}"], run_dir=tmp_path)
    data = DATASETS[chosen.data.dataset].example_data(tmp_path / "data")
    overrides = [
        f"experiment={experiment}",
        "debug=fast_dev_run",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        "callbacks.reparameterize.verify_samples=8",
        *(f"data.{key}={value}" for key, value in data.items()),
    ]
    if chosen.model.get("pretrained"):
        # pretrained weights from a local file (random: there is no download here)
        import timm
        from safetensors.torch import save_file

        weights = tmp_path / "weights.safetensors"
        save_file(
            {k: v.contiguous() for k, v in timm.create_model(chosen.model.name).state_dict().items()}, str(weights)
        )
        overrides.append(f"model.pretrained={weights}")
    cfg = compose_config("train", overrides, run_dir=tmp_path)
    summary = train(cfg)
    assert Path(summary.fused_dir, "model.safetensors").is_file()
    assert summary.fusion_argmax_agreement == 1.0
    assert summary.test_acc is not None


def test_default_sweeper_tolerates_failures_and_another_can_be_chosen(tmp_path: Path) -> None:
    assert compose_config("train", [], run_dir=tmp_path).hydra.sweeper._target_.endswith("FailTolerantSweeper")
    chosen = compose_config("train", ["hydra/sweeper=basic"], run_dir=tmp_path).hydra.sweeper._target_
    assert chosen == "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def test_block_options_reach_the_blocks_and_a_bad_one_is_one_clear_line(tmp_path: Path) -> None:
    from reparam import LinearAddBlock
    from reparam.errors import UserError
    from reparam.training import build_components

    demo = ["experiment=demo", "model.block=linear_add"]
    _, module, _ = build_components(
        compose_config("train", [*demo, "+model.block_options.trainable_scales=false"], run_dir=tmp_path / "ok")
    )
    blocks = [m for m in module.net.modules() if isinstance(m, LinearAddBlock)]
    assert blocks and not [n for n, _ in module.net.named_parameters() if n.endswith(".scale")]
    with pytest.raises(UserError, match=r"model config: block kind 'linear_add' has no option\(s\) \['scale'\]"):
        build_components(compose_config("train", [*demo, "+model.block_options.scale=2"], run_dir=tmp_path / "bad"))


@pytest.mark.parametrize("launcher", sorted(p.stem for p in (CONFIGS / "hydra" / "launcher").glob("*.yaml")))
def test_launcher_presets_compose_on_submitit(launcher: str, tmp_path: Path) -> None:
    cfg = compose_config(
        "train",
        [f"hydra/launcher={launcher}", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
        run_dir=tmp_path,
    )
    node = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    from hydra.utils import get_class

    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    assert issubclass(get_class(node["_target_"]), BaseSubmititLauncher)  # submitit's, or reparam's local one
    assert node["cpus_per_task"] >= 1  # each job's torch threads (reparam.launching)
    if launcher == "slurm_ddp":  # one task per GPU on every node, as Lightning's SLURMEnvironment expects
        assert (node["nodes"], node["tasks_per_node"], node["gpus_per_node"]) == (2, 4, 4)
    elif launcher == "slurm":
        assert (node["nodes"], node["tasks_per_node"], node["gpus_per_node"]) == (1, 1, 1)


def test_search_preset_reads_its_direction_from_the_metric_and_keeps_a_fixed_sweep_dir(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=demo", "hparams_search=demo"], run_dir=tmp_path)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSearchSweeper")
    assert "direction" not in cfg.hparams_search and cfg.optimized_metric == "best_val_acc"
    assert cfg.hydra.sweep.dir.endswith("demo/searches/demo")
    assert set(cfg.hydra.sweeper.params) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "module.label_smoothing",
        "data.batch_size",
        "model.block",
    }
