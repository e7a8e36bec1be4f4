"""Static checks of the Slicer extension (3D Slicer itself cannot run in CI).

What runs inside Slicer (ReciprocalSegTest in ReciprocalSeg/ReciprocalSeg.py) is registered with
ctest; see Testing/README.md. Here: the .ui and the code agree, every slicer.util function exists
in the supported Slicer versions, the module imports in plain Python up to its Slicer imports,
the CMake lists are complete, the parameter node and the .ui agree, and the package-install rules.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import module_files
import pytest

from reciprocalseg.service import slicer_requirements as sr

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "ReciprocalSeg"
MODULE_FILE = MODULE_DIR / "ReciprocalSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "ReciprocalSeg.ui"
UTIL_TABLE = Path(__file__).with_name("slicer_util_functions.txt")
SHARED_UTIL_TABLE = REPO.parent / "shared" / "docs" / "slicer-util-functions.txt"
SLICER_DOC = REPO / "docs" / "SLICER.md"
LIB_DIR = MODULE_DIR / "ReciprocalSegLib"
LIB_FILES = sorted(LIB_DIR.glob("*.py"))
# The only Lib files that may reach the application (slicer.app, slicer.modules, dialogs): the
# one place where module logics are looked up, and the package installer (pip, PyTorch extension).
LIB_APPLICATION_FILES = {"slicer_logics.py", "package_install.py"}

# Slicer releases whose Base/Python/slicer/util.py every slicer.util call must exist in.
SUPPORTED_SLICER = ("v5.8.1", "v5.10.0", "v5.12.3")
# Top-level modules that only exist inside Slicer (vtk exists outside, but the module must get
# Slicer's); PyTorchUtils and SampleData are Slicer modules too.
SLICER_ONLY = {"slicer", "qt", "ctk", "vtk", "PyTorchUtils", "SampleData", "SegmentEditor"}
# Installed on first use, so the module must load without them (Slicer imports it at startup).
NOT_BUNDLED = {
    "torch",
    "fastapi",
    "uvicorn",
    "pydantic",
    "skimage",
    "psutil",
    "multipart",
    "python_multipart",
}

# Names imported from slicer.util that are classes, not functions (the table lists defs only);
# each read in Base/Python/slicer/util.py: `class VTKObservationMixin` at v5.8.1:2784,
# v5.10.0:2873, v5.12.3:3053.
SLICER_UTIL_CLASSES = {"VTKObservationMixin"}


# --------------------------------------------------------------------------- helpers


def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


def lib_tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def module_and_lib_trees() -> list[ast.Module]:
    return [module_tree(), *(lib_tree(p) for p in LIB_FILES)]


def with_parents(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node  # type: ignore[attr-defined]
    return tree


def is_self_ui(node: ast.AST) -> bool:
    """``self.ui`` itself."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "ui"
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def ui_usages(tree: ast.AST) -> list[tuple[str, str | None, str | None, int]]:
    """(widget name, member used or None, connected signal or None, line) for every ``self.ui.X``."""
    with_parents(tree)
    out = []

    def member_of(expr: ast.AST) -> tuple[str | None, str | None]:
        parent = getattr(expr, "parent", None)
        if isinstance(parent, ast.Attribute) and parent.value is expr:
            signal = None
            call = getattr(parent, "parent", None)
            if parent.attr == "connect" and isinstance(call, ast.Call) and call.args:
                first = call.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    signal = first.value.split("(")[0]
            return parent.attr, signal
        return None, None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_self_ui(node.value):
            member, signal = member_of(node)
            out.append((node.attr, member, signal, node.lineno))
    # `for widget in (self.ui.a, self.ui.b): widget.setVisible(...)`
    for node in ast.walk(tree):
        if not (isinstance(node, ast.For) and isinstance(node.target, ast.Name)):
            continue
        if not isinstance(node.iter, (ast.Tuple, ast.List)):
            continue
        names = [e.attr for e in node.iter.elts if isinstance(e, ast.Attribute) and is_self_ui(e.value)]
        if len(names) != len(node.iter.elts):
            continue
        for inner in ast.walk(ast.Module(body=node.body, type_ignores=[])):
            if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name):
                if inner.value.id == node.target.id:
                    out.extend((name, inner.attr, None, inner.lineno) for name in names)
    return out


def ui_widgets() -> tuple[ET.Element, dict[str, str], dict[str, str]]:
    """(root, widget name -> class, custom class -> the class it extends)."""
    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget")}
    extends = {
        cw.findtext("class"): cw.findtext("extends")
        for cw in root.iter("customwidget")
        if cw.findtext("class") and cw.findtext("extends")
    }
    return root, widgets, extends


# Members (methods, signals, Q_PROPERTYs) per widget class, from the Qt 5 class reference
# (doc.qt.io/qt-5), CTK (commontk.org Libs/Widgets headers) and Slicer's qMRMLWidgets headers.
# Only what the module or the .ui uses needs to be here; an unknown member fails the test.
WIDGET_PARENT = {
    "QWidget": "QObject",
    "QAbstractButton": "QWidget",
    "QPushButton": "QAbstractButton",
    "QCheckBox": "QAbstractButton",
    "ctkCollapsibleButton": "QAbstractButton",
    "QLabel": "QWidget",
    "QLineEdit": "QWidget",
    "ctkPathLineEdit": "QWidget",
    "QComboBox": "QWidget",
    "ctkComboBox": "QComboBox",
    "QAbstractSpinBox": "QWidget",
    "QSpinBox": "QAbstractSpinBox",
    "QDoubleSpinBox": "QAbstractSpinBox",
    "QProgressBar": "QWidget",
    "QAbstractItemView": "QWidget",
    "QTableView": "QAbstractItemView",
    "QTableWidget": "QTableView",
    "qMRMLWidget": "QWidget",
    "qMRMLNodeComboBox": "QWidget",
}
WIDGET_MEMBERS = {
    "QObject": {"connect", "blockSignals", "objectName", "setObjectName", "property", "setProperty"},
    "QWidget": {
        "enabled", "setEnabled", "visible", "setVisible", "show", "hide", "toolTip", "setToolTip",
        "geometry", "minimumSize", "maximumSize", "sizePolicy", "setFocus",
    },
    "QAbstractButton": {
        "clicked", "toggled", "pressed", "released", "text", "setText", "checked", "setChecked",
        "checkable", "setCheckable", "click",
    },
    "ctkCollapsibleButton": {"collapsed", "setCollapsed", "contentsCollapsed"},
    "QLabel": {"text", "setText", "wordWrap", "setWordWrap", "clear"},
    "QLineEdit": {
        "text", "setText", "textChanged", "textEdited", "editingFinished", "returnPressed",
        "placeholderText", "setPlaceholderText", "clear", "echoMode", "setEchoMode", "readOnly",
    },
    "ctkPathLineEdit": {"currentPath", "setCurrentPath", "currentPathChanged", "filters", "setFilters"},
    "QComboBox": {
        "currentText", "setCurrentText", "currentIndex", "setCurrentIndex", "currentIndexChanged",
        "currentTextChanged", "activated", "addItem", "addItems", "clear", "count", "findText", "itemText",
    },
    "QAbstractSpinBox": {"specialValueText", "setSpecialValueText", "editingFinished", "readOnly"},
    "QSpinBox": {
        "value", "setValue", "valueChanged", "minimum", "setMinimum", "maximum", "setMaximum",
        "setRange", "singleStep", "setSingleStep", "suffix", "setSuffix",  # Qt 5 QSpinBox properties
    },
    "QDoubleSpinBox": {
        "value", "setValue", "valueChanged", "minimum", "setMinimum", "maximum", "setMaximum",
        "setRange", "singleStep", "setSingleStep", "decimals", "setDecimals", "suffix", "setSuffix",
    },
    "QProgressBar": {
        "value", "setValue", "minimum", "maximum", "setMinimum", "setMaximum", "setRange", "reset",
        "format", "setFormat", "textVisible", "setTextVisible", "valueChanged",
    },
    "QAbstractItemView": {
        "editTriggers", "selectionMode", "selectionBehavior", "alternatingRowColors", "clearSelection",
        "selectionModel", "currentIndex", "setCurrentIndex", "scrollToBottom",
    },
    "QTableView": {
        "selectRow", "horizontalHeader", "verticalHeader", "resizeColumnsToContents", "setColumnWidth",
        "sortingEnabled", "setSortingEnabled",
    },
    "QTableWidget": {
        "setRowCount", "rowCount", "setColumnCount", "columnCount", "setItem", "item", "takeItem",
        "currentRow", "currentColumn", "currentItem", "setCurrentCell", "selectedItems", "clearContents",
        "setHorizontalHeaderLabels", "itemSelectionChanged", "cellClicked", "cellDoubleClicked",
        "currentCellChanged", "insertRow", "removeRow",
    },
    "qMRMLWidget": {"setMRMLScene", "mrmlScene", "mrmlSceneChanged"},
    "qMRMLNodeComboBox": {
        "currentNode", "setCurrentNode", "currentNodeID", "setCurrentNodeID", "currentNodeChanged",
        "currentNodeIDChanged", "nodeTypes", "setMRMLScene", "mrmlScene", "noneEnabled", "addEnabled",
        "removeEnabled", "showChildNodeTypes",
    },
}  # fmt: skip


