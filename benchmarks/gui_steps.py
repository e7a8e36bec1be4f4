"""How long the Slicer module's GUI thread is busy per user action, on Slicer's real MRML
(slicer-core) and a real local service (issue 26, item 6: nothing over 100 ms on the GUI thread).

For each scan size it runs, on one scene: *Add volume*, selecting a case whose volume and label
are downloaded, *Submit label*, *Submit scribbles*, showing a prediction twice (files as the
service writes them; the second replaces the first), *Correct from student*, and quitting while a
round trains; and records every step that runs on the GUI thread. The module of one checkout is
measured per process; the driver runs one process per ``--repo`` so that two versions are
compared in one run, side by side:

    python benchmarks/gui_steps.py --repo /tmp/base --repo . --sizes 256,512 --out DIR

Two versions of the Lib are understood: the one before issue 26 (``prepare_*`` / ``apply_*``
functions, each one GUI-thread step) and the one after (every action a task whose GUI-thread
steps ``TaskContext.on_main`` runs; the benchmark times each of them through ``TaskRunner.poll``).
Network and worker-thread time is not counted; the JSON keeps every step's time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SCRIPT = Path(__file__).resolve()
STEP_LIMIT_S = 0.100  # issue 26: no GUI-thread step over 100 ms


# ----------------------------------------------------------------------------- scan and files


def scan(shape_kji: tuple, seed: int = 0) -> tuple:
    """(an int16 CT-like scan, a two-class label) of this shape: a bright ellipsoid, a core inside."""
    rng = np.random.default_rng(seed)
    k, j, i = np.ogrid[: shape_kji[0], : shape_kji[1], : shape_kji[2]]
    r = sum(((a - n / 2) / (n / 3)) ** 2 for a, n in zip((k, j, i), shape_kji, strict=True))
    label = np.zeros(shape_kji, np.uint8)
    label[r <= 1] = 1
    label[r <= 0.3] = 2
    image = (label.astype(np.float32) * 300 - 500 + rng.normal(0, 40, shape_kji)).astype(np.int16)
    return image, label


def write_prediction(folder: Path, case_id: str, label: np.ndarray, stored) -> SimpleNamespace:
    """Teacher, student and disagreement files as the service writes them (the stored grid), and
    the PredictionResult fields the module reads."""
    import SimpleITK as sitk

    from reciprocalseg.common.geometry import image_from_array

    folder.mkdir(parents=True, exist_ok=True)
    student = label.copy()
    student[:, :, : label.shape[2] // 2][label[:, :, : label.shape[2] // 2] == 2] = 1
    disagreement = (label != student).astype(np.float32) * 0.5
    paths = {}
    for kind, array in (("teacher", label), ("student", student), ("disagreement", disagreement)):
        paths[kind] = folder / f"{case_id}_{kind}.nrrd"
        sitk.WriteImage(image_from_array(array, stored), str(paths[kind]), True)
    return SimpleNamespace(
        case_id=case_id, score=0.01, round=1, live=False, iteration=None, phase=None, qa=None, **paths
    )


# ----------------------------------------------------------------------------- the two Lib versions


class Recorder:
    """GUI-thread steps per action: ``steps[action] = [[wall seconds, GUI-thread CPU seconds], ...]``.

    Both are kept: on a shared machine a step's wall time includes waiting for a CPU, which its
    own thread's CPU time (``time.thread_time``) does not."""

    def __init__(self) -> None:
        self.steps: dict = {}

    def gui(self, action: str, call):
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return call()
        finally:
            step = [round(time.perf_counter() - started, 5), round(time.thread_time() - cpu, 5)]
            self.steps.setdefault(action, []).append(step)

    def drop_idle(self, action: str) -> None:
        """Forget the last poll if it ran no step (under 0.1 ms): the JSON keeps the real steps."""
        if self.steps[action][-1][0] < 1e-4:
            self.steps[action].pop()


class OldLib:
    """The Lib before issue 26: each prepare_/apply_/finish_ function is one GUI-thread step."""

    def __init__(self, loop, rec: Recorder) -> None:
        self.loop, self.rec = loop, rec

    def add_volume(self, volume) -> str:
        uploads = self.rec.gui("add volume", lambda: self.loop.prepare_volume_uploads([volume]))
        uploads = self.loop.upload_volume_files(uploads)
        return self.rec.gui("add volume", lambda: self.loop.finish_volume_uploads(uploads))[0]

    def show_case(self, case_id):
        files = self.loop.fetch_case(case_id, *self.loop.needs(case_id))
        return self.rec.gui("select a downloaded case", lambda: self.loop.apply_case(case_id, files))

    def submit_label(self, case_id, label, volume):
        path = self.rec.gui("submit label", lambda: self.loop.prepare_label_upload(case_id, label, volume))
        self.loop.upload_label_file(case_id, path)

    def submit_scribbles(self, case_id):
        path, _ = self.rec.gui("submit scribbles", lambda: self.loop.prepare_scribble_upload(case_id))
        self.loop.upload_label_file(case_id, path)

    def show_prediction(self, case_id, result):
        from ReciprocalSegLib.logic import CaseFiles

        fetched = (result, CaseFiles(case_id))
        self.rec.gui("show a prediction", lambda: self.loop.apply_prediction(case_id, fetched))

    def correct_from_student(self, case_id):
        self.rec.gui("correct from student", lambda: self.loop.copy_student_to_label(case_id))

    def quit(self):
        self.rec.gui("quit while training", self.loop.stop_service)


