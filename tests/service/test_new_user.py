"""Issue 15, what a new user trips on: the class count, training requests that cannot work,
folder imports, a restarted service, empty predictions, repeated bundles. Real services on
loopback, real files, real (tiny) models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from service_helpers import TRAIN_FAST, Running, start_service, write_bundle, write_models

from reciprocalseg.client import Client, ServiceError
from reciprocalseg.common.processes import child_env
from reciprocalseg.data.io import Case
from reciprocalseg.service.core import uncertainty_rank


def _three_class_label(case: Case, path: Path) -> Path:
    """The phantom's label with its foreground split into classes 1 and 2."""
    label = sitk.ReadImage(str(case.label))
    arr = sitk.GetArrayFromImage(label).astype(np.uint8)
    arr[arr.shape[0] // 2 :][arr[arr.shape[0] // 2 :] > 0] = 2
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(label)
    sitk.WriteImage(out, str(path))
    return path


def test_class_count_follows_the_labels_and_a_round_trains_them(
    service: Running, phantoms: list[Case], tmp_path: Path
) -> None:
    c = service.client
    assert (c.info().n_classes, c.info().n_classes_fixed) == (2, False)
    c.import_models(write_bundle(tmp_path / "two.zip", n_classes=2))
    for case in phantoms[:3]:
        c.add_case(case.image)
    label = _three_class_label(phantoms[0], tmp_path / "three.nrrd")
    c.put_label(phantoms[0].case_id, label)
    assert c.info().n_classes == 3  # grew: background + 2 classes
    (old,) = c.list_models().rounds
    assert old.n_classes == 2 and old.fewer_classes
    with pytest.raises(ServiceError) as err:
        c.import_models(write_bundle(tmp_path / "two-again.zip", n_classes=2, seed=5))
    assert err.value.status_code == 422 and "3" in err.value.message

    # The next round cannot warm-start from the 2-class round: it starts from scratch, says so,
    # and trains 3 classes (serve and train agree on what n_classes counts).
    st = c.start_training(**TRAIN_FAST, warm_start=True)
    assert st.warm_start_round is None and "started from scratch" in (st.message or "")
    st = c.wait_for_training(poll=0.5, timeout=900)
    assert st.state == "completed", st.message
    new = c.list_models().rounds[-1]
    assert new.n_classes == 3 and not new.fewer_classes and new.teacher_sha256
    pred = c.predict(phantoms[2].case_id, out_dir=tmp_path / "pred")
    assert int(sitk.GetArrayFromImage(sitk.ReadImage(str(pred.teacher))).max()) <= 2


def _classes(settings: dict) -> dict:
    """The class-count part of a settings answer (it also carries the retraining settings)."""
    return {k: settings[k] for k in ("n_classes", "n_classes_fixed")}


def test_class_count_set_through_the_api(service: Running, phantoms: list[Case], tmp_path: Path) -> None:
    c = service.client
    c.add_case(phantoms[0].image)
    assert _classes(c.set_n_classes(4)) == {"n_classes": 4, "n_classes_fixed": True}
    big = sitk.ReadImage(str(phantoms[0].label)) * 5  # values 0 and 5: beyond 0..3
    sitk.WriteImage(big, str(tmp_path / "five.nrrd"))
    with pytest.raises(ServiceError) as err:
        c.put_label(phantoms[0].case_id, tmp_path / "five.nrrd")
    assert err.value.status_code == 422 and "PUT /settings" in err.value.message
    # The count the message names is the one /settings shows (background included).
    assert "configured number of classes is 4" in err.value.message, err.value.message
    c.put_label(phantoms[0].case_id, _three_class_label(phantoms[0], tmp_path / "three.nrrd"))
    with pytest.raises(ServiceError) as err:
        c.set_n_classes(2)  # the stored label needs 3
    assert err.value.status_code == 409 and "at least 3" in err.value.message
    assert _classes(c.set_n_classes(None)) == {"n_classes": 3, "n_classes_fixed": False}
    assert c.info().n_classes == 3


def test_serve_n_classes_counts_the_background(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "reciprocalseg.service.server", "--workspace", str(tmp_path / "a")]
    r = subprocess.run(
        [*cmd, "--n-classes", "1"], capture_output=True, text=True, env=child_env(), timeout=120
    )
    assert r.returncode == 2 and "counts the background too" in r.stderr and "Traceback" not in r.stderr
    run = start_service(tmp_path / "b", device="cpu", n_classes=3)
    try:
        assert (run.client.info().n_classes, run.client.info().n_classes_fixed) == (3, True)
    finally:
        run.launcher.stop()


def test_training_requests_that_cannot_work_are_refused_at_once(
    service: Running, phantoms: list[Case]
) -> None:
    c = service.client
    c.add_case(phantoms[0].image)
    c.put_label(phantoms[0].case_id, phantoms[0].label)
    with pytest.raises(ServiceError) as err:
        c.start_training(**TRAIN_FAST)  # every case is labelled: nothing for the student
    assert err.value.status_code == 409 and "no unlabelled case" in err.value.message
    c.add_case(phantoms[1].image)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ServiceError) as err:
            c.start_training(**{**TRAIN_FAST, "device": "cuda"})
        assert err.value.status_code == 422 and "no CUDA device" in err.value.message
    assert list((service.workspace / "runs").iterdir()) == []
    assert c.training_status().state == "idle"


