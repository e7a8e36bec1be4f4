"""Background work for the panel: one task at a time on a worker thread, results on the GUI thread.

Qt widgets and MRML nodes may only be touched on the main thread, and a network call or a
child process may take minutes. So a task's ``work`` runs on a plain ``threading.Thread`` and
sees only a :class:`TaskContext` (progress, cancellation, ``on_main``); its outcome goes into a
queue that the widget drains with ``TaskRunner.poll()`` from a ``qt.QTimer``; ``on_done`` /
``on_error`` / ``on_progress`` therefore run on the thread that calls ``poll()``. Nothing here
imports Qt, so the runner is tested in plain Python (tests/slicer/test_tasks.py).

Work that must touch the scene asks for it with ``context.on_main(step)``: the step runs in the
next ``poll()`` (one step per poll, so the GUI thread is never held longer than one step) and its
result (or exception) comes back to the worker. Scripts and the Python console run the same work
functions with ``DIRECT``, whose ``on_main`` calls the step at once.

One task at a time is the guard against a second press: ``submit`` refuses while a task runs
(``TaskBusyError``) and ``busy`` tells the widget to disable its buttons.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class TaskBusyError(RuntimeError):
    """A task is already running; wait for it or cancel it first."""


class TaskCancelled(Exception):
    """Raised inside a task's work by ``TaskContext.check_cancelled`` after ``cancel()``."""


@dataclass
class TaskContext:
    """What a task's work function sees: report progress, notice cancellation."""

    name: str
    _events: queue.Queue[tuple[str, Any]]
    _cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise TaskCancelled(f"{self.name} cancelled")

    def progress(self, fraction: float | None, text: str = "") -> None:
        """Thread-safe: queued and shown by ``poll()`` (fraction in [0, 1] or None for busy)."""
        self._events.put(("progress", (fraction, text)))

    def on_main(self, step: Callable[[], Any]) -> Any:
        """Run ``step()`` on the polling (GUI) thread and return its result or raise its error;
        the worker waits. TaskCancelled when the task is cancelled before the step started."""
        call = _MainCall(step)
        self._events.put(("main", call))
        while not call.finished.wait(0.05):
            if self._cancel.is_set() and call.abandon():
                raise TaskCancelled(f"{self.name} cancelled")
        if call.error is not None:
            raise call.error
        return call.result


class _MainCall:
    """A step waiting for the GUI thread: it runs at most once, and never after being abandoned."""

    def __init__(self, step: Callable[[], Any]) -> None:
        self.step = step
        self.finished = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._state = "queued"

    def abandon(self) -> bool:
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "abandoned"
            return True

    def run(self) -> None:
        with self._lock:
            if self._state != "queued":
                return
            self._state = "running"
        try:
            self.result = self.step()
        except BaseException as error:  # handed to the worker, which raises it in the task
            self.error = error
        finally:
            self.finished.set()


class DirectContext:
    """The context of work run directly (scripts, the Python console, tests): steps run at once,
    progress is dropped, nothing is cancelled."""

    name = "direct"
    cancelled = False

    def check_cancelled(self) -> None:
        return None

    def progress(self, fraction: float | None, text: str = "") -> None:
        return None

    @staticmethod
    def on_main(step: Callable[[], Any]) -> Any:
        return step()


DIRECT = DirectContext()


@dataclass
class _Task:
    name: str
    context: TaskContext
    thread: threading.Thread
    on_done: Callable[[Any], None] | None
    on_error: Callable[[BaseException], None] | None
    on_progress: Callable[[float | None, str], None] | None
    started: float