class NewLib:
    """The Lib after issue 26: each action is a task; ``TaskRunner.poll`` runs its GUI-thread steps."""

    def __init__(self, loop, rec: Recorder) -> None:
        from ReciprocalSegLib.tasks import TaskRunner

        self.loop, self.rec, self.runner = loop, rec, TaskRunner()

    def _task(self, action: str, work):
        box = {}

        def failed(error):
            box["error"] = error

        self.runner.submit(action, work, lambda result: box.setdefault("result", result), failed)
        while self.runner.busy:
            self.rec.gui(action, self.runner.poll)
            self.rec.drop_idle(action)
            time.sleep(0.002)
        if "error" in box:
            raise box["error"]
        return box["result"]

    def add_volume(self, volume) -> str:
        return self._task("add volume", lambda c: self.loop.add_volumes([volume.GetID()], c)).added[0]

    def show_case(self, case_id):
        return self._task("select a downloaded case", lambda c: self.loop.load_case(case_id, c))

    def submit_label(self, case_id, label, volume):
        self._task("submit label", lambda c: self.loop.submit(case_id, False, c))

    def submit_scribbles(self, case_id):
        self._task("submit scribbles", lambda c: self.loop.submit(case_id, True, c))

    def show_prediction(self, case_id, result):
        self._task("show a prediction", lambda c: self.loop.show_prediction_files(case_id, result, c))

    def correct_from_student(self, case_id):
        self._task("correct from student", lambda c: self.loop.copy_student_to_label(case_id, c))

    def quit(self):
        self.rec.gui("quit while training", self.loop.release_service)


# ----------------------------------------------------------------------------- one process: one Lib

try:  # the light launcher of the client package, or where it was before (issue 22)
    from reciprocalseg.client import LocalService
except ImportError:
    from reciprocalseg.client import LocalService


def paint(array, segmentation, segment_id, volume) -> None:
    from slicer.util import updateSegmentBinaryLabelmapFromArray

    updateSegmentBinaryLabelmapFromArray(array.astype(np.uint8), segmentation, segment_id, volume)


