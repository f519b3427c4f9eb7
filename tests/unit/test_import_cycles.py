"""No import cycle among the modules under src/, counting every import the source names: top-level ones, those under
``if TYPE_CHECKING:`` and those inside functions. A cycle hidden behind a deferred import breaks as soon as someone
moves that import to the top of the file, so it counts as a cycle here.

Edges, from parsing each module (nothing is imported):

- ``import a.b.c`` and ``from a.b import c`` where ``a.b.c`` is a module: an edge to ``a.b.c``;
- ``from a.b import name`` where ``name`` is not a module: an edge to ``a.b`` (the package's ``__init__.py``);
- relative imports are resolved against the importing module's package.

Python's implicit import of the parent packages is not an edge: otherwise every package ``__init__`` that imports its
own submodules would be a cycle. A submodule that imports a name *from its package* (``from . import X``) is one,
though: the package's ``__init__`` must have finished for the name to exist.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
FIRST_PARTY = ("reparam", "hydra_plugins")


def module_names(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Every module under ``root/<package>``: dotted name -> file (a package is its ``__init__.py``)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _package_of(name: str, path: Path) -> str:
    """The package a relative import in this module is resolved against."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """The first-party modules ``name`` imports, anywhere in its file, with the line of each import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in modules:  # import a.b.c of an attribute path: its longest module
                    target = target.rpartition(".")[0]
                if target:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name, path)
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source.split(".")[0] not in modules and source not in modules:
                continue  # third-party or standard library
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    yield submodule, node.lineno
                elif source in modules:
                    yield source, node.lineno


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """module -> {imported module: line of its first import}; self-imports left out."""
    modules = module_names(root, packages)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for target, line in imports_of(name, path, modules):
            if target != name:
                edges.setdefault(target, line)
    return graph


def tangles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each module reaches every other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [sorted(component) for component in components]


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle per tangle, as a path ``a, b, ..., a``."""
    return [_cycle_through(tangle, graph) for tangle in tangles(graph)]


def _cycle_through(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest cycle from the component's first module back to itself (breadth first, inside the component)."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt in members and nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component always has one


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)) + f" -> {cycle[-1]}"


def test_no_import_cycle_under_src() -> None:
    graph = import_graph(SRC, FIRST_PARTY)
    assert len(graph) > 50, f"found only {len(graph)} modules under {SRC}"  # the walk saw the source tree
    found = [(cycle, tangle) for tangle in tangles(graph) for cycle in [_cycle_through(tangle, graph)]]
    assert not found, "import cycles (top-level, TYPE_CHECKING or function-level imports):\n" + "\n".join(
        describe(cycle, graph) + ("" if len(tangle) < len(cycle) else f"\n  (all of {', '.join(tangle)} are tangled)")
        for cycle, tangle in found
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_cycles_hidden_behind_deferred_imports(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "from .a import A\n",
        "pkg/a.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .sub.b import B\nA = 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "def load():\n    import pkg.c\n",
        "pkg/c.py": "from . import A\n",  # a name from the package: an edge to its __init__
        "pkg/d.py": "import os\nfrom .sub import b\n",  # b is a submodule: an edge to pkg.sub.b, not pkg.sub
    }
    _write(tmp_path, files)
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.d"] == {"pkg.sub.b": 2}
    cycles = find_cycles(graph)
    assert cycles == [["pkg", "pkg.a", "pkg.sub.b", "pkg.c", "pkg"]]
    assert describe(cycles[0], graph).startswith("pkg (line 1) -> pkg.a (line 4) -> pkg.sub.b (line 2) -> pkg.c")

    _write(tmp_path, {"pkg/c.py": "A = 2\n"})  # the cycle broken: nothing to report
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == []
