"""What the GUI thread does (issue 26, item 6), on real MRML and a real service: no file work.

Every action runs as a task; its GUI-thread steps (``TaskContext.on_main``, run by
``TaskRunner.poll``) only add nodes or copy what was painted. The check counts, per thread (Linux
``/proc/self/task/<tid>/io``: bytes through read and write system calls), what the GUI thread
reads and writes while it runs the steps: reading a downloaded scan, decompressing it, writing
an upload, all happen on the worker. (How long the steps take is measured by
benchmarks/gui_steps.py; tests never assert times.) Quitting asks the local service to stop and
does not wait: the service checkpoints a running round by itself.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mrml_helpers import add_volume, blob_image, oblique_ijk_to_ras, paint

SHAPE = (32, 64, 64)  # 0.5 MB of float32: any file work shows in the counters
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread I/O counters are Linux's"
)


def main_thread_io() -> int:
    tid = threading.main_thread().native_id
    fields = dict(line.split(": ") for line in Path(f"/proc/self/task/{tid}/io").read_text().splitlines())
    return int(fields["rchar"]) + int(fields["wchar"])


class GuiThread:
    """Runs tasks as the panel does and counts the GUI thread's I/O bytes per step."""

    def __init__(self) -> None:
        from ReciprocalSegLib.tasks import TaskRunner

        self.runner = TaskRunner()
        self.io: dict = {}

    def run(self, action: str, work):
        out = {}
        self.runner.submit(action, work, lambda r: out.update(result=r), lambda e: out.update(error=e))
        while self.runner.busy:
            before = main_thread_io()
            self.runner.poll()
            self.io.setdefault(action, []).append(main_thread_io() - before)
            time.sleep(0.002)
        if "error" in out:
            raise out["error"]
        return out["result"]


def prediction_files(folder: Path, case_id: str, client, mask: np.ndarray):
    """Teacher, student and disagreement files as the service writes them (its stored grid)."""
    from types import SimpleNamespace

    import SimpleITK as sitk

    from reciprocalseg.common.geometry import Geometry, image_from_array

    stored = Geometry.from_dict(client.get_case(case_id).geometry)
    folder.mkdir(parents=True)
    paths = {}
    for kind, array in (("teacher", mask), ("student", mask), ("disagreement", mask.astype(np.float32) / 3)):
        paths[kind] = folder / f"{kind}.nrrd"
        sitk.WriteImage(image_from_array(array, stored), str(paths[kind]), True)
    return SimpleNamespace(
        case_id=case_id, score=0.1, round=1, live=False, iteration=None, phase=None, **paths
    )


def every_action(loop, gui: GuiThread, name: str, tmp: Path) -> None:
    from ReciprocalSegLib.scene_cases import ROLE_IMAGE

    image, mask = blob_image(shape=SHAPE, seed=51)
    volume = add_volume(loop.logics.scene, name, image, oblique_ijk_to_ras(left_handed=True))
    case_id = gui.run("add volume", lambda c: loop.add_volumes([volume.GetID()], c)).added[0]
    loop.logics.scene.RemoveNode(volume)  # selected in another session: downloaded and read
    assert loop.case_node(case_id, ROLE_IMAGE) is None
    volume, label = gui.run("show case", lambda c: loop.load_case(case_id, c))
    paint(mask, label, "class_1", volume)
    gui.run("submit label", lambda c: loop.submit(case_id, False, c))
    scribbles = loop.scribble_segmentation(case_id)
    paint(mask, scribbles, "class_1", volume)
    gui.run("submit scribbles", lambda c: loop.submit(case_id, True, c))
    result = prediction_files(tmp / name, case_id, loop.client, mask)
    gui.run("show prediction", lambda c: loop.show_prediction_files(case_id, result, c))
    gui.run("correct from student", lambda c: loop.copy_student_to_label(case_id, c))


@linux_only
def test_the_gui_thread_reads_and_writes_no_file(two_class_service, loop_factory, tmp_path):
    loop = loop_factory(two_class_service)
    every_action(loop, GuiThread(), "gui_warm_up", tmp_path)  # first calls import modules (files)
    gui = GuiThread()
    every_action(loop, gui, "gui_io", tmp_path)
    scan_bytes = int(np.prod(SHAPE)) * 4
    assert set(gui.io) == {"add volume", "show case", "submit label", "submit scribbles", "show prediction",
                           "correct from student"}  # fmt: skip
    worst = {action: max(steps) for action, steps in gui.io.items()}
    assert all(b < scan_bytes // 20 for b in worst.values()), worst


def _job(workspace: Path, run_id: str) -> dict:
    return json.loads((workspace / "runs" / run_id / "job.json").read_text())


@pytest.mark.skipif(
    sys.platform == "win32", reason="the service's SIGTERM path; Windows uses CTRL_BREAK_EVENT"
)
def test_quitting_does_not_wait_and_the_service_checkpoints_by_itself(loop_factory, tmp_path):
    from service_helpers import start_service

    from reciprocalseg.data.phantom import write_phantom_cohort

    run = start_service(tmp_path / "ws", device="cpu")
    try:
        loop = loop_factory(run)
        for case in write_phantom_cohort(tmp_path / "data", 2, seed=5, shape_zyx=(32, 32, 32)):
            run.client.add_case(case.image, case_id=case.case_id)
            run.client.put_label(case.case_id, case.label)
        status = run.client.start_training(
            preset="demo", supervised_iterations=2000, iterations=0, device="cpu", checkpoint_every=1
        )
        checkpoint = run.workspace / "runs" / status.run_id / "checkpoints" / "latest.pt"
        deadline = time.monotonic() + 300
        while not checkpoint.exists():
            assert time.monotonic() < deadline, "no first checkpoint"
            time.sleep(0.2)
        loop.service = run.launcher  # as start_local_service leaves it
        loop.release_service()  # Slicer's aboutToQuit
        assert run.launcher.running and not loop.connected  # returned before the service ended
        deadline = time.monotonic() + 300
        while run.launcher.running:
            assert time.monotonic() < deadline, "the service did not stop by itself"
            time.sleep(0.2)
        job = _job(run.workspace, status.run_id)
        assert job["pid"] is None and "resumes when the service starts again" in job["message"]
    finally:
        run.launcher.stop()
