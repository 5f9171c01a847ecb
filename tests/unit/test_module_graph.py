"""The code stays small enough to read and free of import circles: no Python module of the
project over MAX_LINES lines, and no circle among the project's own modules. Every import
counts, wherever it sits: at the top, under ``if TYPE_CHECKING:``, inside a function. No
services: the files and ``ast``."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500
# Where the project's Python lives, and the folder each one's imports are relative to (the
# import root): system/ holds ``iot``, firmware/lib ``iotcore``; the board runs firmware/'s own
# files by their bare names; loadtest, chaos, tests and scripts import from the repository root.
SOURCES = {
    "system": ROOT / "system",
    "firmware/lib": ROOT / "firmware" / "lib",
    "loadtest": ROOT,
    "chaos": ROOT,
    "tests": ROOT,
    "scripts": ROOT,
}
SKIP = {".venv", "var", "node_modules", "__pycache__"}


@cache
def modules() -> dict[str, Path]:
    """Module name -> file, for every Python file of the project."""
    found: dict[str, Path] = {}
    for folder, import_root in SOURCES.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            if SKIP & set(path.relative_to(ROOT).parts):
                continue
            found[_name(path, import_root)] = path
    # firmware/'s own files (main.py, handlers.py, ...) are top-level modules on the board
    for path in sorted((ROOT / "firmware").glob("*.py")):
        found[path.stem] = path
    return found


def _name(path: Path, import_root: Path) -> str:
    parts = list(path.relative_to(import_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(name: str, path: Path) -> str:
    """The package a module's relative imports start from."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _known(name: str) -> str | None:
    """The project module ``name`` loads: itself, or the nearest enclosing project module."""
    mods = modules()
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(name: str, path: Path) -> set[str]:
    """The project modules that ``name`` imports, anywhere in its file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    mods = modules()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name)
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name, path)
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = ".".join(p for p in (base, node.module) if p)
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}" if source else alias.name
                target = submodule if submodule in mods else _known(source)
                if target:
                    found.add(target)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path) for name, path in modules().items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # iterative: deep chains must not hit the recursion limit
        nonlocal counter
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def _path_through(edges: dict[str, set[str]], component: list[str]) -> list[str]:
    """One circle inside a component, for the failure message: a -> b -> ... -> a."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for child in sorted(edges[node] & members):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in previous:
                previous[child] = node
                frontier.append(child)
    return component


def test_the_scan_finds_the_project() -> None:
    names = modules()
    for expected in ("iot.api.deps", "iot.cli.main", "iotcore.core", "loadtest.device",
                     "chaos.fleet", "tests.unit.test_module_graph", "main"):
        assert expected in names, expected
    assert "iot.api.broker" in imports_of("iot.api.deps", names["iot.api.deps"])


def test_no_module_is_over_the_limit() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by subject): {long}"


def test_no_import_circle() -> None:
    edges = graph()
    found = [" -> ".join(_path_through(edges, c)) for c in circles(edges)]
    assert not found, "import circles (imports under TYPE_CHECKING and in functions count):\n" + (
        "\n".join(found)
    )


def test_the_circle_finder_sees_type_checking_function_and_relative_imports(
    tmp_path: Path,
) -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert circles(edges) == [["a", "b", "c"]]
    assert _path_through(edges, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import deps\n"
        "from .broker import Publisher\n"
        "from iot.api import metrics, not_a_module\n"
        "if TYPE_CHECKING:\n    from iot.commands.service import Commands\n"
        "def f():\n    import iot.settings\n"
    )
    fake = tmp_path / "ingest.py"
    fake.write_text(source)
    found = imports_of("iot.api.ingest", fake)
    assert {
        "iot.api.deps", "iot.api.broker", "iot.api.metrics", "iot.api",
        "iot.commands.service", "iot.settings",
    } <= found
