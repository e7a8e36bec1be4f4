"""The panel's background work outside Qt: ReciprocalSegLib.tasks with real threads."""

from __future__ import annotations

import threading
import time

import pytest
from ReciprocalSegLib.tasks import StatusPoller, TaskBusyError, TaskCancelled, TaskRunner


def test_result_and_progress_arrive_on_the_polling_thread():
    runner = TaskRunner()
    seen = []
    release = threading.Event()

    def work(context):
        context.progress(0.5, "half")
        release.wait(5)
        return threading.get_ident()

    runner.submit("job", work, on_done=lambda r: seen.append(("done", r, threading.get_ident())),
                  on_progress=lambda f, t: seen.append(("progress", f, t)))  # fmt: skip
    assert runner.busy and runner.current == "job"
    release.set()
    assert runner.wait(timeout=5)
    worker_id = seen[-1][1]
    assert seen[0] == ("progress", 0.5, "half")
    assert seen[-1][2] == threading.get_ident() != worker_id  # callbacks here, work elsewhere
    assert not runner.busy


def test_a_second_press_is_refused_while_a_task_runs():
    runner = TaskRunner()
    release = threading.Event()
    runner.submit("slow", lambda c: release.wait(5))
    with pytest.raises(TaskBusyError, match="slow"):
        runner.submit("again", lambda c: None)
    release.set()
    assert runner.wait(timeout=5)
    runner.submit("after", lambda c: 1)  # free again once the first is delivered
    assert runner.wait(timeout=5)


def test_errors_reach_on_error_and_cancel_stops_a_long_task():
    runner = TaskRunner()
    errors = []
    runner.submit("boom", lambda c: 1 / 0, on_error=errors.append)
    assert runner.wait(timeout=5)
    assert isinstance(errors[0], ZeroDivisionError)

    steps = []

    def long(context):
        for i in range(1000):
            context.check_cancelled()
            steps.append(i)
            time.sleep(0.01)

    runner.submit("long", long, on_error=errors.append)
    while not steps:
        time.sleep(0.005)
    assert runner.cancel()
    assert runner.wait(timeout=5)
    assert isinstance(errors[-1], TaskCancelled) and len(steps) < 1000


def test_a_done_callback_can_start_the_next_step():
    runner = TaskRunner()
    order = []
    runner.submit(
        "first", lambda c: 1, on_done=lambda r: runner.submit("second", lambda c: 2, on_done=order.append)
    )
    assert runner.wait(timeout=5)
    assert order == [2]


def test_poll_never_blocks_while_work_runs():
    runner = TaskRunner()
    release = threading.Event()
    runner.submit("slow", lambda c: release.wait(5))
    started = time.perf_counter()
    for _ in range(100):
        runner.poll()
    elapsed = time.perf_counter() - started
    release.set()
    assert runner.wait(timeout=5)
    print(f"100 polls while a task ran: {elapsed * 1e3:.2f} ms")


def test_status_poller_drops_answers_of_an_earlier_generation():
    poller = StatusPoller()
    release = threading.Event()
    poller.poll(lambda: release.wait(5) and "old round")
    poller.new_generation()  # a new round started while the request was in flight
    release.set()
    time.sleep(0.2)
    assert poller.drain() == []
    poller.poll(lambda: "new round")
    time.sleep(0.2)
    assert poller.drain() == [("status", "new round")]
    poller.poll(lambda: 1 / 0)
    time.sleep(0.2)
    ((kind, error),) = poller.drain()
    assert kind == "error" and isinstance(error, ZeroDivisionError)
