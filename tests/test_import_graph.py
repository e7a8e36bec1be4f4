"""The package's modules import each other one way only: no cycle, at module or function level.

The imports are read from the source with `ast` (every `import` statement anywhere in a file,
including those inside functions, which Python runs later but which still tie the modules
together), resolved to the package's own modules, and the graph is searched for cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "ReciprocalSeg" / "reciprocalseg"
PACKAGE = "reciprocalseg"


def module_files(package_dir: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (`__init__` = the package)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve_base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module named by `from <base> import ...` in `module`."""
    if node.level == 0:
        return node.module or ""
    anchor = module.split(".") if is_package else module.split(".")[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_base(module, is_package, node)
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            # `import a.b.c` names a.b.c; the nearest known module is what it ties to.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(package_dir: Path = PACKAGE_DIR, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(package_dir, package)
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_between_the_package_modules() -> None:
    graph = import_graph()
    assert "reciprocalseg.cli.main" in graph and "reciprocalseg.training.runner" in graph
    cycles = find_cycles(graph)
    assert not cycles, "modules that import each other in a circle: " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_checker_finds_module_and_function_level_cycles(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from . import a\nfrom .sub.b import f\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.c"}
    assert graph["pkg.d"] == {"pkg.a", "pkg.sub.b"}
    assert find_cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (pkg / "c.py").write_text("import os\n")
    assert find_cycles(import_graph(pkg, "pkg")) == []


# The command-line modules: argument parsing and the commands. The service starts its training child
# with a request file (training/request.py), so nothing of it imports these.
CLI_MODULES = ("reciprocalseg.cli", "reciprocalseg.training.command")


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for name in graph.get(todo.pop(), ()):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def is_cli_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in CLI_MODULES)


def test_no_service_module_imports_a_command_line_module() -> None:
    graph = import_graph()
    service = [m for m in graph if m.startswith("reciprocalseg.service")]
    assert "reciprocalseg.service.jobs" in service
    found = {m: sorted(filter(is_cli_module, reachable(graph, m))) for m in service}
    found = {m: cli for m, cli in found.items() if cli}
    assert not found, f"service modules that import command-line modules: {found}"


def test_reachable_follows_imports_through_other_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert reachable(graph, "a") == {"b", "c"}
    assert reachable(graph, "d") == {"a", "b", "c"}
    assert is_cli_module("reciprocalseg.cli.main") and not is_cli_module("reciprocalseg.client")
