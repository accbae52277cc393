"""No import cycle between the modules of presencectl/, not even one hidden inside a function.

The test reads every module's source (AST, nothing is imported) and collects each ``import`` and
``from … import`` wherever it stands: at the top, inside a function, inside ``try`` or ``if``, and
under ``if TYPE_CHECKING:`` too. Those last never execute, so they cannot deadlock a load; they are
counted all the same because a cycle in types is still two modules that cannot be understood,
tested or split apart one without the other (``connect/client.py`` ↔ ``connect/directory.py`` was
such a pair: one direction ran inside functions, the other was an annotation). The failure message
marks an edge that exists only for the type checker with ``-(types)->`` so the fix is easy to aim.

An import names a module: ``from a.b import c`` depends on ``a.b.c`` when that is a module,
otherwise on ``a.b``. A package's ``__init__`` is a module like any other; the implicit import of
a parent package when a child loads is not counted (every child would otherwise form a cycle with
a package that re-exports it).
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

PACKAGE = "presencectl"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree: ast.AST, *, types_too: bool) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in the tree; those under ``if TYPE_CHECKING:`` only if types_too."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if not types_too and isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the ``else`` of TYPE_CHECKING does run
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def dependencies(known: dict[str, Path], *, types_too: bool = True) -> dict[str, set[str]]:
    """Module → the modules of this package it imports (at run time only, unless types_too)."""
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for node in _imports(tree, types_too=types_too):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            source = _absolute(module, path.name == "__init__.py", node)
            for alias in node.names:
                child = f"{source}.{alias.name}"
                targets.add(child if child in known else source)
        graph[module] = {target for target in targets if target in known and target != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, each as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan; the package is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_one_cycle(graph, component) for component in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component has one


def describe(cycle: list[str], runs: dict[str, set[str]]) -> str:
    text = cycle[0]
    for source, target in itertools.pairwise(cycle):
        text += (" -> " if target in runs[source] else " -(types)-> ") + target
    return text


def test_no_import_cycle_between_modules() -> None:
    known = modules()
    found = cycles(dependencies(known))
    runs = dependencies(known, types_too=False)
    assert not found, "import cycles:\n" + "\n".join(describe(cycle, runs) for cycle in found)


# The walker itself, on small trees: a test that could not fail would prove nothing.


def _graph_of(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    root = tmp_path / PACKAGE
    for name, text in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return dependencies(modules(root))


TYPES_ONLY_A = (
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from presencectl import b\n"
)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {
                "__init__.py": "",
                "a.py": "import presencectl.b\n",
                "b.py": "def f():\n    from presencectl import a\n",
            },
            [["presencectl.a", "presencectl.b", "presencectl.a"]],
            id="inside-a-function",
        ),
        pytest.param(
            {
                "__init__.py": "",
                "p/__init__.py": "",
                "p/a.py": "from . import b\n",
                "p/b.py": "from .a import thing\n",
            },
            [["presencectl.p.a", "presencectl.p.b", "presencectl.p.a"]],
            id="relative",
        ),
        pytest.param(
            {"__init__.py": "", "a.py": TYPES_ONLY_A, "b.py": "from presencectl import a\n"},
            [["presencectl.a", "presencectl.b", "presencectl.a"]],
            id="type-checking-counts",
        ),
        pytest.param(
            {
                "__init__.py": "",
                "p/__init__.py": "from presencectl.p.a import x\n",
                "p/a.py": "x = 1\n",
            },
            [],
            id="package-re-exports-child",
        ),
    ],
)
def test_walker_finds_the_cycles_it_should(
    tmp_path: Path, files: dict[str, str], expected: list[list[str]]
) -> None:
    assert cycles(_graph_of(tmp_path, files)) == expected


def test_an_edge_only_for_the_type_checker_is_named_so(tmp_path: Path) -> None:
    files = {"__init__.py": "", "a.py": TYPES_ONLY_A, "b.py": "from presencectl import a\n"}
    graph = _graph_of(tmp_path, files)
    runs = dependencies(modules(tmp_path / PACKAGE), types_too=False)
    [cycle] = cycles(graph)
    assert describe(cycle, runs) == "presencectl.a -(types)-> presencectl.b -> presencectl.a"