def test_folder_import_is_idempotent(service: Running, phantoms: list[Case]) -> None:
    c = service.client
    folder = phantoms[0].image.parent
    c.add_case(phantoms[2].image)  # an earlier, interrupted import got this far
    first = c.add_cases_from_folder(folder)
    assert sorted(x.id for x in first) == sorted(p.case_id for p in phantoms if p is not phantoms[2])
    assert first.skipped == [phantoms[2].case_id]
    again = c.add_cases_from_folder(folder)
    assert list(again) == [] and sorted(again.skipped) == sorted(p.case_id for p in phantoms)
    assert len(c.list_cases()) == len(phantoms)


def test_client_follows_a_restarted_service(service: Running) -> None:
    c = Client(workspace=service.workspace)
    assert c.info().counts["cases"] == 0
    service.launcher.kill()  # SIGKILL: the URL file is left behind, pointing at nothing
    for call in (c.info, c.health):  # health() too: a clear error, not a False that reads as "wait"
        with pytest.raises(ServiceError) as err:
            call()
        assert err.value.status_code == 0 and "stopped or killed" in err.value.message
        assert str(service.workspace) in err.value.message
    service.restart()
    assert c.info().counts["cases"] == 0  # new port and token, found again
    assert c.health()
    service.launcher.stop()
    with pytest.raises(ServiceError, match="no running service found for workspace"):
        c.health()


def test_background_everywhere_is_flagged_and_ranked_most_uncertain(
    service: Running, phantoms: list[Case], tmp_path: Path
) -> None:
    c = service.client
    for case in phantoms[:2]:
        c.add_case(case.image)
    c.import_models(write_bundle(tmp_path / "empty.zip", teacher_bias=[50, -50], student_bias=[50, -50]))
    pred = c.predict(phantoms[0].case_id)
    assert pred.teacher_empty and pred.student_empty and pred.score == 0.0
    assert "predicts background everywhere" in (pred.warning or "")
    nxt = c.next_case()
    assert nxt.both_empty and nxt.case_id is not None
    # Both empty ranks above any disagreement (its score is 0 only because nothing was found).
    ranked = sorted(
        [("a", {"score": 0.9}), ("b", {"score": 0.0, "teacher_empty": True, "student_empty": True})],
        key=lambda kv: uncertainty_rank(*kv),
        reverse=True,
    )
    assert [k for k, _ in ranked] == ["b", "a"]


def test_a_round_that_predicts_background_everywhere_is_flagged(
    service: Running, phantoms: list[Case]
) -> None:
    """A finished run whose student learned nothing: a warning event, a flag in the status and the round."""
    import json
    import time

    c = service.client
    c.add_case(phantoms[0].image)
    c.put_label(phantoms[0].case_id, phantoms[0].label)
    service.launcher.stop()
    # The worker finished while the service was down: its run folder is complete, not registered.
    run = service.workspace / "runs" / "run-bg"
    run.mkdir()
    write_models(run, student_bias=[50, -50])  # the teacher is a random network, the student empty
    (run / "done.json").write_text("{}")
    (run / "events.jsonl").write_text(json.dumps({"event": "done", "seconds": 1.0}) + "\n")
    job = {"run_id": "run-bg", "state": "running", "pid": None, "preset": "demo", "n_classes": 2,
           "classes_include_background": True, "n_labeled": 1, "n_unlabeled": 0,
           "created": "2024-01-01T00:00:00+00:00"}  # fmt: skip
    (run / "job.json").write_text(json.dumps(job))
    c = service.restart().client
    deadline = time.monotonic() + 300  # the check predicts in the background after start-up
    while time.monotonic() < deadline and not c.training_status("run-bg").background_only:
        time.sleep(0.5)
    st = c.training_status("run-bg")
    assert st.state == "completed" and st.background_only == ["student"], st
    assert "predicts background everywhere" in (st.warning or "")
    events = c.training_events(run_id="run-bg").events
    assert events[-1]["event"] == "warning" and events[-1]["kind"] == "background_only"
    assert c.list_models().rounds[0].background_only == ["student"]


def test_the_same_bundle_twice_is_one_round(service: Running, tmp_path: Path) -> None:
    c = service.client
    bundle = write_bundle(tmp_path / "m.zip")
    first = c.import_models(bundle)
    second = c.import_models(bundle, make_current=True)
    assert first.round == second.round == 1 and len(c.list_models()) == 1
    assert first.teacher_sha256 and first.teacher_sha256 == second.teacher_sha256


def test_a_corrupt_model_in_a_bundle_gets_a_short_answer(service: Running, tmp_path: Path) -> None:
    import zipfile

    good = write_bundle(tmp_path / "good.zip")
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        dst.writestr("teacher.pt", src.read("teacher.pt")[:5000])  # truncated
        dst.writestr("student.pt", src.read("student.pt"))
        dst.writestr("meta.json", src.read("meta.json"))
    with pytest.raises(ServiceError) as err:
        service.client.import_models(bad)
    assert err.value.status_code == 422
    assert "teacher.pt" in err.value.message and len(err.value.message) < 250, err.value.message
    assert "weights_only" not in err.value.message and "arbitrary code" not in err.value.message


def test_geometry_is_shown_rounded(service: Running, phantoms: list[Case], tmp_path: Path) -> None:
    img = sitk.ReadImage(str(phantoms[0].image))
    img.SetSpacing((9.999999999999998, 0.1 + 0.2, 1.0))
    img.SetOrigin((0.1 + 0.7, -3.0000000000000004, 0.0))
    sitk.WriteImage(img, str(tmp_path / "odd.nrrd"))
    geo = service.client.add_case(tmp_path / "odd.nrrd").geometry
    assert geo["spacing"] == [10.0, 0.3, 1.0] and geo["origin"] == [0.8, -3.0, 0.0]
