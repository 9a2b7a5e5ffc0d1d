"""The package's architecture, checked: layers import only downwards, no import circles.

Layers, bottom to top (a module may import its own layer and the ones below)::

    values   _errors, _result, _context      what a run produces and raises (and _version)
    store    _store                          persists values
    policy   _policy                         classify, retry, budget
    observe  _observe                        events, OpenTelemetry, report
    deps     _deps                           breakers, bulkheads, rate limits
    run      _run                            the engine and entry points
    doubles  _testing, http                  test doubles, HTTP integration
    ui       _ui                             the web dashboard (served by the CLI)
    cli      _cli                            the command line
    public   asyncbatch, asyncbatch.testing  the public surface

Imports inside ``if TYPE_CHECKING:`` are for the type checker only and are
not counted. Imports inside functions are (they run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "asyncbatch"

_VALUES = ("asyncbatch._errors", "asyncbatch._result", "asyncbatch._context", "asyncbatch._version")
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "values",
        ("asyncbatch._errors", "asyncbatch._result", "asyncbatch._context", "asyncbatch._version"),
    ),
    ("store", ("asyncbatch._store",)),
    ("policy", ("asyncbatch._policy",)),
    ("observe", ("asyncbatch._observe",)),
    ("deps", ("asyncbatch._deps",)),
    ("run", ("asyncbatch._run",)),
    ("doubles", ("asyncbatch._testing", "asyncbatch.http")),
    ("ui", ("asyncbatch._ui",)),
    ("cli", ("asyncbatch._cli",)),
    ("public", ("asyncbatch.testing", "asyncbatch.__main__", "asyncbatch")),
)


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def _layer(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(module: str) -> set[str]:
    """Every asyncbatch module ``module`` imports when it runs (TYPE_CHECKING blocks aside)."""
    path = PACKAGE.parent / Path(*module.split("."))
    is_package = path.is_dir()
    source = (path / "__init__.py") if is_package else path.with_suffix(".py")
    tree = ast.parse(source.read_text(), str(source))
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("asyncbatch"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("asyncbatch"):
                found.add(target)
                # `from . import _service` names a module too
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    if candidate in ALL:
                        found.add(candidate)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


ALL = set(_modules())


@pytest.mark.parametrize("module", sorted(ALL))
def test_a_lower_layer_never_imports_a_higher_one(module: str) -> None:
    rank = _layer(module)
    upward = {
        target: LAYERS[_layer(target)][0]
        for target in _runtime_imports(module)
        if _layer(target) > rank
    }
    assert not upward, f"{module} ({LAYERS[rank][0]}) imports a higher layer: {upward}"


def test_the_runtime_import_graph_has_no_cycle() -> None:
    graph = {m: {t for t in _runtime_imports(m) if t in ALL} for m in ALL}
    state: dict[str, int] = {}
    path: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError(
                    "import cycle: " + " -> ".join([*path[path.index(nxt) :], nxt])
                )
            if nxt not in state:
                dfs(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            dfs(module)


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    script = (
        "import importlib, sys\n"
        f"modules = {sorted(ALL)!r}\n"
        "failed = []\n"
        "for name in modules:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'asyncbatch']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
