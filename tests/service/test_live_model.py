"""The live model: predictions from the latest checkpoint of a round while it trains, through a real
service on loopback and a real training worker.

The worker is paused deterministically right after a checkpoint (SIGSTOP via psutil, resumed with
SIGCONT), so the test knows which checkpoint the live prediction must come from: it reads the same
``checkpoints/latest.pt`` itself.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from reciprocalseg.client import Client, ServiceError
from reciprocalseg.data.phantom import write_phantom_cohort
from reciprocalseg.service.errors import Conflict
from reciprocalseg.service.live import LiveModel
from reciprocalseg.training.checkpoint import save_torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.name != "posix", reason="pauses the worker with SIGSTOP"),
]

PHASES = ("supervised", "reciprocal", "finetune")
CASE = "phantom_004"


def _position(phase: str, iteration: int) -> tuple[int, int]:
    return PHASES.index(phase), iteration


def _checkpoint(run_dir: Path) -> tuple[str, int]:
    data = torch.load(run_dir / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    return data["phase"], data["iteration"]


def _pause_after_checkpoint(
    c: Client, worker: psutil.Process, run_dir: Path, after: tuple[int, int], timeout: float = 300
) -> tuple[str, int]:
    """Wait for a checkpoint event later than ``after``, stop the worker, return the file's checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = c.training_events(since=0).events
        if any(e["event"] == "done" for e in events):
            raise AssertionError("the round finished before the test could pause it")
        seen = [_position(e["phase"], e["iteration"]) for e in events if e["event"] == "checkpoint"]
        if seen and max(seen) > after:
            worker.suspend()
            return _checkpoint(run_dir)
        time.sleep(0.05)
    raise AssertionError("no new checkpoint")


def _loads(log_path: Path) -> int:
    return log_path.read_text(encoding="utf-8", errors="replace").count("live model loaded")


def test_live_predictions_while_a_round_trains(service, tmp_path: Path) -> None:
    c = service.client
    phantoms = write_phantom_cohort(tmp_path / "p3", 5, seed=0, n_classes=2, shape_zyx=(32, 32, 32))
    for case in phantoms:
        c.add_case(case.image)
    for case in phantoms[:2]:
        c.put_label(case.case_id, case.label)
    with pytest.raises(ServiceError) as err:  # no round and none training
        c.predict(CASE, live=True)
    assert err.value.status_code == 409 and "no model yet" in err.value.message

    st = c.start_training(
        preset="demo",
        supervised_iterations=4,
        iterations=40,
        checkpoint_every=2,
        device="cpu",
        warm_start=False,
    )
    run_dir = service.workspace / "runs" / st.run_id
    worker = psutil.Process(json.loads((run_dir / "job.json").read_text())["pid"])
    log_path = service.launcher.log_path
    try:
        # Paused after an early checkpoint: the live prediction comes from exactly that one.
        first = _pause_after_checkpoint(c, worker, run_dir, after=(-1, 0))
        live = c.predict(CASE, live=True, out_dir=tmp_path / "live")
        assert live.live and live.run_id == st.run_id and live.round == 1  # the number the round will get
        assert (live.phase, live.iteration) == first
        assert live.qa is not None and {r.label for r in live.qa} == {1, 2}
        assert sitk.ReadImage(str(live.teacher)).GetSize() == (32, 32, 32)
        loads = _loads(log_path)
        assert loads == 1
        again = c.predict(CASE, live=True)  # the file did not change: the loaded model is reused
        assert (again.phase, again.iteration) == first and _loads(log_path) == loads
        stored = c.get_prediction(CASE, live=True)
        assert stored.live and stored.iteration == first[1]
        with pytest.raises(ServiceError) as err:  # a live prediction is not a round's prediction
            c.get_prediction(CASE)
        assert err.value.status_code == 404
        assert c.get_case(CASE).status == "unlabelled" and c.training_status().state == "running"

        # Training goes on; at a later checkpoint the live model is swapped for it.
        worker.resume()
        second = _pause_after_checkpoint(c, worker, run_dir, after=_position(*first))
        later = c.predict(CASE, live=True)
        assert (later.phase, later.iteration) == second and _position(*second) > _position(*first)
        assert _loads(log_path) == loads + 1
    finally:
        if worker.is_running():
            worker.resume()

    # The round completes undisturbed and replaces the live model.
    st = c.wait_for_training(poll=0.5, timeout=900)
    assert st.state == "completed" and st.round == 1, st.message
    events = c.training_events(since=0).events
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["overall_iteration"] == progress[-1]["overall_total"] == 44
    assert not [e for e in events if e["event"] == "error"]
    final = c.predict(CASE, live=True, out_dir=tmp_path / "final")
    assert not final.live and final.round == 1 and final.run_id == st.run_id and final.iteration is None
    assert c.get_prediction(CASE).round == 1 and c.get_prediction(CASE, live=True).iteration == second[1]

    # The final prediction's QA against an independent computation on the downloaded maps.
    maps = {m: sitk.ReadImage(str(getattr(final, m))) for m in ("teacher", "student")}
    arrays = {m: sitk.GetArrayFromImage(img) for m, img in maps.items()}
    voxel_ml = float(np.prod(maps["teacher"].GetSpacing())) / 1000
    for row in final.qa:
        mask = arrays[row.model] == row.label
        assert row.volume_ml == pytest.approx(np.count_nonzero(mask) * voxel_ml)
        assert row.pieces == ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]
        a, b = arrays["teacher"] == row.label, arrays["student"] == row.label
        union = np.count_nonzero(a | b)
        expected = 0.0 if union == 0 else 1 - np.count_nonzero(a & b) / union
        assert row.disagreement == pytest.approx(expected)

    _check_reload_and_nonfinite(run_dir, tmp_path)


def _check_reload_and_nonfinite(run_dir: Path, tmp_path: Path) -> None:
    """On the run's real checkpoint: reloaded only when the file changes; NaN weights are refused."""
    copy = tmp_path / "run-copy"
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "latest.pt", copy / "checkpoints" / "latest.pt")
    live = LiveModel("cpu")
    checkpoint, _ = live.get(copy)
    assert checkpoint.run_id == "run-copy" and live.loads == 1
    assert live.get(copy)[0] == checkpoint and live.loads == 1
    data = torch.load(copy / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    name = next(k for k, v in data["student"].items() if v.is_floating_point())
    data["student"][name].view(-1)[0] = float("nan")
    save_torch(data, copy / "checkpoints" / "latest.pt")
    with pytest.raises(Conflict) as err:
        live.get(copy)
    assert "NaN or infinite student weights" in err.value.message and name in err.value.message
    assert live.loads == 1
