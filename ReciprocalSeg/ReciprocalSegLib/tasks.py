"""Background work for the panel: one task at a time on a worker thread, results on the GUI thread.

Qt widgets and MRML nodes may only be touched on the main thread, and a network call or a
child process may take minutes. So a task's ``work`` runs on a plain ``threading.Thread`` and
sees only a :class:`TaskContext` (progress, cancellation); its outcome goes into a queue that the
widget drains with ``TaskRunner.poll()`` from a ``qt.QTimer``; ``on_done`` / ``on_error`` /
``on_progress`` therefore run on the thread that calls ``poll()``. Nothing here imports Qt, so
the runner is tested in plain Python (tests/slicer/test_tasks.py).

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
        """Deliver queued progress and the outcome (call on the GUI thread); True when a task ended."""
        task = self._task
        if task is None:
            return False
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
