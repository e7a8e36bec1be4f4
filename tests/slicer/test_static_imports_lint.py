"""The module imports in plain Python up to its Slicer imports, compiles for Python 3.9, and is
ruff-clean.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from static_checks import (
    LIB_DIR,
    LIB_FILES,
    MODULE_DIR,
    MODULE_FILE,
    NOT_BUNDLED,
    REPO,
    SLICER_ONLY,
    WIDGETS_DIR,
    WIDGETS_FILES,
    module_tree,
)

# --------------------------------------------------------------------------- (3) import + lint

IMPORT_PROBE = textwrap.dedent(
    """
    import importlib.abc, json, sys
    SLICER_ONLY = set(json.loads(sys.argv[2]))
    NOT_BUNDLED = set(json.loads(sys.argv[3]))

    class SlicerImportReached(Exception):
        pass

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            top = fullname.split(".")[0]
            if top in SLICER_ONLY:
                raise SlicerImportReached(fullname)
            if top in NOT_BUNDLED:
                raise ModuleNotFoundError(f"{fullname} is installed on first use, not at import")
            return None

    for name in list(sys.modules):
        if name.split(".")[0] in SLICER_ONLY | NOT_BUNDLED:
            del sys.modules[name]
    sys.meta_path.insert(0, Blocker())
    source = open(sys.argv[1], encoding="utf-8").read()
    code = compile(source, sys.argv[1], "exec")
    namespace = {"__name__": "ReciprocalSeg", "__file__": sys.argv[1]}
    try:
        exec(code, namespace)
        result = {"error": None}
    except SlicerImportReached as exc:
        result = {"error": "SlicerImportReached", "module": str(exc)}
    except BaseException as exc:
        result = {"error": type(exc).__name__, "message": str(exc)}
    result["core_loaded"] = sorted(m for m in sys.modules if m.startswith("reciprocalseg"))
    print(json.dumps(result))
    """
)


def first_slicer_import(tree: ast.Module) -> str:
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in SLICER_ONLY:
                    return alias.name
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in SLICER_ONLY:
            return node.module
    raise AssertionError("no Slicer import found")


def test_module_imports_cleanly_up_to_its_slicer_imports():
    tree = module_tree()
    expected = first_slicer_import(tree)
    env = {"PYTHONPATH": str(MODULE_DIR), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, str(MODULE_FILE), json.dumps(sorted(SLICER_ONLY)),
         json.dumps(sorted(NOT_BUNDLED))],
        capture_output=True, text=True, env=env, timeout=120, cwd=str(REPO),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] == "SlicerImportReached", result
    assert result["module"] == expected
    # Everything before the Slicer imports ran: the core modules it needs were imported.
    assert {"reciprocalseg.service.slicer_requirements", "reciprocalseg.config"} <= set(result["core_loaded"])


def test_module_and_helpers_compile_for_python_3_9():
    """Slicer 5.8 has Python 3.9: the module must still load there to say it needs 5.10+."""
    for path in (
        MODULE_FILE,
        MODULE_DIR / "reciprocalseg" / "service" / "slicer_requirements.py",
        *LIB_FILES,
        *WIDGETS_FILES,
    ):
        source = path.read_text(encoding="utf-8")
        compile(source, str(path), "exec")
        ast.parse(source, feature_version=(3, 9))
    # No `from __future__ import annotations` in the module (the parameter node wrapper reads
    # annotations), so a `X | Y` annotation would be evaluated, and fail, on Python 3.9.
    tree = module_tree()
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            annotations += [a.annotation for a in args.args + args.kwonlyargs + args.posonlyargs]
            annotations.append(node.returns)
        if isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        for ann in filter(None, annotations):
            assert not any(isinstance(n, ast.BinOp) for n in ast.walk(ann)), ast.unparse(ann)


def ruff_command() -> list[str] | None:
    exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if Path(exe).exists():
        return [exe]
    try:
        import ruff  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "ruff"]


RUFF_FILES = [
    MODULE_FILE,
    LIB_DIR,
    WIDGETS_DIR,
    MODULE_DIR / "reciprocalseg" / "service" / "slicer_requirements.py",
    Path(__file__).parent,
]


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_module_is_ruff_clean(args):
    ruff = ruff_command()
    if ruff is None:
        pytest.skip("ruff is not installed")
    proc = subprocess.run(
        [*ruff, *args, *map(str, RUFF_FILES)], capture_output=True, text=True, cwd=str(REPO), timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