def class_members(cls: str, extends: dict[str, str]) -> set[str]:
    members: set[str] = set()
    seen = set()
    while cls and cls not in seen:
        seen.add(cls)
        members |= WIDGET_MEMBERS.get(cls, set())
        cls = WIDGET_PARENT.get(cls) or extends.get(cls)
    return members


# --------------------------------------------------------------------------- (1) .ui vs code


def test_every_ui_widget_used_exists_with_a_compatible_class():
    _, widgets, extends = ui_widgets()
    usages = ui_usages(module_tree())
    assert len({u[0] for u in usages}) >= 25, "the AST walk found too few self.ui usages"
    problems = []
    for name, member, signal, line in usages:
        cls = widgets.get(name)
        if cls is None:
            problems.append(f"line {line}: self.ui.{name} is not a widget of {UI_FILE.name}")
            continue
        members = class_members(cls, extends)
        if not members - WIDGET_MEMBERS["QObject"]:
            problems.append(f"line {line}: no member table for class {cls} (add it from the Qt docs)")
        if member is not None and member not in members:
            problems.append(f"line {line}: self.ui.{name}.{member}: {cls} has no member {member!r}")
        if signal is not None and signal not in members:
            problems.append(f"line {line}: self.ui.{name} connects {signal!r}, not a signal of {cls}")
    assert not problems, "\n".join(problems)


def test_ui_usage_parser_catches_mistakes():
    """The checker itself: a wrong member, a wrong signal and a missing widget are all reported."""
    source = textwrap.dedent(
        """
        class W:
            def f(self):
                self.ui.casesTable.setValue(3)
                self.ui.connectButton.connect("valueChanged(int)", self.g)
                self.ui.noSuchWidget.setText("x")
                for w in (self.ui.predictButton, self.ui.retrainButton):
                    w.setEnabled(True)
        """
    )
    usages = ui_usages(ast.parse(source))
    assert ("casesTable", "setValue", None, 4) in usages
    assert ("connectButton", "connect", "valueChanged", 5) in usages
    assert ("noSuchWidget", "setText", None, 6) in usages
    assert {("predictButton", "setEnabled"), ("retrainButton", "setEnabled")} <= {
        (u[0], u[1]) for u in usages
    }
    _, widgets, extends = ui_widgets()
    assert "setValue" not in class_members(widgets["casesTable"], extends)
    assert "valueChanged" not in class_members(widgets["connectButton"], extends)
    assert "noSuchWidget" not in widgets


