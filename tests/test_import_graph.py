"""medseg's modules import one another in one direction, and each stays small.

The graph is read from the source with :mod:`ast`, without importing anything. Its nodes are
the modules under ``medseg/`` (a package is its ``__init__.py``); an edge ``a -> b`` is an
``import`` or ``from ... import`` in ``a`` that names ``b`` (``from medseg.x import y`` names
the module ``medseg.x.y`` when there is one, else ``medseg.x``).

Which imports count:

* module-level imports, including those under a module-level ``if``/``try``;
* imports inside functions and methods too. Deferring an import to call time hides a circle
  from Python but not from the design: the stages still depend on each other both ways.
  medseg defers imports to keep ``medseg --help`` fast and to load the 2D path only for 2D
  models, never to break a circle, so the whole graph must be acyclic;
* not imports under ``if TYPE_CHECKING:``: they never run and serve annotations only;
* not the implicit import of a module's parent packages: a package's ``__init__`` re-exports
  its children, and a child importing a sibling is not a circle in the design;
* not modules named by strings (``importlib.import_module`` in ``medseg.cli.main``, the
  ``_target_`` of bundle configs): those are data, resolved when a command or config runs.

Separately, no module under ``medseg/`` may be longer than :data:`MAX_LINES` lines
(STYLE.md: small modules, one job each).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medseg"
MAX_LINES = 400

#: ``module -> {imported module: (line, "module" | "function")}``
Graph = dict[str, dict[str, tuple[int, str]]]


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``package``."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _type_checking_only(tree: ast.Module) -> set[int]:
    """The ``id`` of every node under an ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                skipped.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return skipped


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run on import: the body, and the branches of module-level ``if`` and ``try``."""
    for statement in body:
        yield statement
        if isinstance(statement, ast.If):
            yield from _module_level(statement.body + statement.orelse)
        elif isinstance(statement, ast.Try):
            handlers = [s for handler in statement.handlers for s in handler.body]
            yield from _module_level(statement.body + handlers + statement.orelse + statement.finalbody)


def _named(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement in ``module`` refers to (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [f"{base}.{alias.name}" for alias in node.names]


def import_graph(package: Path) -> Graph:
    """The import graph between the modules of ``package`` (see the module notes for what counts)."""
    modules = module_files(package)
    graph: Graph = {name: {} for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skipped = _type_checking_only(tree)
        top = {id(s) for s in _module_level(tree.body)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in skipped:
                continue
            for target in _named(node, name, path.name == "__init__.py"):
                while target not in modules and "." in target:  # an attribute of a module: the module
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    kind = "module" if id(node) in top else "function"
                    graph[name].setdefault(target, (node.lineno, kind))
    return graph


def find_cycle(graph: Graph, kinds: tuple[str, ...] = ("module", "function")) -> list[str] | None:
    """One circle of imports of the given kinds, as ``[a, b, ..., a]``, or ``None``."""
    edges = {a: sorted(b for b, (_, kind) in targets.items() if kind in kinds) for a, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in edges.get(node, []):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def describe_cycle(graph: Graph, cycle: list[str]) -> str:
    """``a -> b (a.py line 12, function-level) -> a (...)``."""
    steps = [cycle[0]]
    for a, b in itertools.pairwise(cycle):
        line, kind = graph[a][b]
        steps.append(f"{b} ({a} line {line}, {kind}-level)")
    return " -> ".join(steps)


def long_modules(package: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """Module -> line count, for the modules of ``package`` longer than ``limit`` lines."""
    counts = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in module_files(package).items()}
    return {name: n for name, n in counts.items() if n > limit}


def test_module_level_imports_have_no_cycle():
    graph = import_graph(PACKAGE)
    cycle = find_cycle(graph, kinds=("module",))
    assert cycle is None, f"import cycle between medseg modules: {describe_cycle(graph, cycle)}"


def test_imports_have_no_cycle_even_inside_functions():
    graph = import_graph(PACKAGE)
    cycle = find_cycle(graph)
    assert cycle is None, (
        f"import cycle between medseg modules (a deferred import still ties the stages both ways): "
        f"{describe_cycle(graph, cycle)}"
    )


def test_no_module_is_longer_than_the_limit():
    long = long_modules(PACKAGE)
    assert not long, f"modules over {MAX_LINES} lines (split them, one job each): " + ", ".join(
        f"{name} ({n} lines)" for name, n in sorted(long.items()))


def test_the_graph_sees_medseg_as_it_is():
    """The checks above read the real package: known edges are there, and of the right kind."""
    graph = import_graph(PACKAGE)
    assert len(graph) > 100
    assert graph["medseg.inference.volume_task"]["medseg.inference.writer"][1] == "module"
    assert graph["medseg.inference.model"]["medseg.inference.planar"][1] == "function"  # the 2D path, deferred
    assert "medseg.inference.writer" not in graph["medseg.inference.preprocess"]  # read stage, write stage


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize("deferred", [False, True])
def test_a_cycle_is_found_and_named(tmp_path: Path, deferred: bool):
    back = "def f():\n    from pkg.a import x\n" if deferred else "from pkg.a import x\n"
    package = _write(tmp_path, {
        "__init__.py": "from pkg.a import x\n",  # a package re-exporting its child is no cycle
        "a.py": "from pkg import sub\nfrom .sub.b import y\nx = 1\n",
        "sub/__init__.py": "",
        "sub/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n" + back + "y = 2\n",
        "c.py": "import pkg.sub.b\n",
    })
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub": (1, "module"), "pkg.sub.b": (2, "module")}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    assert (find_cycle(graph, kinds=("module",)) is None) == deferred
    message = describe_cycle(graph, find_cycle(graph))
    line, kind = (5, "function") if deferred else (4, "module")
    assert message == f"pkg.a -> pkg.sub.b (pkg.a line 2, module-level) -> pkg.a (pkg.sub.b line {line}, {kind}-level)"


def test_a_type_checking_import_is_no_cycle(tmp_path: Path):
    package = _write(tmp_path, {
        "__init__.py": "",
        "a.py": "import pkg.b\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n",
    })
    assert find_cycle(import_graph(package)) is None


def test_a_long_module_is_named(tmp_path: Path):
    package = _write(tmp_path, {"__init__.py": "", "short.py": "x = 1\n" * MAX_LINES,
                                "long.py": "x = 1\n" * (MAX_LINES + 1)})
    assert long_modules(package) == {"pkg.long": MAX_LINES + 1}
