"""The README's layout map names every module and config group there is, and nothing that is not there."""

import re

from helpers import ROOT


def layout_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    return block.splitlines()


def section(lines: list[str], head: str) -> list[str]:
    """The indented lines under ``head`` (a line starting with it), up to the next line that is not indented."""
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break
        body.append(line)
    return body


def names_in(lines: list[str]) -> set[str]:
    """``x.py`` and ``x/`` in the name columns: a line is name, description[, name, description] (columns apart by
    two or more spaces; a short module may share a line with another), and a continued description has no name."""
    found: set[str] = set()
    for line in lines:
        columns = re.split(r"\s{2,}", line.strip())
        for names in columns[::2]:
            found |= set(re.findall(r"\b(\w+\.py)\b", names)) | set(re.findall(r"(\w+/)", names))
    return found


def test_the_layout_names_every_module_under_src_reparam_and_nothing_else() -> None:
    package = ROOT / "src" / "reparam"
    there = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    there |= {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").exists()}
    named = names_in(section(layout_block(), "src/reparam/"))
    assert named == there, f"README layout: missing {sorted(there - named)}, not there {sorted(named - there)}"


def test_the_layout_names_every_config_group_and_nothing_else() -> None:
    there = {f"{p.name}/" for p in (ROOT / "configs").iterdir() if p.is_dir()}
    named = names_in(section(layout_block(), "configs/"))
    assert named == there, f"README layout: missing {sorted(there - named)}, not there {sorted(named - there)}"


def test_the_layout_names_every_hydra_plugin() -> None:
    there = {p.name for p in (ROOT / "src" / "hydra_plugins").iterdir() if (p / "__init__.py").exists()}
    lines = layout_block()
    start = next(i for i, line in enumerate(lines) if line.startswith("src/hydra_plugins/"))
    text = "\n".join([lines[start], *section(lines, "src/hydra_plugins/")])
    named = set(re.findall(r"\b(reparam_\w+)\b", text))
    assert named == there, f"README layout: missing {sorted(there - named)}, not there {sorted(named - there)}"
