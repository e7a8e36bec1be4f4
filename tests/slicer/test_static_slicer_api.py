"""Every Slicer API the module and its Lib call exists in the supported Slicer versions: the
slicer.util functions (per version table) and the module logics' methods; the Lib needs no Qt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from static_checks import (
    LIB_APPLICATION_FILES,
    LIB_FILES,
    SHARED_UTIL_TABLE,
    SLICER_DOC,
    SLICER_UTIL_CLASSES,
    SUPPORTED_SLICER,
    UTIL_TABLE,
    lib_tree,
    module_and_lib_trees,
)

# --------------------------------------------------------------------------- (2) slicer.util


def read_util_table(path: Path = UTIL_TABLE) -> dict[str, set[str]]:
    lines = [ln.split() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    header = next(ln for ln in lines if ln[:2] == ["#", "name"])[2:]
    table = {}
    for parts in lines:
        if parts[0].startswith("#"):
            continue
        assert len(parts) == len(header) + 1, parts
        table[parts[0]] = {version for version, flag in zip(header, parts[1:], strict=True) if flag == "yes"}
    return table


def slicer_util_names(tree: ast.AST) -> dict[str, int]:
    """Every ``slicer.util.<name>`` and ``from slicer.util import <name>`` with its first line."""
    names: dict[str, int] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "util"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "slicer"
        ):
            names.setdefault(node.attr, node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "slicer.util":
            for alias in node.names:
                names.setdefault(alias.name, node.lineno)
    return names


def test_util_table_is_read_correctly():
    table = read_util_table()
    assert len(table) > 150
    assert table["loadVolume"] >= set(SUPPORTED_SLICER)
    assert "v5.8.1" not in table["executePythonModule"]  # 5.12+ only
    assert "updateSegmentationFromLabelmap" not in table  # does not exist (slicer-notes.md)


@pytest.mark.skipif(not SHARED_UTIL_TABLE.exists(), reason="../shared not present")
def test_util_table_copy_matches_shared():
    assert read_util_table() == read_util_table(SHARED_UTIL_TABLE)


def test_every_slicer_util_function_exists_in_supported_versions():
    table = read_util_table()
    used: dict[str, int] = {}
    for tree in module_and_lib_trees():
        for name, line in slicer_util_names(tree).items():
            used.setdefault(name, line)
    assert {
        "loadUI",
        "childWidgetVariables",
        "arrayFromVolume",
        "updateTableFromArray",
    } <= set(
        used
    )  # pip_install is reached through reciprocalseg.service.slicer_requirements.install_with_slicer
    problems = []
    for name, line in sorted(used.items()):
        if name in SLICER_UTIL_CLASSES:
            continue
        if name not in table:
            problems.append(f"line {line}: slicer.util.{name} does not exist in any Slicer version")
            continue
        missing = [v for v in SUPPORTED_SLICER if v not in table[name]]
        if missing:
            problems.append(f"line {line}: slicer.util.{name} is missing in {', '.join(missing)}")
    assert not problems, "\n".join(problems)


def test_slicer_util_functions_are_documented_with_versions():
    """docs/SLICER.md lists every slicer.util function the module uses (the design-notes API list)."""
    doc = SLICER_DOC.read_text(encoding="utf-8")
    used = {n for tree in module_and_lib_trees() for n in slicer_util_names(tree)}
    undocumented = sorted(n for n in used if f"slicer.util.{n}" not in doc)
    assert not undocumented, f"add to docs/SLICER.md: {undocumented}"


# Methods of Slicer module logics called by the module, each read in Slicer's headers at
# v5.8.1, v5.10.0, v5.12.3 (docs/SLICER.md has the file:line references).
VERIFIED_LOGIC_METHODS = {
    "segmentations": {"ExportSegmentsToLabelmapNode", "ImportLabelmapToSegmentationNode"},
    "plots": {"ShowChartInLayout"},
    "volumes": {"AddArchetypeVolume"},
}
# Static methods called on the logic class (``slicer.vtkSlicerSegmentationsModuleLogic.X``), as the
# Lib does so that it needs no application; the same verified names apply.
LOGIC_CLASSES = {"vtkSlicerSegmentationsModuleLogic": "segmentations", "vtkSlicerVolumesLogic": "volumes"}


def logic_calls(tree: ast.AST) -> set[tuple[str, str]]:
    calls = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        # slicer.modules.<name>.logic().<Method>
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and value.func.attr == "logic"
            and isinstance(value.func.value, ast.Attribute)
            and isinstance(value.func.value.value, ast.Attribute)
            and value.func.value.value.attr == "modules"
        ):
            calls.add((value.func.value.attr, node.attr))
        # slicer.vtkSlicer...Logic.<Method>
        if isinstance(value, ast.Attribute) and value.attr in LOGIC_CLASSES and node.attr[0].isupper():
            calls.add((LOGIC_CLASSES[value.attr], node.attr))
    return calls


def test_module_logic_methods_are_verified_ones():
    calls = set().union(*(logic_calls(tree) for tree in module_and_lib_trees()))
    assert ("plots", "ShowChartInLayout") in calls and (
        "segmentations",
        "ExportSegmentsToLabelmapNode",
    ) in calls
    unverified = {(m, f) for m, f in calls if f not in VERIFIED_LOGIC_METHODS.get(m, set())}
    assert not unverified, f"verify in Slicer's source and add to VERIFIED_LOGIC_METHODS: {unverified}"


def test_lib_scene_logic_needs_no_qt_and_no_application():
    """ReciprocalSegLib runs without Qt: no qt/ctk (or ReciprocalSegWidgets) import anywhere;
    slicer.app and slicer.modules only in the one place that looks the module logics up (and the
    package installer)."""
    problems = []
    for path in LIB_FILES:
        for node in ast.walk(lib_tree(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            if {"qt", "ctk", "PythonQt", "ReciprocalSegWidgets"} & set(names):  # the Qt side imports the Lib
                problems.append(f"{path.name}:{node.lineno} imports {names}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("app", "modules", "mrmlScene")
                and isinstance(node.value, ast.Name)
                and node.value.id == "slicer"
                and path.name not in LIB_APPLICATION_FILES
            ):
                problems.append(f"{path.name}:{node.lineno} uses slicer.{node.attr}")
    assert not problems, problems
