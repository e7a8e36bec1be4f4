"""Service lifecycle on real processes: parent death, stale files, reconnecting, graceful stop.

The "parent" is a real Python process that starts the service through the launcher, as the
Slicer module does, and is then SIGKILLed (what a Slicer crash looks like to the service).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
from service_helpers import start_service

from reciprocalseg.client.local_service import (
    LaunchError,
    LocalService,
    find_live_service,
    service_python,
)
from reciprocalseg.common.service_files import STOP_PATH, workspace_in_use
from reciprocalseg.data.io import Case
from reciprocalseg.training.checkpoint import load_checkpoint

needs_posix = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL of the parent is POSIX")

# Long enough that it is still running when the parent dies; a checkpoint every iteration.
TRAIN_LONG = {
    "preset": "demo",
    "supervised_iterations": 2000,
    "iterations": 0,
    "device": "cpu",
    "checkpoint_every": 1,
}

PARENT = """
import json, sys, time
from reciprocalseg.client import LocalService
svc = LocalService(sys.argv[1], device="cpu")   # parent_pid defaults to this process
url, token = svc.start(timeout=120)
client = svc.client(timeout=120)
for image, label in zip(sys.argv[2::2], sys.argv[3::2]):
    info = client.add_case(image)
    client.put_label(info.id, label, author="test")
