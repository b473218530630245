"""The import graph of ``zpe_core`` and the services, read from the source with ``ast``.

Module-level and function-level imports both count (a lazy import hides a cycle,
it does not remove it); imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "libs" / "zpe_core" / "src"
WORKER = ROOT / "services" / "worker" / "src"

#: The data model of jobs and tasks and its state machine: shared by every layer (physics
#: plans TaskSpecs, the store keeps Jobs and moves tasks through the transitions), so for the
#: package graph it is its own node, below the job machinery.
MODEL_MODULES = {"zpe_core.jobs.models", "zpe_core.jobs.transitions"}


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module ``tree`` imports at run time, anywhere in its body."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            yield base
            # ``from zpe_core.jobs import runner`` imports the module zpe_core.jobs.runner
            yield from (f"{base}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


def module_graph(src: Path, prefix: str) -> dict[str, set[str]]:
    """Module -> the modules of ``prefix`` it imports (existing modules only)."""
    files = {_module_name(p, src): p for p in (src / prefix).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        found = {m for m in _imports(tree, name, path.name == "__init__.py") if m in files}
        # ``from zpe_core.jobs import transitions`` counts as importing the submodule; the
        # package's __init__ is not counted beside a submodule imported from it.
        packages = {m for m in found if any(o.startswith(m + ".") for o in found)}
        graph[name] = found - packages - {name}
    return graph


@cache
def core_graph() -> dict[str, set[str]]:
    return module_graph(CORE, "zpe_core")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def group_of(module: str) -> str:
    """The subpackage (or top-level module) of a zpe_core module; the model is its own."""
    if module in MODEL_MODULES:
        return "jobs.models"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "zpe_core"


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, imported in graph.items():
        edges = packages.setdefault(group_of(module), set())
        edges.update(group_of(m) for m in imported if group_of(m) != group_of(module))
    return packages


def test_find_cycle_finds_a_cycle_and_only_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_lazy_and_relative_imports_are_seen() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import hidden\n"
        "def f():\n    from zpe_core.jobs import runner\n    from . import sibling\n"
    )
    found = set(_imports(tree, "zpe_core.dispatch.inprocess", False))
    assert {"zpe_core.jobs.runner", "zpe_core.dispatch.sibling"} <= found
    assert "hidden" not in found


def test_zpe_core_modules_import_no_cycle() -> None:
    graph = core_graph()
    assert "zpe_core.jobs.service" in graph and "zpe_core.bootstrap" in graph
    assert find_cycle(graph) is None


def test_zpe_core_subpackages_import_no_cycle() -> None:
    packages = package_graph(core_graph())
    assert {"jobs", "dispatch", "store", "physics", "control"} <= set(packages)
    assert find_cycle(packages) is None


@pytest.mark.parametrize("forbidden", ["jobs", "store", "dispatch", "control", "bootstrap"])
def test_physics_imports_no_machinery(forbidden: str) -> None:
    """Physics may use the data model (it plans TaskSpecs), nothing that runs jobs."""
    assert "zpe_core.jobs.transitions" in core_graph()
    for module, imported in core_graph().items():
        if group_of(module) == "physics":
            assert not {m for m in imported if group_of(m) == forbidden}, module


def test_dispatchers_do_not_import_the_job_machinery() -> None:
    """The service uses the dispatcher port; the dispatchers never call back into it."""
    for module, imported in core_graph().items():
        if group_of(module) == "dispatch":
            assert not {m for m in imported if group_of(m) in ("jobs", "store", "bootstrap")}


def test_the_worker_service_imports_no_control_module() -> None:
    files = list((WORKER / "zpe_worker").rglob("*.py"))
    assert files
    for path in files:
        name = _module_name(path, WORKER)
        imported = set(_imports(ast.parse(path.read_text()), name, path.name == "__init__.py"))
        assert not {m for m in imported if m.startswith("zpe_core.control")}, path
