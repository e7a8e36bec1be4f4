"""What the static checks of the Slicer extension share: paths, AST readers of the module and its
Lib, the .ui's widgets, and the members known per widget class.

The checks (tests/slicer/test_static_*.py, one file per kind) run in CI, where 3D Slicer itself
cannot run; what runs inside Slicer is registered with ctest (Testing/README.md).
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "ReciprocalSeg"
MODULE_FILE = MODULE_DIR / "ReciprocalSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "ReciprocalSeg.ui"
UTIL_TABLE = Path(__file__).with_name("slicer_util_functions.txt")
SHARED_UTIL_TABLE = REPO.parent / "shared" / "docs" / "slicer-util-functions.txt"
SLICER_DOC = REPO / "docs" / "SLICER.md"
LIB_DIR = MODULE_DIR / "ReciprocalSegLib"
LIB_FILES = sorted(LIB_DIR.glob("*.py"))
# The panel's Qt side beyond the module file (dialogs built in code, application-side steps).
WIDGETS_DIR = MODULE_DIR / "ReciprocalSegWidgets"
WIDGETS_FILES = sorted(WIDGETS_DIR.glob("*.py"))
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
    """The module file, its Lib and its Qt-side helpers (every file that may call Slicer)."""
    return [module_tree(), *(lib_tree(p) for p in (*LIB_FILES, *WIDGETS_FILES))]


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
