"""Fault injection: SIGKILL the training worker and the service at several points, then check recovery."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
from service_helpers import Running

from reciprocalseg.client import ServiceError
from reciprocalseg.data.io import Case
from reciprocalseg.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

# Supervised-only rounds with a checkpoint every iteration: many checkpoint-write windows to hit.
TRAIN_CKPT = {
    "preset": "demo",
    "supervised_iterations": 4,
    "iterations": 0,
    "device": "cpu",
    "checkpoint_every": 1,
    "warm_start": False,
}


def _setup(run: Running, phantoms: list[Case], n_labels: int = 2) -> None:
    for case in phantoms[:4]:
        run.client.add_case(case.image)
    for case in phantoms[:n_labels]:
        run.client.put_label(case.case_id, case.label, author="a")


def _job(workspace: Path, run_id: str) -> dict:
    return json.loads((workspace / "runs" / run_id / "job.json").read_text())


def _events(workspace: Path, run_id: str) -> list[dict]:
    path = workspace / "runs" / run_id / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def _wait(pred, timeout: float, what: str, interval: float = 0.01) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def _checkpoint_writing(run_dir: Path) -> bool:
    """True while a checkpoint is being written (its temporary file exists)."""
    ckpt = run_dir / "checkpoints"
    return ckpt.exists() and any(p.name.startswith(".latest.tmp-") for p in ckpt.iterdir())


def _kill_in_checkpoint_window(run_dir: Path, pid: int, timeout: float = 600) -> str:
    """SIGKILL ``pid`` while it overwrites a checkpoint (or right after one, if the window is missed)."""
    end = time.monotonic() + timeout
    _wait(lambda: (run_dir / "checkpoints" / "latest.pt").exists(), timeout, "a first checkpoint")
    n_ckpt = sum(1 for e in _events(run_dir.parent.parent, run_dir.name) if e["event"] == "checkpoint")
    while time.monotonic() < end:
        if _checkpoint_writing(run_dir):
            os.kill(pid, signal.SIGKILL)
            return "during a checkpoint write"
        now = sum(1 for e in _events(run_dir.parent.parent, run_dir.name) if e["event"] == "checkpoint")
        if now > n_ckpt + 1:
            os.kill(pid, signal.SIGKILL)
            return "after a checkpoint"
        time.sleep(0.002)
    raise AssertionError("no checkpoint seen")


def test_worker_sigkill_resumes(service: Running, phantoms: list[Case]) -> None:
    ws, c = service.workspace, service.client
    _setup(service, phantoms)
    st = c.start_training(**TRAIN_CKPT)
    run_dir = ws / "runs" / st.run_id
    # kill 1: inside a checkpoint-write window
    pid1 = _job(ws, st.run_id)["pid"]
    where = _kill_in_checkpoint_window(run_dir, pid1)
    _wait(lambda: _job(ws, st.run_id)["launches"] == 2, 60, "the automatic resume")
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt") is not None, where
    # kill 2: mid-iteration, once the resumed worker has made progress
    _wait(lambda: any(e["event"] == "resumed" for e in _events(ws, st.run_id)), 300, "resumed event")
    pid2 = _job(ws, st.run_id)["pid"]
    assert pid2 != pid1
    os.kill(pid2, signal.SIGKILL)
    _wait(lambda: _job(ws, st.run_id)["launches"] == 3, 60, "the second resume")
    st = c.wait_for_training(poll=0.5, timeout=900)
    assert st.state == "completed", (st.message, (run_dir / "stderr.log").read_text()[-2000:])
    job = _job(ws, st.run_id)
    assert job["auto_resumes"] == 2 and job["round"] == 1
    assert sum(e["event"] == "resumed" for e in _events(ws, st.run_id)) >= 1
    assert c.list_models().current == 1
    assert not psutil.pid_exists(pid1) or psutil.Process(pid1).status() == psutil.STATUS_ZOMBIE


def test_service_sigkill_mid_training_resumes_on_restart(service: Running, phantoms: list[Case]) -> None:
    ws = service.workspace
    _setup(service, phantoms)
    st = service.client.start_training(**TRAIN_CKPT)
    run_dir = ws / "runs" / st.run_id
    worker = _job(ws, st.run_id)["pid"]
    # kill the service (not the worker) while the worker writes a checkpoint
    _wait(
        lambda: _checkpoint_writing(run_dir) or (run_dir / "checkpoints" / "latest.pt").exists(), 600, "ckpt"
    )
    service.launcher.kill()
    assert psutil.pid_exists(worker)  # the worker outlives the service (its own session)
    service.restart()
    # the orphan worker was stopped and the run relaunched from its checkpoint
    _wait(lambda: _job(ws, st.run_id)["launches"] == 2, 120, "relaunch after restart")
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
    st = service.client.wait_for_training(poll=0.5, timeout=900)
    assert st.state == "completed", st.message
    assert service.client.list_models().current == 1
    assert any(e["event"] == "resumed" for e in _events(ws, st.run_id))
    # a graceful stop mid-run: the run is cancelled with a checkpoint; resume continues it
    st = service.client.start_training(**{**TRAIN_CKPT, "supervised_iterations": 4, "warm_start": True})
    _wait(lambda: (ws / "runs" / st.run_id / "checkpoints" / "latest.pt").exists(), 600, "first checkpoint")
    stopped = service.client.stop_training()
    assert stopped.state == "cancelled", stopped
    with pytest.raises(ServiceError) as err:
        service.client.stop_training()
    assert err.value.status_code == 409
    resumed = service.client.resume_training()
    assert resumed.state == "running" and resumed.run_id == st.run_id
    st = service.client.wait_for_training(poll=0.5, timeout=900)
    assert st.state == "completed" and service.client.list_models().current == 2


def _label_array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_service_sigkill_during_uploads(service: Running, phantoms: list[Case], tmp_path: Path) -> None:
    """Kill the service at moments while labels and cases are uploaded: nothing acknowledged is lost."""
    ws = service.workspace
    for case in phantoms[:4]:
        service.client.add_case(case.image)
    # labels to upload: the reference and an eroded variant, so versions differ in content
    variants: dict[str, list[Path]] = {}
    for case in phantoms[:4]:
        lab = sitk.ReadImage(str(case.label))
        eroded = sitk.BinaryErode(lab, [1, 1, 1])
        p = tmp_path / f"{case.case_id}_eroded.nrrd"
        sitk.WriteImage(eroded, str(p))
        variants[case.case_id] = [case.label, p]
    acknowledged: dict[tuple[str, int], Path] = {}
    added: list[str] = []
    n_extra = 0
    for round_no, delay in enumerate((0.15, 0.4, 0.8, 1.2)):
        client = service.client
        stop_flag = threading.Event()

        def uploader(client=client, stop_flag=stop_flag, round_no=round_no) -> None:  # noqa: ANN001
            nonlocal n_extra
            i = 0
            while not stop_flag.is_set():
                case = phantoms[i % 4]
                src = variants[case.case_id][i % 2]
                try:
                    if i % 5 == 4:
                        cid = f"extra{round_no}_{i}"
                        client.add_case(phantoms[5].image, case_id=cid)
                        added.append(cid)
                    else:
                        v = client.put_label(case.case_id, src, author=f"r{round_no}")
                        acknowledged[(case.case_id, v.version)] = src
                except ServiceError:
                    return  # the service died mid-request
                i += 1

        t = threading.Thread(target=uploader)
        t.start()
        time.sleep(delay)
        service.launcher.kill()
        stop_flag.set()
        t.join(timeout=60)
        service.restart()
        c = service.client
        # the workspace loads cleanly, nothing half-written is left, every acknowledged label is intact
        info = c.info()
        assert info.counts["corrupt"] == 0
        assert list((ws / "tmp").iterdir()) == []
        assert not [p for p in (ws / "cases").iterdir() if p.name.startswith(".")]
        ids = {x.id for x in c.list_cases()}
        assert set(added) <= ids
        for (cid, version), src in acknowledged.items():
            hist = c.label_history(cid)
            assert version in [v.version for v in hist.versions]
            got = c.get_label(cid, tmp_path / "got.nrrd", version=version)
            np.testing.assert_array_equal(_label_array(got), _label_array(src))
        for cid in ids:
            rec = json.loads((ws / "cases" / cid / "case.json").read_text())
            for v in rec["labels"]:
                assert (ws / "cases" / cid / v["file"]).exists()
    assert len(acknowledged) >= 4
