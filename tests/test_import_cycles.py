"""No module of the package imports itself back through others (issue 18).

Every module of ``src/napari_4dstem_ml`` is parsed with :mod:`ast` (nothing is imported) and
the graph of its imports of other modules of the package is built: module-level imports
(including those in class bodies and ``try`` blocks) and function-level (lazy) ones. A lazy
import hides a cycle from the interpreter but not from the design, so both count. Imports under
``if TYPE_CHECKING:`` never run and are recorded but not counted.

An edge goes to the module named: ``from .a import b`` is an edge to ``a.b`` when ``b`` is a
submodule, else to ``a``; the parent packages' ``__init__`` that Python runs on the way are not
edges (otherwise every package re-exporting its submodules would be a cycle). Dynamic imports
(``importlib.import_module`` with a computed name, e.g. ``training.__getattr__``) are not seen.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "napari_4dstem_ml"
PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Edges allowed to close a cycle, (importer, imported) -> the reason. Keep it short; ideally empty.
ALLOWED: dict[tuple[str, str], str] = {}

COUNTED_KINDS = ("module", "function")


@dataclass(frozen=True)
class Edge:
    """One import of a package module by another (``line`` in the importer's file)."""

    source: str
    target: str
    kind: str  # "module", "function" or "type_checking"
    line: int


def package_modules(root: Path = PACKAGE_ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_with_kind(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement of a module with where it runs: module, function, type_checking."""
    found: list[tuple[ast.Import | ast.ImportFrom, str]] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            child_kind = kind
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                child_kind = "type_checking" if kind == "type_checking" else "function"
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, kind))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                visit(ast.Module(body=child.body, type_ignores=[]), "type_checking")
                visit(ast.Module(body=child.orelse, type_ignores=[]), kind)
            else:
                visit(child, child_kind)

    visit(tree, "module")
    return found


def _resolve_base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """Absolute name of ``from <base> import ...`` (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        parts = parts[: -(node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def module_imports(modules: dict[str, Path], package: str = PACKAGE) -> list[Edge]:
    """Every import of one package module by another, with its kind."""
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, kind in _imports_with_kind(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve_base(module, is_package, node)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in dict.fromkeys(targets):
                # ``import a.b.c`` names a.b.c; keep the longest prefix that is a package module
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != module and target.startswith(package):
                    edges.append(Edge(module, target, kind, node.lineno))
    return edges


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of a directed graph, one per node that lies on any: its shortest way back.

    Each cycle is a list ``[a, b, ..., a]``; rotations of the same cycle are reported once.
    Every strongly connected component with more than one node (or a self-loop) gives at least one.
    """
    nodes = set(graph) | {t for targets in graph.values() for t in targets}
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for start in sorted(nodes):
        previous: dict[str, str] = {}
        queue = deque([start])
        found = None
        while queue and found is None:
            node = queue.popleft()
            for target in sorted(graph.get(node, ())):
                if target == start:
                    found = node
                    break
                if target not in previous:
                    previous[target] = node
                    queue.append(target)
        if found is None:
            continue
        path = [found]
        while path[-1] != start:
            path.append(previous[path[-1]])
        path.reverse()
        cycle = path  # start ... found
        key_index = cycle.index(min(cycle))
        key = tuple(cycle[key_index:] + cycle[:key_index])
        if key not in seen:
            seen.add(key)
            cycles.append([*key, key[0]])
    return cycles


def import_graph(edges: list[Edge]) -> dict[str, set[str]]:
    """The counted edges (module and function level, less ``ALLOWED``) as adjacency sets."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.kind in COUNTED_KINDS and (edge.source, edge.target) not in ALLOWED:
            graph.setdefault(edge.source, set()).add(edge.target)
    return graph


def describe(cycle: list[str], edges: list[Edge]) -> str:
    """``a → b → a`` with each step's line and kind."""
    short = [name.removeprefix(PACKAGE + ".") for name in cycle]
    steps = []
    for source, target in zip(cycle, cycle[1:], strict=False):
        where = [
            f"{e.kind}-level, line {e.line}"
            for e in edges
            if (e.source, e.target) == (source, target) and e.kind in COUNTED_KINDS
        ]
        steps.append(f"  {source.removeprefix(PACKAGE + '.')} imports "
                     f"{target.removeprefix(PACKAGE + '.')} ({'; '.join(where)})")
    return " → ".join(short) + "\n" + "\n".join(steps)


# ---------------------------------------------------------------------------------------------


def test_cycle_finder_on_a_hand_made_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": set(), "f": {"f"}}
    cycles = find_cycles(graph)
    assert cycles == [["a", "b", "c", "a"], ["f", "f"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    # two cycles sharing a node are both reported
    two = find_cycles({"a": {"b", "c"}, "b": {"a"}, "c": {"a"}})
    assert sorted(two) == [["a", "b", "a"], ["a", "c", "a"]]


def test_graph_builder_resolves_relative_and_lazy_imports(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("from .sub import b\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from .. import c\n"
        "if TYPE_CHECKING:\n    from ..d import Thing\n"
    )
    (root / "c.py").write_text("import os\n\ndef f():\n    from pkg.sub import b\n")
    (root / "d.py").write_text("class Thing:\n    from . import c\n")
    modules = package_modules(root, "pkg")
    assert set(modules) == {"pkg", "pkg.sub", "pkg.sub.b", "pkg.c", "pkg.d"}
    edges = {(e.source, e.target, e.kind) for e in module_imports(modules, "pkg")}
    assert edges == {
        ("pkg", "pkg.sub.b", "module"),
        ("pkg.sub.b", "pkg.c", "module"),
        ("pkg.sub.b", "pkg.d", "type_checking"),
        ("pkg.c", "pkg.sub.b", "function"),
        ("pkg.d", "pkg.c", "module"),
    }
    assert find_cycles(import_graph(module_imports(modules, "pkg"))) == [
        ["pkg.c", "pkg.sub.b", "pkg.c"]
    ]


def test_the_graph_sees_the_package():
    modules = package_modules()
    edges = module_imports(modules)
    pairs = {(e.source, e.target) for e in edges}
    # a few imports known to exist, so an empty graph cannot pass
    assert len(modules) > 50
    assert (f"{PACKAGE}.models.cnn4d", f"{PACKAGE}.models.conv4d") in pairs
    assert (f"{PACKAGE}", f"{PACKAGE}.io") in pairs
    assert any(e.kind == "function" for e in edges)


def test_allowed_edges_exist():
    pairs = {(e.source, e.target) for e in module_imports(package_modules())}
    stale = [edge for edge in ALLOWED if edge not in pairs]
    assert not stale, f"ALLOWED names imports that no longer exist: {stale}"


def test_no_import_cycles():
    edges = module_imports(package_modules())
    cycles = find_cycles(import_graph(edges))
    if cycles:
        pytest.fail(
            f"{len(cycles)} import cycle(s) in {PACKAGE}:\n\n"
            + "\n\n".join(describe(cycle, edges) for cycle in cycles)
        )
