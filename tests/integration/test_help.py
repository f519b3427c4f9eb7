"""--help of both entry points: their own description and config groups, every listed option real."""

import re
import subprocess
import sys

import pytest
from helpers import CONFIGS, ROOT
from omegaconf import OmegaConf

# building blocks of callbacks/default.yaml, selectable but not listed as choices
UNLISTED = {
    "callbacks": {
        "finite_loss",
        "learning_rate_monitor",
        "model_checkpoint",
        "progress_bar",
        "reparameterize",
        "speed_monitor",
    }
}


def groups_of(config: str) -> set[str]:
    defaults = OmegaConf.load(CONFIGS / f"{config}.yaml").defaults
    names = {next(iter(d)) if isinstance(d, dict) or OmegaConf.is_dict(d) else d for d in defaults}
    return {n for n in names if n not in ("_self_", "paths", "hydra")}


# slow: each runs an entry point in a subprocess (imports and Hydra: 15 s on 2 cores); make test-slow and CI run them
@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "deploy.py"])
def test_help_lists_this_entry_points_groups_and_their_real_options(script: str, tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"{script} (reparam-{script[:-3]}): ")
    assert "powered by Hydra" not in proc.stdout
    section = proc.stdout.split("== Config groups (group=option) ==")[1].split("==")[0]
    listed = dict(re.findall(r"^(\w+): (.+)$", section, re.M))
    assert set(listed) == groups_of(script[:-3])
    for group, options in listed.items():
        real = {p.stem for p in (CONFIGS / group).glob("*.yaml")}
        shown = {o.strip() for o in options.split(",")}
        expected = real - UNLISTED.get(group, set())
        assert shown == expected, (
            f"{script} --help lists {group}: {sorted(shown)}, configs/{group}/ holds {sorted(expected)}: a new option "
            f"goes in the help template of configs/{script[:-3]}.yaml (hydra.help.template) too"
        )
