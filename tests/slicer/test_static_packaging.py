"""The CMake lists are complete, the in-Slicer test is registered, the extension metadata agrees
between CMake and the .s4ext, the icons are 128 px PNGs.
"""

from __future__ import annotations

import ast
import re
import struct
from pathlib import Path

import module_files
import pytest
from static_checks import MODULE_DIR, REPO, module_tree

# --------------------------------------------------------------------------- (4) CMake / packaging


def test_module_cmakelists_lists_every_python_file_and_resource():
    text = module_files.CMAKELISTS.read_text(encoding="utf-8")
    scripts = module_files.parse_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = module_files.parse_list(text, "MODULE_PYTHON_RESOURCES")
    hint = " (run: python tests/slicer/module_files.py --write)"
    assert len(scripts) == len(set(scripts)) and len(resources) == len(set(resources))
    for listed in scripts + resources:
        assert (MODULE_DIR / listed).is_file(), f"{listed} is listed but missing"
    missing_scripts = set(module_files.expected_scripts()) - set(scripts)
    assert not missing_scripts, f"not in MODULE_PYTHON_SCRIPTS: {sorted(missing_scripts)}{hint}"
    missing_resources = set(module_files.expected_resources()) - set(resources)
    assert not missing_resources, f"not in MODULE_PYTHON_RESOURCES: {sorted(missing_resources)}{hint}"
    # The package is really there and complete: its __init__ files and this file's own helper.
    assert "ReciprocalSeg.py" in scripts
    assert (
        "reciprocalseg/__init__.py" in scripts and "reciprocalseg/service/slicer_requirements.py" in scripts
    )
    assert {"Resources/Icons/ReciprocalSeg.png", "Resources/UI/ReciprocalSeg.ui"} <= set(resources)
    for sub in {Path(s).parent for s in scripts if s.startswith("reciprocalseg/")}:
        assert f"{sub.as_posix()}/__init__.py" in scripts, f"{sub} has no __init__.py listed"


def test_module_cmakelists_builds_and_registers_the_in_slicer_test():
    text = module_files.CMAKELISTS.read_text(encoding="utf-8")
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}", text)
    assert "WITH_GENERIC_TESTS" in text
    testing = text[text.index("if(BUILD_TESTING)") :]
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing
    assert "add_subdirectory(Testing)" in testing
    assert "add_subdirectory(Python)" in (MODULE_DIR / "Testing" / "CMakeLists.txt").read_text()
    assert (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").is_file()
    # The registered script holds a ScriptedLoadableModuleTest with a test_ method and runTest.
    tests = [
        node
        for node in module_tree().body
        if isinstance(node, ast.ClassDef)
        and any(getattr(b, "id", "") == "ScriptedLoadableModuleTest" for b in node.bases)
    ]
    assert [t.name for t in tests] == ["ReciprocalSegTest"]
    methods = {f.name for f in tests[0].body if isinstance(f, ast.FunctionDef)}
    assert {"setUp", "runTest"} <= methods and any(m.startswith("test_") for m in methods)


def test_module_has_the_four_template_classes():
    classes = {
        n.name: [ast.unparse(b) for b in n.bases] for n in module_tree().body if isinstance(n, ast.ClassDef)
    }
    assert classes["ReciprocalSeg"] == ["ScriptedLoadableModule"]
    assert classes["ReciprocalSegWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    # The Lib's loop (no Qt) is the logic's second base: the console and the panel share one object.
    assert classes["ReciprocalSegLogic"] == ["ScriptedLoadableModuleLogic", "ReciprocalSegLoop"]
    assert classes["ReciprocalSegTest"] == ["ScriptedLoadableModuleTest"]


def read_s4ext() -> dict[str, str]:
    out = {}
    for line in (REPO / "ReciprocalSeg.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


def test_extension_metadata_agrees_between_cmake_and_s4ext():
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    meta = dict(re.findall(r'set\(EXTENSION_(\w+) "([^"]*)"\)', cmake))
    s4ext = read_s4ext()
    assert meta["DEPENDS"] == s4ext["depends"] == "PyTorch"
    assert meta["CATEGORY"] == s4ext["category"]
    assert meta["HOMEPAGE"] == s4ext["homepage"]
    assert meta["ICONURL"] == s4ext["iconurl"]
    assert meta["SCREENSHOTURLS"] == s4ext["screenshoturls"]
    assert meta["DESCRIPTION"] == s4ext["description"]
    assert meta["CONTRIBUTORS"] == s4ext["contributors"]
    assert {"scm", "scmurl", "scmrevision", "build_subdirectory", "status", "enabled"} <= set(s4ext)
    assert "project(ReciprocalSeg)" in cmake
    assert "add_subdirectory(ReciprocalSeg)" in cmake
    for line in (
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        assert line in cmake
    assert meta["ICONURL"].endswith("Resources/Icons/ReciprocalSeg.png")


@pytest.mark.parametrize(
    "icon",
    [
        REPO / "Resources" / "Icons" / "ReciprocalSeg.png",
        MODULE_DIR / "Resources" / "Icons" / "ReciprocalSeg.png",
    ],
)
def test_icons_are_128px_png(icon):
    data = icon.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)