def measure(size: int, slices: int, work: Path) -> dict:
    """All actions on one ``size`` x ``size`` x ``slices`` scan; {action: [GUI-step seconds]}."""
    import slicer
    from ReciprocalSegLib.logic import ReciprocalSegLoop
    from ReciprocalSegLib.scene_cases import ROLE_IMAGE, ROLE_LABEL
    from ReciprocalSegLib.slicer_logics import SlicerLogics

    from reciprocalseg.common.geometry import Geometry

    sys.path.insert(0, str(Path.cwd() / "tests" / "slicer"))
    from mrml_helpers import add_volume, oblique_ijk_to_ras, use_as_application

    logics = SlicerLogics.standalone()
    use_as_application(logics)
    service = LocalService(work / f"ws{size}", device="cpu")
    url, token = service.start(timeout=180)
    loop = ReciprocalSegLoop(logics, scratch_dir=work / "scratch")
    loop.connect(url, token)
    rec = Recorder()
    lib = NewLib(loop, rec) if hasattr(ReciprocalSegLoop, "add_volumes") else OldLib(loop, rec)
    try:
        image, label = scan((slices, size, size))
        grid = oblique_ijk_to_ras(spacing=(0.7, 0.7, 1.5))  # right-handed: the old Lib failed left-handed
        volume = add_volume(logics.scene, f"scan{size}", image, grid)
        case_id = lib.add_volume(volume)
        volume, segmentation = loop.show_case(case_id)  # an empty label to paint (not measured)
        paint(label == 1, segmentation, "class_1", volume)
        paint(label == 2, segmentation, "class_2", volume)
        lib.submit_label(case_id, segmentation, volume)

        # Another session: the scan and its label come from the service.
        loop.remove_case_nodes(case_id)
        logics.scene.RemoveNode(loop.case_node(case_id, ROLE_IMAGE))
        volume, segmentation = lib.show_case(case_id)

        scribbles = loop.scribble_segmentation(case_id)
        stroke = np.zeros_like(label)
        stroke[slices // 2] = label[slices // 2]
        paint(stroke == 1, scribbles, "class_1", volume)
        paint(stroke == 2, scribbles, "class_2", volume)
        lib.submit_scribbles(case_id)

        stored = Geometry.from_dict(loop.client.get_case(case_id).geometry)
        for n in range(2):  # a first prediction, then the next round's, which replaces it
            lib.show_prediction(case_id, write_prediction(work / f"prediction{n}", case_id, label, stored))
        lib.correct_from_student(case_id)
        assert loop.case_node(case_id, ROLE_LABEL) is not None
    finally:
        loop.client = None
        service.stop()
        slicer.mrmlScene = logics.scene
    rec.steps["quit while training"] = quit_while_training(work / f"quit{size}", lib, loop, rec)
    return rec.steps


def quit_while_training(workspace: Path, lib, loop, rec: Recorder) -> list:
    """Quit with a local service training a round (it checkpoints before it ends)."""
    from reciprocalseg.data.phantom import write_phantom_cohort

    service = LocalService(workspace / "ws", device="cpu")
    url, token = service.start(timeout=180)
    try:
        loop.service = service  # as the module's start_local_service leaves it
        loop.connect(url, token)
        for case in write_phantom_cohort(workspace / "data", 2, seed=3, shape_zyx=(32, 32, 32)):
            loop.client.add_case(case.image, case_id=case.case_id)
            loop.client.put_label(case.case_id, case.label)
        loop.start_training(preset="demo", iterations=0, supervised_iterations=100000, device="cpu")
        deadline = time.monotonic() + 300
        while loop.training_status().state != "running" or not loop.training_status().iteration:
            if time.monotonic() > deadline:
                raise RuntimeError("the round did not start")
            time.sleep(0.5)
        rec.steps.pop("quit while training", None)
        lib.quit()
        return rec.steps.pop("quit while training")
    finally:
        service.stop(timeout=300)


def run_one(sizes: list, slices: int, out: Path) -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="gui-steps-") as tmp:
        for size in sizes:
            results[f"{size}x{size}x{slices}"] = measure(size, slices, Path(tmp) / str(size))
    out.write_text(json.dumps(results, indent=1), encoding="utf-8")


# ----------------------------------------------------------------------------- driver


def _ms(steps: list, which: int, how) -> str:
    return f"{1e3 * how(s[which] for s in steps):.0f}" if steps else "-"


def table(runs: dict) -> str:
    """Markdown: per action and size, each run's longest GUI-thread step (wall and GUI-thread CPU
    time) and the GUI thread's total for the action (ms)."""
    names = list(runs)
    sizes = list(next(iter(runs.values())))
    actions = list(next(iter(runs.values()))[sizes[0]])
    header = "| action | scan | " + " | ".join(
        f"{n}: longest step, wall | {n}: longest step, CPU | {n}: total, wall" for n in names
    )
    lines = [header + " |", "|" + " --- |" * (2 + 3 * len(names))]
    for action in actions:
        for size in sizes:
            cells = []
            for name in names:
                steps = runs[name][size].get(action, [])
                cells += [_ms(steps, 0, max), _ms(steps, 1, max), _ms(steps, 0, sum)]
            lines.append(f"| {action} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", action="append", type=Path, help="checkout to measure (repeat to compare)")
    parser.add_argument("--name", action="append", help="a label per --repo (default: its folder name)")
    parser.add_argument("--sizes", default="256,512", help="in-plane sizes, comma-separated")
    parser.add_argument("--slices", type=int, default=128)
    parser.add_argument("--out", type=Path, required=True, help="folder for the raw JSON and the table")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # a child run: write its JSON here
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.one is not None:
        run_one(sizes, args.slices, args.one)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    repos = args.repo or [Path.cwd()]
    names = args.name or [r.resolve().name for r in repos]
    runs = {}
    for name, repo in zip(names, repos, strict=True):
        repo = repo.resolve()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo / "ReciprocalSeg"), str(repo)]))
        raw = args.out / f"{name}.json"
        command = [
            sys.executable,
            str(SCRIPT),
            "--one",
            str(raw),
            "--out",
            str(args.out),
            "--sizes",
            args.sizes,
        ]
        command += ["--slices", str(args.slices)]
        print(f"{name}: {repo}", flush=True)
        subprocess.run(command, cwd=repo, env=env, check=True)
        runs[name] = json.loads(raw.read_text(encoding="utf-8"))
    load = os.getloadavg()
    text = (
        f"machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), "
        f"load average at the end {load[0]:.1f}, {time.strftime('%Y-%m-%d')}\n\n" + table(runs) + "\n"
    )
    (args.out / "table.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
