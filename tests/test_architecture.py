"""The layers docs/architecture.md describes hold in the code: no import circles anywhere (lazy
imports inside functions count: one that exists to dodge a circle is still a circle), the one-way
arrow orchestrator -> trainers, and no citation of a design file outside the repository."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "trainers")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `module` imports, at the top or inside a function."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):  # a package's own __init__
                imported.add(name)
    return imported


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(module, path, set(modules)) for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back_even_lazily():
    assert cycles(import_graph()) == []


def test_the_arrow_goes_one_way_orchestrator_to_trainers():
    backwards = {module: sorted(t for t in targets if t.startswith("orchestrator"))
                 for module, targets in import_graph().items() if module.startswith("trainers")}
    assert {module: targets for module, targets in backwards.items() if targets} == {}


def test_a_planted_circle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("folder", ["orchestrator", "trainers", "benchmarks", "tests", "docs", "infra"])
def test_nothing_cites_a_design_file_outside_the_repository(folder):
    citing = [str(path.relative_to(ROOT)) for path in (ROOT / folder).rglob("*")
              if path.is_file() and path.suffix in (".py", ".md", ".yaml", ".sh") and path.name != "test_architecture.py"
              and "DESIGN.md" in path.read_text(errors="ignore")]
    assert citing == []