def test_ui_properties_are_known_for_their_class():
    """Static properties set in the .ui exist on the widget class (dynamic ones use stdset=0)."""
    root, _, extends = ui_widgets()
    problems = []
    for widget in root.iter("widget"):
        cls = widget.get("class")
        if cls == "QWidget":  # plain layout containers
            continue
        members = class_members(cls, extends)
        for prop in widget.findall("property"):
            if prop.get("stdset") == "0":
                continue
            if prop.get("name") not in members:
                problems.append(f"{widget.get('name')} ({cls}): property {prop.get('name')!r}")
    assert not problems, "\n".join(problems)


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
    """ReciprocalSegLib runs without Qt: no qt/ctk import anywhere; slicer.app and slicer.modules
    only in the one place that looks the module logics up (and the package installer)."""
    problems = []
    for path in LIB_FILES:
        for node in ast.walk(lib_tree(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            if {"qt", "ctk", "PythonQt"} & set(names):
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


# --------------------------------------------------------------------------- (5) .ui + parameter node


def parameter_node_fields() -> dict[str, tuple[str, ast.expr | None]]:
    """Fields of the @parameterNodeWrapper class: name -> (annotation source, default node)."""
    for node in module_tree().body:
        if isinstance(node, ast.ClassDef) and any(
            ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {
                s.target.id: (ast.unparse(s.annotation), s.value)
                for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            }
    raise AssertionError("no @parameterNodeWrapper class")


def module_constants() -> dict[str, object]:
    """The module-level constants (tuples, strings) evaluated without Slicer, PRESETS from the core."""
    from reciprocalseg.config import PRESETS

    namespace: dict[str, object] = {"PRESETS": PRESETS}
    for node in module_tree().body:
        if isinstance(node, ast.Assign) and all(isinstance(t, (ast.Name, ast.Tuple)) for t in node.targets):
            try:
                exec(compile(ast.Module(body=[node], type_ignores=[]), "<constants>", "exec"), namespace)
            except NameError:
                pass
    return namespace


# Widget classes that parameterNodeWrapper's GUI connectors accept per type, read in
# Base/Python/slicer/parameterNodeWrapper/guiConnectors.py at v5.8.1 (canRepresent methods;
# unchanged for these in v5.10.0 / v5.12.3, which add only float/int on QDoubleSpinBox and
# ctkCheckablePushButton). The check is `type(widget) == ...`: subclasses do not count.
CONNECTOR_WIDGETS = {
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton"},
    "int": {"QSlider", "QSpinBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox", "qMRMLSliderWidget"},
    "str": {"QLineEdit", "QLabel", "QTextEdit"},
    "choice": {"QComboBox", "ctkComboBox"},
    "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "node": {"qMRMLNodeComboBox"},
}


def connector_kind(annotation: str) -> str:
    if "Choice(" in annotation:
        return "choice"
    base = annotation.removeprefix("Annotated[").split(",")[0].rstrip("]")
    if base.startswith("vtkMRML"):
        return "node"
    return base


def test_ui_top_widget_and_parameter_names_match_the_wrapper():
    root, widgets, _ = ui_widgets()
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == "ReciprocalSeg"
    assert root.findtext("class") == "ReciprocalSeg"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names break childWidgetVariables"
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", "SlicerParameterName must be a dynamic property"
                bound[prop.findtext("string")] = (widget.get("name"), widget.get("class"))
    fields = parameter_node_fields()
    assert set(fields) >= {"workspace", "remoteUrl", "preset", "iterations", "device"}
    # connectGui raises for a SlicerParameterName the wrapper lacks; every field has a widget.
    assert set(bound) == set(fields)
    for name, (annotation, _default) in fields.items():
        widget_name, widget_class = bound[name]
        kind = connector_kind(annotation)
        assert widget_class in CONNECTOR_WIDGETS[kind], f"{name}: {annotation} cannot bind to {widget_class}"
    # The mrmlSceneChanged -> setMRMLScene connection reaches every node combobox.
    receivers = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    combos = {n for n, c in widgets.items() if c == "qMRMLNodeComboBox"}
    assert combos and combos <= receivers


def test_choice_fields_have_valid_defaults_and_core_values():
    fields = parameter_node_fields()
    constants = module_constants()
    from reciprocalseg.config import PRESETS

    assert set(constants["PRESET_NAMES"]) == set(PRESETS)
    assert constants["PRESET_NAMES"][0] == "auto"  # planned from the cases: the default
    assert constants["DEVICES"] == ("auto", "cpu", "cuda")
    for name, (annotation, default) in fields.items():
        match = re.search(r"Choice\((\w+)\)", annotation)
        if match:
            choices = constants[match.group(1)]
            assert default is not None and ast.literal_eval(default) in choices, name
    iterations_range = re.search(r"WithinRange\((\d+), (\d+)\)", fields["iterations"][0])
    assert iterations_range and int(iterations_range.group(1)) == 0


def test_devices_match_the_service_schema():
    pytest.importorskip("pydantic")
    import typing

    from reciprocalseg.service.schemas import TrainingRequest

    annotation = TrainingRequest.model_fields["device"].annotation
    literal = next(a for a in typing.get_args(annotation) if typing.get_origin(a) is typing.Literal)
    assert set(typing.get_args(literal)) == set(module_constants()["DEVICES"])


# --------------------------------------------------------------------------- pure helpers of the module


def load_helpers(*names: str) -> dict[str, object]:
    """Compile selected top-level functions/classes of the module (they need no Slicer) with its constants."""
    namespace = module_constants()
    namespace["re"] = re
    for node in module_tree().body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
            exec(compile(ast.Module(body=[node], type_ignores=[]), str(MODULE_FILE), "exec"), namespace)
    missing = [n for n in names if n not in namespace]
    assert not missing, missing
    return namespace


def test_case_ids_from_node_names_are_valid_service_ids():
    from ReciprocalSegLib.scene_cases import case_id_from_name as case_id

    from reciprocalseg.service.workspace import CASE_ID_PATTERN

    assert case_id("MRHead") == "MRHead"
    assert case_id("CT chest (1)") == "CT_chest_1"
    assert case_id("__x") == "x"
    assert case_id("") == "case"
    for name in ("MRHead", "CT chest (1)", "__x", "", "é" * 80, "a" * 100, ".hidden", "Ω"):
        assert re.match(CASE_ID_PATTERN, case_id(name)), name


def test_training_status_line_from_a_real_client_status():
    from ReciprocalSegLib.status_text import format_duration as duration
    from ReciprocalSegLib.status_text import format_training_status as fmt
    from ReciprocalSegLib.status_text import round_end_message

    from reciprocalseg.client import TrainingStatus

    assert duration(None) == "?"
    assert duration(65) == "1 min 05 s"
    assert duration(3725) == "1 h 02 min"
    running = TrainingStatus(
        state="running", phase="reciprocal", iteration=40, total=150, eta_s=95.0,
        losses={"student": 0.41234, "teacher": 0.2, "note": "x"}, device="cuda",
    )  # fmt: skip
    line = fmt(running)
    assert (
        line
        == "running · reciprocal · iteration 40/150 · ETA 1 min 35 s · student 0.4123, teacher 0.2 · on cuda"
    )
    failed = TrainingStatus(state="failed", message="CUDA out of memory: try the lite preset")
    assert fmt(failed) == "failed · CUDA out of memory: try the lite preset"
    assert fmt(TrainingStatus(state="idle")) == "idle"
    assert round_end_message(failed) == ("Training failed. CUDA out of memory: try the lite preset", True)
    assert round_end_message(TrainingStatus(state="completed", round=3))[0].startswith(
        "Training round 3 finished"
    )
    # The plan the round runs: its preset and the budget the panel asked for (issue 16).
    planned = TrainingStatus(
        state="running", phase="supervised", iteration=3, total=90, eta_s=60.0, preset="auto"
    )
    assert (
        fmt(planned, minutes=10)
        == "running · supervised · iteration 3/90 · ETA 1 min 00 s · preset auto, budget 10 min"
    )
    assert fmt(planned).endswith("· preset auto")  # iterations, no budget


def test_model_description_says_round_or_live_checkpoint():
    from ReciprocalSegLib.status_text import model_description

    from reciprocalseg.client import PredictionResult

    def result(**fields):
        return PredictionResult(case_id="a", round=4, score=0.1, time="", **fields)

    assert model_description(result()) == "round 4"
    live = result(live=True, phase="reciprocal", iteration=120)
    assert model_description(live) == "live: round 4 iteration 120 (reciprocal)"
    assert model_description(result(live=True)) == "live: round 4"


def test_case_table_columns_of_the_ui_are_the_lib_columns():
    from ReciprocalSegLib.case_table import CASE_COLUMNS

    root, _, _ = ui_widgets()
    table = next(w for w in root.iter("widget") if w.get("name") == "casesTable")
    assert tuple(c.findtext("property/string") for c in table.findall("column")) == CASE_COLUMNS


def test_unannotated_value_is_the_core_packages():
    """The Lib writes 255 for unpainted scribble voxels (and keeps it out of the class range):
    the value the core package reads as unannotated (issue 17's agreed interface)."""
    from ReciprocalSegLib import scribbles, segment_export

    from reciprocalseg.common import file_formats

    assert scribbles.UNANNOTATED == segment_export.UNANNOTATED == 255
    assert segment_export.MAX_CLASS == 254
    if not hasattr(file_formats, "UNANNOTATED"):
        pytest.skip("reciprocalseg.common.file_formats.UNANNOTATED arrives with issue 17 part 1")
    assert file_formats.UNANNOTATED == segment_export.UNANNOTATED


def test_annotation_modes_of_the_panel():
    """The panel's modes: the full label (the correction mode, the default) and the scribbles."""
    constants = module_constants()
    assert constants["ANNOTATION_MODES"] == ("full label", "scribbles")
    assert constants["SCRIBBLES"] in constants["ANNOTATION_MODES"]
    assert ast.literal_eval(parameter_node_fields()["annotationMode"][1]) == "full label"


def test_minutes_field_has_the_service_limit():
    pytest.importorskip("pydantic")
    from reciprocalseg.service.schemas import TrainingRequest

    bounds = re.search(r"WithinRange\(([\d.]+), ([\d.]+)\)", parameter_node_fields()["minutes"][0])
    limit = next(m.le for m in TrainingRequest.model_fields["minutes"].metadata if hasattr(m, "le"))
    assert bounds and float(bounds.group(1)) == 0 and float(bounds.group(2)) == limit
    root, _, _ = ui_widgets()
    spin = next(w for w in root.iter("widget") if w.get("name") == "minutesSpinBox")
    maximum = next(p for p in spin.findall("property") if p.get("name") == "maximum")
    assert float(maximum.findtext("double")) == limit


def test_learning_curve_samples_continue_across_phases():
    from ReciprocalSegLib.learning_curve import LearningCurve

    curve = LearningCurve(scene=None)  # the samples need no scene; the nodes are tested on real MRML

    def status(iteration, phase, overall=None, **losses):
        return SimpleNamespace(
            iteration=iteration, phase=phase, run_id="r1", overall_iteration=overall, losses=losses
        )

    assert curve.add(status(10, "supervised", teacher=1.0))
    assert not curve.add(status(10, "supervised", teacher=1.0))  # same poll answer twice
    assert curve.add(status(20, "supervised", teacher=0.8))
    assert curve.add(status(5, "reciprocal", teacher=0.7, student=0.9))  # phase restarts at 0
    assert not curve.add(status(None, "reciprocal", teacher=0.7))
    assert not curve.add(status(6, "reciprocal"))  # no losses yet
    assert curve.steps == [10, 20, 25]
    assert curve.losses["teacher"] == [1.0, 0.8, 0.7]
    assert curve.losses["student"][2] == 0.9 and all(v != v for v in curve.losses["student"][:2])  # NaN
    curve.reset()
    assert curve.add(status(3, "supervised", overall=3, teacher=1.0))
    assert curve.add(status(2, "reciprocal", overall=153, teacher=0.5))  # service's overall count wins
    assert curve.steps == [3, 153]


# --------------------------------------------------------------------------- GUI thread never waits


def network_calls_outside_tasks(tree: ast.Module, network: frozenset) -> list[str]:
    """``self.logic.<network method>(...)`` calls in the widget that are not inside the work
    function (2nd argument) of a ``self._run(...)`` call: those would block the GUI thread."""
    with_parents(tree)
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ReciprocalSegWidget")
    work_nodes: set[int] = set()
    named_work: set[str] = set()
    for node in ast.walk(widget):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "_run"
            and len(node.args) >= 2
        ):
            work = node.args[1]
            if isinstance(work, ast.Name):
                named_work.add(work.id)
            else:
                work_nodes.add(id(work))
    for node in ast.walk(widget):  # `start = lambda c: ...` / `def start(context): ...` passed by name
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) in named_work for t in node.targets):
            work_nodes.add(id(node.value))
        if isinstance(node, ast.FunctionDef) and node.name in named_work:
            work_nodes.add(id(node))
    problems = []
    for node in ast.walk(widget):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        target = node.func
        if not (
            target.attr in network
            and isinstance(target.value, ast.Attribute)
            and target.value.attr == "logic"
            and isinstance(target.value.value, ast.Name)
            and target.value.value.id == "self"
        ):
            continue
        parent = getattr(node, "parent", None)
        while parent is not None and id(parent) not in work_nodes:
            parent = getattr(parent, "parent", None)
        if parent is None:
            problems.append(f"line {node.lineno}: self.logic.{target.attr}(...) on the GUI thread")
    return problems


