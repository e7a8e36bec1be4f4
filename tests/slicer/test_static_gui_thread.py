"""The GUI thread never waits: the widget calls the service only through the task runner."""

from __future__ import annotations

import ast
import textwrap

from static_checks import module_tree, with_parents

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
