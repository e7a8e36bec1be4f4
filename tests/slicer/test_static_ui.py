"""The .ui and the module agree: widgets used exist with compatible classes and members, the
parameter node's fields match the .ui and the service's values.
"""

from __future__ import annotations

import ast
import re
import textwrap

import pytest
from static_checks import (
    UI_FILE,
    WIDGET_MEMBERS,
    class_members,
    module_constants,
    module_tree,
    parameter_node_fields,
    ui_usages,
    ui_widgets,
)

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


# --------------------------------------------------------------------------- (5) .ui + parameter node


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