def test_widget_calls_the_service_only_through_the_task_runner():
    from ReciprocalSegLib.logic import NETWORK_METHODS

    tree = module_tree()
    assert not network_calls_outside_tasks(tree, NETWORK_METHODS)
    # The checker found the calls it allows (the widget really routes them through _run).
    allowed = sum(1 for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in NETWORK_METHODS)
    assert allowed >= 10


def test_task_runner_check_catches_a_blocking_slot():
    source = textwrap.dedent(
        """
        class ReciprocalSegWidget:
            def onPredict(self):
                self._run("ok", lambda c: self.logic.fetch_prediction("a"), self.done)
                self.logic.predict("a")

            def onStart(self):
                def start(context):
                    return self.logic.start_training()
                self._run("ok", start, lambda r: self.logic.next_case())
        """
    )
    network = frozenset({"predict", "fetch_prediction", "start_training", "next_case"})
    problems = network_calls_outside_tasks(ast.parse(source), network)
    assert [p.split(":")[1].strip() for p in problems] == [
        "self.logic.predict(...) on the GUI thread",
        "self.logic.next_case(...) on the GUI thread",
    ]


# --------------------------------------------------------------------------- (6) slicer_requirements


def test_requirements_mirror_pyproject_dependencies():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert list(sr.REQUIREMENTS) == pyproject["project"]["dependencies"]