class TaskRunner:
    """Runs one ``work(context)`` at a time on a daemon thread; ``poll()`` delivers its results."""

    def __init__(self) -> None:
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._task: _Task | None = None
        self._polling = False  # a step may open a modal dialog, whose event loop polls again

    @property
    def busy(self) -> bool:
        return self._task is not None

    @property
    def current(self) -> str | None:
        """Name of the running task, or None."""
        return None if self._task is None else self._task.name

    def elapsed(self) -> float:
        return 0.0 if self._task is None else time.monotonic() - self._task.started

    def submit(
        self,
        name: str,
        work: Callable[[TaskContext], Any],
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_progress: Callable[[float | None, str], None] | None = None,
    ) -> TaskContext:
        """Start ``work`` on a worker thread; raises TaskBusyError while another task runs."""
        if self._task is not None:
            raise TaskBusyError(f"'{self._task.name}' is still running; wait for it or cancel it.")
        # A fresh queue per task: a late event of an earlier task can never reach this one's callbacks.
        self._events = queue.Queue()
        context = TaskContext(name, self._events)
        thread = threading.Thread(target=self._run, args=(work, context), name=f"ReciprocalSeg {name}")
        thread.daemon = True  # never keeps Slicer from exiting
        self._task = _Task(name, context, thread, on_done, on_error, on_progress, time.monotonic())
        thread.start()
        return context

    @staticmethod
    def _run(work: Callable[[TaskContext], Any], context: TaskContext) -> None:
        try:
            result = work(context)
        except BaseException as error:  # reported on the polling thread, never lost
            context._events.put(("error", error))
        else:
            context._events.put(("done", result))

    def cancel(self) -> bool:
        """Ask the running task to stop (its work checks ``context.cancelled``); False if none runs."""
        if self._task is None:
            return False
        self._task.context._cancel.set()
        return True

    def poll(self) -> bool:
        """Deliver queued progress, run at most one GUI-thread step of the task, deliver its outcome
        (call on the GUI thread); True when a task ended."""
        task = self._task
        if task is None or self._polling:
            return False
        self._polling = True
        try:
            return self._deliver(task)
        finally:
            self._polling = False

    def _deliver(self, task: _Task) -> bool:
        events = self._events
        while True:
            try:
                kind, payload = events.get_nowait()
            except queue.Empty:
                return False
            if kind == "progress":
                if task.on_progress is not None:
                    task.on_progress(*payload)
                continue
            if kind == "main":
                payload.run()
                return False  # one step per poll: the GUI thread gets its events in between
            # The task ended: free the runner before the callback, which may submit the next step.
            self._task = None
            callback = task.on_done if kind == "done" else task.on_error
            if callback is not None:
                callback(payload)
            elif kind == "error" and not isinstance(payload, TaskCancelled):
                raise payload
            return True

    def wait(self, timeout: float | None = None, interval: float = 0.01) -> bool:
        """Poll until no task runs (scripts and tests only, never the GUI); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._task is not None:
            self.poll()
            if self._task is None:
                break
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(interval)
        return True


class StatusPoller:
    """Asks ``fetch()`` on a thread at most once at a time; ``drain()`` returns the answers so far.

    The panel's training progress: ``poll()`` from a QTimer starts one request when none is in
    flight; answers (or errors) asked for before ``new_generation()`` are dropped, so a status
    of the previous round never shows after a new one started.
    """

    def __init__(self) -> None:
        self._answers: queue.Queue[tuple[int, str, Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.generation = 0

    def new_generation(self) -> None:
        self.generation += 1

    def poll(self, fetch: Callable[[], Any]) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._ask, args=(fetch, self.generation), daemon=True)
        self._thread.start()

    def _ask(self, fetch: Callable[[], Any], generation: int) -> None:
        try:
            self._answers.put((generation, "status", fetch()))
        except Exception as error:  # reported on the polling thread
            self._answers.put((generation, "error", error))

    def drain(self) -> list:
        """[(kind, payload)] of the current generation, oldest first ("status" or "error")."""
        out = []
        while True:
            try:
                generation, kind, payload = self._answers.get_nowait()
            except queue.Empty:
                return out
            if generation == self.generation:
                out.append((kind, payload))
