"""Imports flow one way, floor by floor (STYLE.md): a module imports only from the floors below.

Every import statement counts, those inside functions too (torch and MLflow are imported lazily,
but an upward import is a dependency wherever it sits).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import maskfind_pipeline

PACKAGE = Path(maskfind_pipeline.__file__).parent
GROUND = {"core_config", "locations", "version", "storage"}

# What each top-level part of the package may import from the package, besides itself.
ALLOWED: dict[str, set[str]] = {
    "core_config": set(),
    "locations": set(),
    "version": set(),
    "storage": set(),
    "alerts": set(),  # log and Slack; only defs/ sends alerts
    "data": GROUND,
    "synthetic": GROUND | {"data"},  # the contact sheet grid (data.contact_sheet)
    "ml": GROUND | {"data"},
    "registry": GROUND | {"ml"},  # it stores models; it does not load datasets
    "serving": GROUND | {"data", "ml"},  # the production day's engine: no registry, no flows
    "evaluation": GROUND | {"data"},  # cells, the gate and planning are pure
    "labeling": GROUND | {"data"},  # Label Studio and CVAT: the queue out, answers back
    "flows": GROUND | {"data", "synthetic", "ml", "registry", "evaluation", "labeling", "serving"},
    "defs": GROUND | {"alerts", "data", "ml", "registry", "evaluation", "flows", "labeling"},
    "definitions": {"defs"},
    "demo": GROUND | {"data", "synthetic", "ml", "evaluation", "flows", "labeling"},
    "cli": GROUND
    | {"data", "synthetic", "ml", "registry", "evaluation", "flows", "labeling"}
    | {"definitions", "demo"},
}
DAGSTER_ALLOWED = {"defs", "definitions", "cli", "demo"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{path}: use absolute imports"
            if node.module == "maskfind_pipeline":  # from maskfind_pipeline import synthetic
                yield from (f"{node.module}.{alias.name}" for alias in node.names)
            else:
                yield node.module


def _part(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_from_floors_below(path: Path) -> None:
    part = _part(path)
    assert part in ALLOWED, f"{part} has no floor yet: add it to ALLOWED"
    for module in _imports(path):
        top, _, rest = module.partition(".")
        if top == "maskfind_pipeline":
            target = rest.partition(".")[0]
            assert target == part or target in ALLOWED[part], f"{part} imports {module}"
        if top in ("dagster", "dagster_pipes", "dagster_webserver"):
            assert part in DAGSTER_ALLOWED, f"{part} imports {module}: Dagster stays in defs/"


def test_the_table_knows_every_part_of_the_package() -> None:
    parts = {_part(p) for p in _modules()}
    assert parts <= set(ALLOWED), parts - set(ALLOWED)
    assert "testing" not in parts


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (`from a.b import c` counts as a.b.c when c is
    a module, else a.b)."""
    modules = {_module(p) for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        found = set()
        for name in _imports(path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            found.add(name)
        graph[_module(path)] = found & modules - {_module(path), "maskfind_pipeline"}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            if group:
                found.append(sorted([node, *group]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_two_modules_import_each_other() -> None:
    """Not even through others, nor lazily: a loop means two modules that are one idea (the
    registry's run logging and its pyfunc models were)."""
    assert _cycles(_import_graph()) == []


def test_the_cycle_finder_finds_a_loop() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
