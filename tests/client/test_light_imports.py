"""The client and the Slicer module's Lib load, and start a local service, without the heavy stacks.

They run in 3D Slicer's process: importing them (and starting the service, which runs in a child
process) must not load the server stack (fastapi, starlette, pydantic, uvicorn) or the
computation stack (torch, SimpleITK). Each check runs in a fresh interpreter, where
``sys.modules`` shows everything that was imported.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reciprocalseg.common.processes import child_env

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "ReciprocalSeg" / "ReciprocalSegLib"
HEAVY = ("SimpleITK", "pydantic", "starlette", "fastapi", "uvicorn", "torch")

IMPORT_ALL = """
import importlib, json, pkgutil, sys
import ReciprocalSegLib
for m in pkgutil.iter_modules(ReciprocalSegLib.__path__):
    importlib.import_module("ReciprocalSegLib." + m.name)
from reciprocalseg.client import Client, LocalService, ServiceError, service_python
"""

START_STOP = """
svc = LocalService(sys.argv[1], device="cpu")
svc.start(timeout=300)
info = svc.client(timeout=120).info()
svc.stop()
print(json.dumps({"workspace": info.workspace}))
"""

REPORT = """
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _loaded(code: str, *args: str) -> tuple[list[str], list[str]]:
    """Run ``code`` in a fresh interpreter; the heavy modules it loaded, and its other output."""
    out = subprocess.run(
        [sys.executable, "-c", code + REPORT.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO / "ReciprocalSeg",
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    *rest, last = out.stdout.strip().splitlines()
    return json.loads(last), rest


def test_the_lib_and_the_client_import_no_heavy_module() -> None:
    loaded, _ = _loaded(IMPORT_ALL)
    assert loaded == []


def test_the_check_sees_a_heavy_import() -> None:
    """Control: the same check run on the service's app module finds the server stack."""
    loaded, _ = _loaded("import json, sys\nimport reciprocalseg.service.app\n")
    assert {"fastapi", "starlette", "pydantic"} <= set(loaded)


@pytest.mark.timeout(900)
def test_starting_and_stopping_a_local_service_loads_no_heavy_module(tmp_path: Path) -> None:
    loaded, output = _loaded(IMPORT_ALL + START_STOP, str(tmp_path / "ws"))
    assert json.loads(output[-1])["workspace"] == str((tmp_path / "ws").resolve())
    assert loaded == []


def _imported_names(path: Path) -> set[str]:
    """Every module a file imports (``from a import b`` counts as ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_lib_talks_to_the_service_through_the_client_only() -> None:
    """No Lib module imports the service package but the list of packages Slicer must install."""
    found = {
        (path.name, name)
        for path in sorted(LIB.glob("*.py"))
        for name in _imported_names(path)
        if name.startswith("reciprocalseg.service")
        and not name.startswith("reciprocalseg.service.slicer_requirements")
    }
    assert not found, f"Lib modules importing the service: {sorted(found)}"