def test_bundled_packages_are_never_installed():
    def nothing_installed(name):
        return None

    missing = sr.missing_requirements(version_of=nothing_installed)
    names = [sr.requirement_name(spec) for spec in missing]
    assert not set(names) & sr.SLICER_BUNDLED
    assert not {"numpy", "simpleitk", "requests", "scipy"} & set(names)
    assert names == ["torch", "scikit-image", "fastapi", "uvicorn", "pydantic", "python-multipart", "psutil"]
    assert sr.NEVER_INSTALL <= sr.SLICER_BUNDLED
    # Even an old bundled package is left alone.
    old = {"numpy": "1.0", "scipy": "0.1", "SimpleITK": None}
    assert not sr.missing_requirements(["numpy>=1.24", "scipy>=1.10", "SimpleITK>=2.2"], version_of=old.get)


def test_missing_and_outdated_packages_are_found_in_order():
    installed = {"torch": "2.13.0+cpu", "fastapi": "0.100.0", "uvicorn": "0.30", "pydantic": "2.5",
                 "python-multipart": "0.0.34", "psutil": "7.2.2"}  # fmt: skip
    missing = sr.missing_requirements(version_of=installed.get)
    assert missing == ["scikit-image>=0.21", "fastapi>=0.110"]
    everything = {sr.split_requirement(s)[0]: "99" for s in sr.REQUIREMENTS}
    assert sr.missing_requirements(version_of=everything.get) == []


