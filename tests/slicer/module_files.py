"""The files ReciprocalSeg/CMakeLists.txt must list, and that file's rendering.

``python tests/slicer/module_files.py --write`` regenerates ReciprocalSeg/CMakeLists.txt from
the files on disk (run it after adding a file to the ``reciprocalseg`` package or to
ReciprocalSeg/Resources); ``--check`` exits 1 when the committed file is out of date.
test_static_packaging.py checks the same thing in CI.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "ReciprocalSeg"
MODULE_NAME = "ReciprocalSeg"
PACKAGE = "reciprocalseg"
LIB = "ReciprocalSegLib"  # the module's own helper package (Slicer's <Module>Lib convention)
# Its Qt side beyond the module file: a folder, since Slicer takes every .py beside the module for a module.
WIDGETS = "ReciprocalSegWidgets"
CMAKELISTS = MODULE_DIR / "CMakeLists.txt"

_IGNORED_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
_IGNORED_SUFFIXES = {".pyc", ".pyo"}


def _files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(MODULE_DIR)
        if not path.is_file() or _IGNORED_DIRS & set(rel.parts) or path.suffix in _IGNORED_SUFFIXES:
            continue
        out.append(path)
    return out


def expected_scripts() -> list[str]:
    """The module file, the .py files of its Lib, of its Qt helpers and of the core package (paths
    relative to ReciprocalSeg/)."""
    out = [f"{MODULE_NAME}.py"]
    for folder in (LIB, WIDGETS, PACKAGE):
        out += [
            p.relative_to(MODULE_DIR).as_posix() for p in _files(MODULE_DIR / folder) if p.suffix == ".py"
        ]
    return out


def expected_resources() -> list[str]:
    """Everything under ReciprocalSeg/Resources, plus any non-Python file of the package (data files)."""
    resources = [p.relative_to(MODULE_DIR).as_posix() for p in _files(MODULE_DIR / "Resources")]
    data = [p.relative_to(MODULE_DIR).as_posix() for p in _files(MODULE_DIR / PACKAGE) if p.suffix != ".py"]
    return resources + data


def _cmake_name(path: str) -> str:
    return path.replace(MODULE_NAME + ".", "${MODULE_NAME}.")


def render(scripts: list[str], resources: list[str]) -> str:
    script_lines = "\n".join(f"  {_cmake_name(s)}" for s in scripts)
    resource_lines = "\n".join(f"  {_cmake_name(r)}" for r in resources)
    return f"""#-----------------------------------------------------------------------------
set(MODULE_NAME {MODULE_NAME})

#-----------------------------------------------------------------------------
# The module file, EVERY Python file of its Lib (scene logic, no Qt), of its Qt helpers
# (ReciprocalSegWidgets) and of the core package (all installed beside it).
# Generated from the files on disk by tests/slicer/module_files.py --write;
# tests/slicer/test_static_packaging.py fails when a file is missing here.
set(MODULE_PYTHON_SCRIPTS
{script_lines}
  )

set(MODULE_PYTHON_RESOURCES
{resource_lines}
  )

#-----------------------------------------------------------------------------
slicerMacroBuildScriptedModule(
  NAME ${{MODULE_NAME}}
  SCRIPTS ${{MODULE_PYTHON_SCRIPTS}}
  RESOURCES ${{MODULE_PYTHON_RESOURCES}}
  WITH_GENERIC_TESTS
  )

#-----------------------------------------------------------------------------
if(BUILD_TESTING)

  # Register ReciprocalSegTest (the whole loop on phantoms, inside Slicer) as the ctest
  # py_${{MODULE_NAME}}; it starts a local service and trains a few iterations on the CPU.
  slicer_add_python_unittest(SCRIPT ${{MODULE_NAME}}.py)
  set_tests_properties(py_${{MODULE_NAME}} PROPERTIES TIMEOUT 1800)

  # Additional build-time testing
  add_subdirectory(Testing)
endif()
"""


def parse_list(text: str, variable: str) -> list[str]:
    """Items of ``set(<variable> ...)`` in a CMakeLists text, with ${MODULE_NAME} expanded."""
    m = re.search(r"set\(\s*" + re.escape(variable) + r"\s+(.*?)\)", text, re.S)
    if not m:
        raise ValueError(f"set({variable} ...) not found")
    body = re.sub(r"#[^\n]*", "", m.group(1))
    return [item.replace("${MODULE_NAME}", MODULE_NAME) for item in body.split()]


def main(argv: list[str]) -> int:
    text = render(expected_scripts(), expected_resources())
    if "--write" in argv:
        CMAKELISTS.write_text(text, encoding="utf-8")
        print(f"wrote {CMAKELISTS}")
        return 0
    if "--check" in argv:
        current = CMAKELISTS.read_text(encoding="utf-8") if CMAKELISTS.exists() else ""
        if current != text:
            print(f"{CMAKELISTS} is out of date: run python tests/slicer/module_files.py --write")
            return 1
        return 0
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