st = client.start_training(**json.loads(sys.argv[-1]))
print(json.dumps({"service_pid": svc.pid, "run_id": st.run_id}), flush=True)
time.sleep(3600)
"""


def _wait(pred, timeout: float, what: str) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _end_leftovers(ws: Path) -> None:
    """A failed run must not leave its service (and training worker) running."""
    pid = _text(ws / ".service" / "pid")
    if pid and not _gone(int(pid)):
        from reciprocalseg.common.processes import terminate_tree

        terminate_tree(psutil.Process(int(pid)), timeout=30)


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _job(workspace: Path, run_id: str) -> dict:
    return json.loads((workspace / "runs" / run_id / "job.json").read_text())


@needs_posix
def test_the_service_stops_gracefully_when_its_parent_is_killed(tmp_path: Path, phantoms: list[Case]) -> None:
    ws = tmp_path / "ws"
    args = [str(p) for c in phantoms[:2] for p in (c.image, c.label)]
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(ws), *args, json.dumps(TRAIN_LONG)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        started = json.loads(parent.stdout.readline())
        service_pid, run_id = started["service_pid"], started["run_id"]
        run_dir = ws / "runs" / run_id
        _wait(lambda: (run_dir / "checkpoints" / "latest.pt").exists(), 300, "a first checkpoint")
        worker = _job(ws, run_id)["pid"]
        assert worker and psutil.pid_exists(worker)

        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        _wait(lambda: _gone(service_pid), 120, "the service to end after its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
        _end_leftovers(ws)
    log = (ws / ".service" / "server.log").read_text()
    assert f"parent process {parent.pid} has ended" in log
    # Graceful: the worker was stopped with a checkpoint and the run is left to resume...
    assert _gone(worker)
    job = _job(ws, run_id)
    assert job["state"] == "running" and job["pid"] is None
    assert "resumes when the service starts again" in job["message"]
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt") is not None
    # ...and the service cleaned up after itself: no stale address, the workspace is free.
    assert not (ws / ".service" / "url").exists()
    assert not (ws / ".service" / "pid").exists()
    assert not workspace_in_use(ws)


@needs_posix
def test_files_of_a_killed_service_are_recovered_with_a_message(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    first = LocalService(ws, device="cpu")
    first.start(timeout=120)
    dead_pid = first.pid
    first.kill()  # SIGKILL: no clean-up; the OS releases the file lock
    assert (ws / ".service" / "url").exists() and (ws / ".service" / "pid").exists()
    assert not workspace_in_use(ws)
    assert find_live_service(ws) is None  # a stale URL file is not a live service

    # The server itself says so when started directly (reciprocalseg serve)...
    (ws / ".service" / "pid").write_text(f"{dead_pid}\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "reciprocalseg.service.server", "--workspace", str(ws), "--device", "cpu"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(lambda: _text(ws / ".service" / "url") is not None, 120, "the new service's address")
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    assert f"service that ended without cleaning up (pid {dead_pid})" in err
    # ...and the launcher, which clears them before starting a new service.
    (ws / ".service" / "pid").write_text(f"{dead_pid}\n")
    (ws / ".service" / "url").write_text("http://127.0.0.1:9\n")
    second = LocalService(ws, device="cpu")
    try:
        second.start(timeout=120)
        assert not second.reconnected
        assert any(f"pid {dead_pid}" in note and "ended without cleaning up" in note for note in second.notes)
        assert second.client().info().version
    finally:
        second.stop()


def test_a_live_service_is_reconnected_to_instead_of_refused(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    first = start_service(ws, device="cpu", parent_pid=None)  # e.g. left by an earlier session
    try:
        live = find_live_service(ws)
        assert live is not None
        assert (live.url, live.token, live.pid) == (
            first.launcher.url,
            first.launcher.token,
            first.launcher.pid,
        )

        again = LocalService(ws, device="cpu")
        url, token = again.start(timeout=120)
        assert again.reconnected and (url, token) == (live.url, live.token)
        assert any("reconnected" in note for note in again.notes)
        assert again.client().info().version
        # Stopping through the reconnected launcher ends the one service, gracefully.
        assert again.stop() is None  # not our child: no exit code to report
        assert first.launcher.process is not None
        assert first.launcher.process.wait(timeout=60) == 0
        assert "stop requested over HTTP" in first.launcher.log_tail(50)
        assert not workspace_in_use(ws)
    finally:
        first.launcher.stop()


def test_the_stop_request_needs_the_token_and_stays_out_of_the_api_schema(tmp_path: Path) -> None:
    run = start_service(tmp_path / "ws", device="cpu")
    try:
        url = run.launcher.url
        assert requests.post(url + STOP_PATH, timeout=10).status_code == 401
        headers = {"Authorization": f"Bearer {run.launcher.token}"}
        schema = requests.get(url + "/openapi.json", headers=headers, timeout=10).json()
        assert "/health" in schema["paths"] and STOP_PATH not in schema["paths"]
        assert run.launcher.running
    finally:
        code = run.launcher.stop()
    assert code == 0  # a clean exit (the HTTP request, not a kill)
    assert "stop requested over HTTP" in run.launcher.log_tail(50)


@needs_posix
def test_stop_checkpoints_a_running_training(tmp_path: Path, phantoms: list[Case]) -> None:
    run = start_service(tmp_path / "ws", device="cpu")
    try:
        for case in phantoms[:2]:
            run.client.add_case(case.image)
            run.client.put_label(case.case_id, case.label, author="test")
        st = run.client.start_training(**TRAIN_LONG)
        run_dir = run.workspace / "runs" / st.run_id
        _wait(lambda: (run_dir / "checkpoints" / "latest.pt").exists(), 300, "a first checkpoint")
        worker = _job(run.workspace, st.run_id)["pid"]
    finally:
        code = run.launcher.stop()
    assert code == 0
    assert _gone(worker)
    job = _job(run.workspace, st.run_id)
    assert job["pid"] is None and "resumes when the service starts again" in job["message"]


def test_the_service_python_inside_slicer_is_pythonslicer_never_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert service_python(inside_slicer=False) == sys.executable
    app_dir = tmp_path / "Slicer-5.12.3" / "bin"
    app_dir.mkdir(parents=True)
    app = app_dir / "SlicerApp-real"
    app.write_text("")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(LaunchError, match="PythonSlicer"):
        service_python(inside_slicer=True, executable=str(app))
    beside = app_dir / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    beside.write_text("")
    assert service_python(inside_slicer=True, executable=str(app)) == str(beside.resolve())
    on_path = tmp_path / "path-bin"
    on_path.mkdir()
    exe = on_path / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path))
    assert service_python(inside_slicer=True, executable=str(app)) == str(exe)


def test_the_launcher_refuses_slicers_own_executable_as_the_services_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old fallback ``shutil.which("PythonSlicer") or sys.executable`` opened a second Slicer."""
    import types

    slicer_app = types.ModuleType("slicer")
    slicer_app.app = object()  # type: ignore[attr-defined]  # what only the application's slicer has
    monkeypatch.setitem(sys.modules, "slicer", slicer_app)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(LaunchError, match="PythonSlicer"):
        LocalService(tmp_path / "ws", python=sys.executable)
    assert LocalService(tmp_path / "ws", python="/opt/python3").python == "/opt/python3"