def test_version_comparison():
    assert sr.version_satisfies("2.13.0+cpu", "2.1")
    assert sr.version_satisfies("0.0.34", "0.0.9")
    assert sr.version_satisfies("1.10", "1.10.0")
    assert not sr.version_satisfies("1.9", "1.10")
    assert not sr.version_satisfies("0.27rc1", "0.28")
    assert sr.version_satisfies("2.5.0.post1", "2.5")
    assert sr.version_satisfies("anything", None)


def test_requirement_parsing():
    assert sr.split_requirement("fastapi>=0.110") == ("fastapi", "0.110")
    assert sr.split_requirement("psutil") == ("psutil", None)
    assert sr.requirement_name("Python_Multipart>=1") == "python-multipart"
    assert sr.canonical_name("SimpleITK") == "simpleitk"
    with pytest.raises(ValueError):
        sr.split_requirement("torch==2.1")
    with pytest.raises(ValueError):
        sr.split_requirement("torch; python_version<'3.10'")


def test_torch_goes_to_the_pytorch_extension():
    torch_req, rest = sr.split_torch(["torch>=2.1", "fastapi>=0.110"])
    assert torch_req == ">=2.1" and rest == ["fastapi>=0.110"]
    assert sr.split_torch(["torch"]) == ("", [])
    assert sr.split_torch(["psutil>=5.9"]) == (None, ["psutil>=5.9"])


def test_constraints_pin_installed_bundled_packages():
    installed = {"numpy": "1.26.4", "requests": "2.32.3", "vtk": None, "simpleitk": "2.5.5"}
    lines = sr.constraints_for_bundled(version_of=installed.get)
    assert lines == ["numpy==1.26.4", "requests==2.32.3", "simpleitk==2.5.5"]


def test_missing_requirements_in_this_environment_uses_real_metadata():
    """Against this interpreter: whatever is reported missing really has no (new enough) distribution."""
    for spec in sr.missing_requirements():
        name, minimum = sr.split_requirement(spec)
        have = sr.installed_version(name)
        assert have is None or not sr.version_satisfies(have, minimum)
    assert sr.installed_version("pytest") is not None
    assert sr.installed_version("surely-not-a-real-distribution-name") is None
