"""The package's layout: no import cycle, the library never imports the paper runner, light CLI imports.

The import graph is read from the source with the AST (every ``import`` statement, also inside functions and
``if TYPE_CHECKING:`` blocks), so a cycle hidden behind a function-level import is found too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_subspace"
RUNNER = "hf_subspace.experiments"
FACES = {"hf_subspace.cli"}  # the command line: a face over the runner, not part of the library


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The hf_subspace modules ``name`` imports: ``from pkg import sub`` counts as ``pkg.sub`` when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
            out.update(subs)
            if target in known and len(subs) < len(node.names):
                out.add(target)
    out.discard(name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_is_read_correctly() -> None:
    graph = _graph()
    assert "hf_subspace.experiments.builders" in graph["hf_subspace.experiments.recipes"]  # `from . import builders`
    assert "hf_subspace.distributed" in graph["hf_subspace.eigensolvers._common"]  # `from .. import distributed`
    assert "hf_subspace.experiments.settings" in graph["hf_subspace.cli"]
    # and the cycle finder finds a planted cycle
    planted = {k: set(v) for k, v in graph.items()}
    planted["hf_subspace.operator"].add("hf_subspace.hessian")
    assert ["hf_subspace.hessian", "hf_subspace.operator"] in _cycles(planted)


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_library_never_imports_the_runner() -> None:
    graph = _graph()
    offenders = {
        name: sorted(t for t in targets if t == RUNNER or t.startswith(RUNNER + "."))
        for name, targets in graph.items()
        if not (name == RUNNER or name.startswith(RUNNER + ".")) and name not in FACES
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_module_is_over_600_lines() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in _modules().items()}
    assert {name: n for name, n in sizes.items() if n > 600} == {}


def _imported_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_command_line_imports_no_heavy_library() -> None:
    """``hf-subspace --help`` and argument errors need neither torch nor transformers (issue 14: help < 2 s)."""
    modules = _imported_after("import hf_subspace.cli; hf_subspace.cli.build_parser()")
    heavy = {"torch", "transformers", "datasets", "matplotlib", "sklearn", "scipy", "evaluate", "accelerate"}
    assert heavy & modules == set()
    assert len(modules) < 300  # the standard library's share; torch alone is over 1,000 modules
