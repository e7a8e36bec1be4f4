"""GUI-thread steps of a task (issue 26, item 6): ``TaskContext.on_main`` with real threads.

A task's work asks the polling (GUI) thread to run a step and gets its result or its error;
``poll()`` runs one step per call, so the GUI thread gets its events in between; a step that
opens a modal dialog (whose event loop polls again) is not re-entered; a step still queued when
the task is cancelled never runs. ``DIRECT`` runs the same work inline (the Python console).
"""

from __future__ import annotations

import threading

import pytest


def test_a_step_runs_on_the_polling_thread_and_its_result_comes_back():
    from ReciprocalSegLib.tasks import TaskRunner

    runner, out, where = TaskRunner(), {}, []

    def work(context):
        first = context.on_main(lambda: where.append(threading.get_ident()) or 20)
        second = context.on_main(lambda: where.append(threading.get_ident()) or 22)
        return threading.get_ident(), first + second

    runner.submit("steps", work, lambda r: out.update(result=r))
    assert runner.wait(timeout=30)
    worker, total = out["result"]
    assert total == 42
    assert where == [threading.get_ident()] * 2 and worker != threading.get_ident()


def test_one_step_per_poll():
    from ReciprocalSegLib.tasks import TaskRunner

    runner, ran, release = TaskRunner(), [], threading.Event()

    def work(context):
        context.on_main(lambda: ran.append(1))
        context.on_main(lambda: ran.append(2))
        release.wait(10)

    runner.submit("two steps", work)
    polls = 0
    while len(ran) < 2 and polls < 10000:
        before = len(ran)
        runner.poll()
        assert len(ran) - before <= 1
        polls += 1
        threading.Event().wait(0.001)
    release.set()
    assert runner.wait(timeout=30) and ran == [1, 2]


def test_a_steps_error_is_raised_in_the_task():
    from ReciprocalSegLib.tasks import TaskRunner

    runner, errors = TaskRunner(), []

    def work(context):
        context.on_main(lambda: 1 / 0)

    runner.submit("failing step", work, on_error=errors.append)
    assert runner.wait(timeout=30)
    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)


def test_a_step_queued_when_the_task_is_cancelled_never_runs():
    from ReciprocalSegLib.tasks import TaskCancelled, TaskRunner

    runner, ran, errors, asked = TaskRunner(), [], [], threading.Event()

    def work(context):
        asked.set()
        context.on_main(lambda: ran.append("step"))

    runner.submit("cancelled", work, on_error=errors.append)
    assert asked.wait(10)
    runner.cancel()  # nobody polled: the step is still queued
    while runner._task is not None and runner._task.thread.is_alive():
        threading.Event().wait(0.01)
    assert runner.wait(timeout=30)
    assert ran == [] and len(errors) == 1 and isinstance(errors[0], TaskCancelled)


def test_a_modal_step_is_not_reentered():
    """A step that opens a dialog runs the event loop, which polls again: nothing more happens."""
    from ReciprocalSegLib.tasks import TaskRunner

    runner, inner = TaskRunner(), []

    def modal():
        inner.append(runner.poll())  # the dialog's event loop polling
        return "ok"

    runner.submit("modal", lambda context: context.on_main(modal))
    assert runner.wait(timeout=30)
    assert inner == [False]


def test_direct_runs_the_steps_inline():
    from ReciprocalSegLib.tasks import DIRECT

    assert DIRECT.on_main(lambda: threading.get_ident()) == threading.get_ident()
    assert not DIRECT.cancelled
    DIRECT.progress(0.5, "ignored")
    DIRECT.check_cancelled()
    with pytest.raises(ZeroDivisionError):
        DIRECT.on_main(lambda: 1 / 0)
