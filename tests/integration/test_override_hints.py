"""A misspelled override: Hydra's refusal is followed by one hint naming the setting the user most likely meant.

The checks run the hint function on the real configs; the entry points are run as a user types them, from another
directory, and nothing else (no run directory, no training) happens.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, compose_config, run_entry
from omegaconf import OmegaConf

from reparam.overrides import unknown_key_hints

CONFIGS = ROOT / "configs"


@pytest.mark.parametrize(
    ("config", "args", "hint"),
    [
        (
            "train",
            ["trainer.max_epoch=3"],
            "hint: trainer has no setting 'max_epoch': did you mean trainer.max_epochs=3 ?",
        ),
        # a key the chosen experiment brings: composed with the command line's own group choices
        (
            "train",
            ["experiment=demo", "module.label_smoothin=0.1"],
            "hint: module has no setting 'label_smoothin': did you mean module.label_smoothing=0.1 ?",
        ),
        # a sweep keeps its values
        (
            "train",
            ["-m", "optimizer.lrr=0.1,0.2"],
            "hint: optimizer has no setting 'lrr': did you mean optimizer.lr=0.1,0.2 ?",
        ),
        # an argument of the node's _target_ that the config does not set: Hydra's "+" is the fix
        (
            "train",
            ["trainer.accumulate_grad_batches=4"],
            "hint: trainer does not set 'accumulate_grad_batches', an argument of lightning.pytorch.Trainer: add it "
            "with +trainer.accumulate_grad_batches=4",
        ),
        (
            "train",
            ["trainer.accumulate_grad_batch=4"],
            "hint: trainer has no setting 'accumulate_grad_batch': did you mean +trainer.accumulate_grad_batches=4 ?",
        ),
        ("deploy", ["benchmark.batch_size=[1,8]"], "did you mean benchmark.batch_sizes=[1,8] ?"),
        # deploy's data.* go to the training run's datamodule: an option its config does not list is added with "+"
        (
            "deploy",
            ["ckpt=x", "data.skip_bad_images=true"],
            "hint: data does not set 'skip_bad_images', an argument of reparam.data.ImageDataModule: add it with "
            "+data.skip_bad_images=true",
        ),
        ("serve", ["serve.max_batchsize=4"], "did you mean serve.max_batch_size=4 ?"),
        # an empty mapping: the README's form once lacked the "+", and the hint listed nothing ("its settings: ")
        (
            "train",
            ["model.block=mobileone", "model.block_options.num_conv_branches=4"],
            "hint: model.block_options holds no settings yet: add it with +model.block_options.num_conv_branches=4",
        ),
    ],
)
def test_a_misspelled_key_gets_the_setting_it_meant(config: str, args: list[str], hint: str) -> None:
    hints = unknown_key_hints(CONFIGS, config, args)
    assert len(hints) == 1 and hint in hints[0], hints
    # what the hint says to type is accepted in place of the refused override, and lands where it says
    suggested = re.search(r"(?:did you mean|add it with) (\S+?)(?: \?)?$", hints[0])[1]
    key, value = suggested.lstrip("+").split("=", 1)
    if "-m" in args:  # a sweep: compose its first value
        value = value.split(",")[0]
    others = [a for a in args[:-1] if not a.startswith("-")] + (["ckpt=x"] if config != "train" else [])
    cfg = compose_config(config, [*others, f"{suggested.split('=')[0]}={value}"])
    landed = OmegaConf.select(cfg, key)
    assert (OmegaConf.to_container(landed) if OmegaConf.is_config(landed) else landed) == yaml.safe_load(value)


def test_a_value_that_needs_hydras_runtime_does_not_stop_the_hint() -> None:
    (hint,) = unknown_key_hints(CONFIGS, "train", ["paths.output_dir=/x", "trainer.max_epoch=1"])
    assert hint.endswith("did you mean trainer.max_epochs=1 ?")


def test_a_key_nothing_is_close_to_lists_the_settings_there() -> None:
    (hint,) = unknown_key_hints(CONFIGS, "train", ["nonsense=1"])
    assert hint.startswith("hint: the config has no setting 'nonsense' (its settings: ")
    assert "trainer" in hint and "optimized_metric" in hint


@pytest.mark.parametrize(
    "args",
    [
        ["trainer.max_epochs=3", "experiment=demo", "optimizer.lr=0.1"],  # all known
        ["+trainer.foo=1", "trainer.foo.bar=2"],  # added on the same command line
        ["experiment=dmo", "trainer.max_epoch=3"],  # a group choice that does not exist: Hydra lists the choices
        ["trainer.max_epoch=(("],  # a syntax error: Hydra says where
        ["--config-name", "other", "trainer.max_epoch=3"],  # another config than the one these hints would check
        ["experiment=glob(*)", "trainer.max_epoch=3"],  # options only Hydra's config loader can expand
        ["experiment=demo", "model.widths.9=1"],  # the key exists, the list index does not: Hydra's message says
    ],
)
def test_no_hint_where_there_is_nothing_to_add(args: list[str]) -> None:
    assert unknown_key_hints(CONFIGS, "train", args) == []


def test_a_required_value_given_on_the_command_line_is_known() -> None:
    # ckpt is ??? in deploy.yaml and serve.yaml: a key that exists, waiting for its value
    assert unknown_key_hints(CONFIGS, "deploy", ["ckpt=x", "benchmark.batch_sizes=[1]"]) == []
    assert unknown_key_hints(CONFIGS, "serve", ["ckpt=x", "serve.port=9"]) == []


@pytest.mark.parametrize(
    ("script", "args", "hint"),
    [
        ("train.py", ["experiment=demo", "trainer.max_epoch=1"], "did you mean trainer.max_epochs=1 ?"),
        ("deploy.py", ["ckpt=x", "benchmark.batch_size=[1]"], "did you mean benchmark.batch_sizes=[1] ?"),
        ("serve.py", ["ckpt=x", "serve.max_batchsize=4"], "did you mean serve.max_batch_size=4 ?"),
    ],
)
def test_each_entry_point_ends_hydras_refusal_with_the_hint(
    script: str, args: list[str], hint: str, tmp_path: Path, run_env
) -> None:
    proc = run_entry(script, args, run_env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Could not override" in proc.stderr  # Hydra's own message stays
    assert proc.stderr.rstrip().splitlines()[-1].endswith(hint), proc.stderr[-2000:]
    assert sum(line.startswith("hint: ") for line in proc.stderr.splitlines()) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing ran: no outputs directory


def test_the_console_command_gives_the_same_hint(tmp_path: Path, run_env) -> None:
    command = shutil.which("reparam-train", path=str(Path(sys.executable).parent))
    if command is None:
        pytest.skip("reparam is not installed with its console scripts in this environment")
    proc = subprocess.run(
        [command, "trainer.max_epoch=2"], cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.rstrip().splitlines()[-1] == (
        "hint: trainer has no setting 'max_epoch': did you mean trainer.max_epochs=2 ?"
    )


def test_an_option_the_chosen_dataset_does_not_read_is_not_offered_with_a_plus() -> None:
    """CIFAR does not read skip_bad_images: "+data.skip_bad_images=true" was suggested, then refused by the datamodule
    (data=cifar10 does not read data.skip_bad_images). Every data.* setting CIFAR reads is in its config."""
    (hint,) = unknown_key_hints(CONFIGS, "train", ["data.skip_bad_images=true"])
    assert hint.startswith("hint: data has no setting 'skip_bad_images' (its settings: dataset, data_dir,"), hint
    assert "+" not in hint, hint
