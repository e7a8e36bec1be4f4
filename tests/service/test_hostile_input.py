"""Issue 23, round two of hostile input: what the malformed-request catalogue cannot hold (a state
that must recover, files damaged on disk, logs, a read-only workspace, training that reports).

Real services on loopback, real model files and real (tiny) training runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
import torch
from service_helpers import SHAPE_ZYX, TRAIN_FAST, Running, snapshot, start_service, write_bundle

from reciprocalseg.client.responses import TrainingStatus
from reciprocalseg.common.errors import DataError
from reciprocalseg.common.processes import child_env
from reciprocalseg.config import make_config
from reciprocalseg.data.io import Case
from reciprocalseg.service import service_log
from reciprocalseg.service.errors import Conflict
from reciprocalseg.service.jobs import progress_fraction
from reciprocalseg.service.live import LiveModel
from reciprocalseg.service.workspace import Workspace
from reciprocalseg.training.checkpoint import save_torch
from reciprocalseg.training.events import read_events
from reciprocalseg.training.runner import train

TINY = {"patch_size": (16, 16, 16), "n_filters": 2, "checkpoint_every": 1, "device": "cpu"}


def _import(run: Running, bundle: Path) -> int:
    r = run.client.session.post(
        f"{run.client.url}/models/import", files={"file": (bundle.name, bundle.read_bytes())}
    )
    assert r.status_code == 201, r.text
    return r.json()["round"]


def test_the_predictor_recovers_when_the_current_round_changes(
    service: Running, tmp_path: Path, phantoms
) -> None:  # noqa: ANN001
    """A round whose files were damaged after it became current answers 409; choosing a good round
    again must work at once (it answered 500 until a restart: the predictor had forgotten its model
    but kept the good round's cache key)."""
    c = service.client
    c.add_case(phantoms[0].image)
    first = _import(service, write_bundle(tmp_path / "a.zip", seed=0))
    assert c.predict(phantoms[0].case_id).round == first
    second = _import(service, write_bundle(tmp_path / "b.zip", seed=5))
    (service.workspace / "models" / f"r{second:04d}" / "teacher.pt").write_bytes(b"damaged on disk")
    r = c.session.post(f"{c.url}/cases/{phantoms[0].case_id}/predict")
    assert r.status_code == 409 and f"round {second}" in r.json()["detail"], r.text
    assert "PUT /models/current" in r.json()["detail"]
    c.set_current_model(first)
    again = c.session.post(f"{c.url}/cases/{phantoms[0].case_id}/predict")
    assert again.status_code == 200, again.text
    assert again.json()["round"] == first


def _tiny_run(folder: Path, phantoms: list[Case]) -> Path:
    config = make_config("demo", supervised_iterations=1, reciprocal_iterations=1, **TINY)
    unlabelled = [Case(c.case_id, c.image, None) for c in phantoms[2:4]]
    return train(config, phantoms[:2], unlabelled, folder).run_dir


@pytest.mark.parametrize("damage", ["wrong-shaped tensor", "other class count"])
def test_a_damaged_live_checkpoint_is_refused_not_a_500(tmp_path: Path, phantoms, damage: str) -> None:  # noqa: ANN001
    run_dir = _tiny_run(tmp_path / "run", phantoms)
    path = run_dir / "checkpoints" / "latest.pt"
    data = torch.load(path, map_location="cpu", weights_only=True)
    if damage == "wrong-shaped tensor":
        data["teacher"]["head.weight"] = torch.zeros(5, 5, 1, 1, 1)
    else:  # the checkpoint's config says 3 classes, its networks have 2
        data["config"]["n_classes"] = 3
    save_torch(data, path)
    with pytest.raises(Conflict) as err:
        LiveModel("cpu").get(run_dir)
    message = err.value.message
    assert "do not fit the network" in message and "head" in message, message
    assert "predict with the current round instead" in message


def test_a_case_folder_whose_name_is_not_a_valid_id_is_reported_not_loaded(tmp_path: Path) -> None:
    """`abc\\n` was accepted before (Python's `$` matches before a final newline) and every route
    then refused it; such a stored case is now listed as corrupt, with a log line saying what to do."""
    ws = Workspace(tmp_path / "ws")
    bad = ws.cases_dir / "abc\n"
    bad.mkdir()
    (bad / "case.json").write_text(json.dumps({"id": "abc\n", "labels": [], "predictions": {}}))
    again = Workspace(tmp_path / "ws")
    assert again.case_ids() == [] and again.corrupt == ["abc\n"]


def test_the_service_writes_the_rotated_log_file_its_messages_name(service: Running) -> None:
    log_file = service.workspace / ".service" / "service.log"
    text = log_file.read_text(encoding="utf-8")
    assert "ReciprocalSeg service for" in text and service.client.url in text


def test_the_log_file_rotates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_log, "MAX_BYTES", 4096)
    path = service_log.start_log_file(tmp_path, logging.INFO)
    handler = logging.getLogger().handlers[-1]
    try:
        for i in range(40):
            logging.getLogger("reciprocalseg.test").info("line %d %s", i, "x" * 200)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert path == tmp_path / ".service" / "service.log"
    assert path.stat().st_size <= 4096 and (tmp_path / ".service" / "service.log.1").exists()
    assert not (tmp_path / ".service" / f"service.log.{service_log.BACKUPS + 1}").exists()


def test_a_round_names_the_case_it_cannot_use(tmp_path: Path, phantoms) -> None:  # noqa: ANN001
    """A constant scan stored before uploads were checked made every round fail naming no case."""
    like = sitk.ReadImage(str(phantoms[1].image))
    blank = sitk.Image(like.GetSize(), sitk.sitkFloat32) + 3
    blank.CopyInformation(like)
    sitk.WriteImage(blank, str(tmp_path / "blank.nrrd"))
    config = make_config("demo", supervised_iterations=1, reciprocal_iterations=1, **TINY)
    unlabelled = [Case("blank_case", tmp_path / "blank.nrrd", None)]
    with pytest.raises(DataError) as err:
        train(config, phantoms[:1], unlabelled, tmp_path / "run")
    assert "case blank_case" in str(err.value) and "constant intensity" in str(err.value)
    errors = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["event"] == "error"]
    assert errors and "blank_case" in errors[-1]["message"]


def test_the_reported_learning_rate_is_the_one_in_use(tmp_path: Path, phantoms) -> None:  # noqa: ANN001
    """Phase 1's Adam runs at supervised_adam_lr (0.003); the progress events said 0.01 (the SGD's)."""
    config = make_config(
        "demo", supervised_optimizer="adam", supervised_iterations=2, reciprocal_iterations=1, **TINY
    )
    unlabelled = [Case(c.case_id, c.image, None) for c in phantoms[2:3]]
    train(config, phantoms[:1], unlabelled, tmp_path / "run")
    progress = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["event"] == "progress"]
    by_phase = {e["phase"]: e["lr"] for e in progress}
    assert by_phase["supervised"] == pytest.approx(config.supervised_adam_lr)
    assert by_phase["reciprocal"] == pytest.approx(config.lr)


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = "mkdir -p /tmp/.rs-probe && mount -t tmpfs -o size=64k tmpfs /tmp/.rs-probe"
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", probe], capture_output=True
    )
    return r.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs unprivileged user+mount namespaces (unshare)")
def test_a_read_only_cases_folder_is_a_storage_error_not_invalid_content(tmp_path: Path, phantoms) -> None:  # noqa: ANN001
    """The service's own write failing is 507 naming the workspace, not 422 "invalid content"."""
    ws = Workspace(tmp_path / "ws")
    image = sitk.ReadImage(str(phantoms[0].image))
    ws.add_case(image, phantoms[0].case_id, source="test")
    (ws.case_dir(phantoms[0].case_id) / "labels").mkdir()
    cases = ws.cases_dir
    log = tmp_path / "serve.log"
    script = (
        f"mount --bind {cases} {cases} && mount -o remount,bind,ro {cases} && exec {sys.executable} "
        f"-m reciprocalseg.service.server --workspace {ws.root} --device cpu"
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
    try:
        url = _wait_for_url(ws.root, proc, log)
        before = snapshot(ws.root)
        label = requests.put(
            f"{url}/cases/{phantoms[0].case_id}/label",
            files={"file": ("l.nrrd", phantoms[0].label.read_bytes())},
            timeout=120,
        )
        upload = requests.post(
            f"{url}/cases", files={"file": ("new.nrrd", phantoms[1].image.read_bytes())}, timeout=120
        )
        for r in (label, upload):
            assert r.status_code == 507, r.text
            detail = r.json()["detail"]
            assert "cannot write its workspace" in detail and "read-only" in detail.lower(), detail
        assert snapshot(ws.root) == before
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _wait_for_url(workspace: Path, proc: subprocess.Popen, log: Path, timeout: float = 120) -> str:
    url_file = workspace / ".service" / "url"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if url_file.exists() and url_file.read_text().strip():
            return url_file.read_text().strip()
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError("the service did not start:\n" + log.read_text())


@pytest.mark.skipif(os.name != "posix", reason="mode bits")
def test_a_token_file_other_users_can_read_is_warned_about(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("a-long-enough-token\n")
    token.chmod(0o644)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reciprocalseg", "serve", "--workspace", str(tmp_path / "ws")]
            + ["--token-file", str(token)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
    try:
        _wait_for_url(tmp_path / "ws", proc, log)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    text = log.read_text()
    assert f"the token file {token} can be read by other users" in text and "chmod 600" in text, text
    assert text.count("can be read by other users") == 1


def test_a_supervised_only_round_registers_a_teacher_only(service: Running, tmp_path: Path, phantoms) -> None:  # noqa: ANN001
    """iterations=0 made its never-trained student current: disagreement and next-case compared
    against noise, and the panel showed it. Now the round is a teacher, and every answer says so."""
    c = service.client
    for case in phantoms[:4]:
        c.add_case(case.image)
    c.put_label(phantoms[0].case_id, phantoms[0].label)
    st = c.start_training(**{**TRAIN_FAST, "iterations": 0})
    st = c.wait_for_training(poll=0.5, timeout=900)
    assert st.state == "completed" and st.fraction == 1.0, st.message
    assert "supervised-only: a teacher, no student" in st.message
    (entry,) = c.list_models().rounds
    assert entry.teacher_only and entry.current and entry.student_sha256 is None
    registry = json.loads((service.workspace / "models" / "registry.json").read_text())
    assert registry["rounds"][0]["student"] is None

    res = c.predict(phantoms[1].case_id, out_dir=tmp_path / "pred")
    assert res.teacher_only and res.score is None and "supervised-only" in res.note
    assert (
        res.teacher is not None and res.teacher.exists() and res.student is None and res.disagreement is None
    )
    assert {r.model for r in res.qa} == {"teacher"}
    r = c.session.get(f"{c.url}/cases/{phantoms[1].case_id}/prediction/student")
    assert r.status_code == 404 and "supervised-only" in r.json()["detail"], r.text
    nxt = c.next_case()
    assert nxt.teacher_only and nxt.by == "qa" and "not by disagreement" in nxt.note
    assert nxt.case_id in {p.case_id for p in phantoms[1:4]}
    # A refine asks for the student by default: a teacher-only round refines its teacher.
    strokes = np.full(SHAPE_ZYX, 255, np.uint8)
    strokes[16] = sitk.GetArrayFromImage(sitk.ReadImage(str(phantoms[1].label)))[16]
    assert c.refine(phantoms[1].case_id, strokes, seconds=2, device="cpu").model == "teacher"

    # The bundle holds the teacher alone, and comes back as the same round.
    bundle = c.export_models(tmp_path / "teacher_only.zip")
    with zipfile.ZipFile(bundle) as zf:
        assert sorted(zf.namelist()) == ["meta.json", "teacher.pt"]
        assert json.loads(zf.read("meta.json"))["teacher_only"] is True
    assert c.import_models(bundle).round == entry.round

    # The next round warm-starts the teacher only (its student from the teacher, as the preset says).
    st = c.start_training(**TRAIN_FAST)
    job = json.loads((service.workspace / "runs" / st.run_id / "job.json").read_text())
    assert job["warm_start_dir"].endswith("/teacher.pt")
    st = c.wait_for_training(poll=0.5, timeout=900)
    assert st.state == "completed", st.message
    second = c.list_models().rounds[-1]
    assert not second.teacher_only and second.student_sha256 is not None
    assert c.predict(phantoms[1].case_id).score is not None


def test_the_status_fraction_is_time_based_under_a_budget() -> None:
    """0.545 at 50 % of the wall time: the iterations of a budgeted round are only an estimate."""
    running = {"state": "running", "minutes": 10}
    halfway = {"overall_iteration": 545, "overall_total": 1000, "eta_s": 300.0}
    assert progress_fraction(running, halfway) == 0.5
    assert progress_fraction(running, {**halfway, "fraction": 0.47}) == 0.47  # the trainer's own clock
    assert progress_fraction({"state": "running"}, halfway) == 0.545  # no budget: iterations
    assert progress_fraction({"state": "completed", "minutes": 10}, halfway) == 1.0
    assert progress_fraction(running, {}) is None
    status = TrainingStatus(state="running", overall_iteration=545, overall_total=1000)
    assert status.fraction == 0.545  # an older service: the client falls back on the iterations
    assert (
        TrainingStatus(state="running", overall_iteration=545, overall_total=1000, fraction=0.5).fraction
        == 0.5
    )


@pytest.mark.parametrize(("model", "foreground"), [("student", True), ("teacher", False)])
def test_a_refine_adapts_the_network_it_was_asked_for(
    service: Running, tmp_path: Path, phantoms, model: str, foreground: bool
) -> None:  # noqa: ANN001
    """The refine took model_paths() (teacher, student) by MODELS' order (student, teacher): asked
    for the student, it adapted the teacher. Here the teacher predicts background everywhere and
    the student foreground everywhere (biased heads), far beyond what a 1-second refine can move."""
    c = service.client
    c.add_case(phantoms[0].image)
    bundle = write_bundle(tmp_path / "biased.zip", teacher_bias=[50.0, -50.0], student_bias=[-50.0, 50.0])
    c.import_models(bundle)
    strokes = np.full(SHAPE_ZYX, 255, np.uint8)
    strokes[14:18, 14:18, 14:18] = 1
    strokes[0:2, 0:2, 0:2] = 0
    res = c.refine(phantoms[0].case_id, strokes, model=model, seconds=1, device="cpu", out_dir=tmp_path / "r")
    assert res.model == model
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(res.labels)))
    assert (labels > 0).mean() > 0.9 if foreground else (labels > 0).mean() < 0.1, (labels > 0).mean()


def test_every_route_that_takes_a_file_gets_the_upload_limit() -> None:
    """The refine route (strokes, multipart) was left out of a hand-kept list and got the 64 KiB
    limit of JSON bodies: read from the routes instead."""
    from reciprocalseg.service.middleware import is_upload, upload_routes
    from reciprocalseg.service.routes import ROUTERS

    uploads = upload_routes(route for router in ROUTERS for route in router.routes)
    shown = {(method, path) for method, _, path in uploads}
    assert shown == {
        ("POST", "/cases"),
        ("PUT", "/cases/{case_id}/label"),
        ("POST", "/cases/{case_id}/refine"),
        ("POST", "/models/import"),
    }
    assert is_upload("POST", "/cases/c1/refine", uploads) and not is_upload("POST", "/training", uploads)
    assert not is_upload("POST", "/cases/register", uploads) and not is_upload("GET", "/cases", uploads)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_non_finite_time_limit_is_named_as_such(service: Running, phantoms, value: str) -> None:  # noqa: ANN001
    """A refine's ``seconds`` and the auto-retrain ``retrain_minutes`` of NaN or infinity were
    refused as "should be less than or equal to 600" (1440): true of neither, and no hint of what
    is wrong. They are refused as not finite, as a round's ``minutes`` is."""
    c = service.client
    c.add_case(phantoms[0].image)
    r = c.session.post(
        f"{c.url}/cases/{phantoms[0].case_id}/refine",
        files={"file": ("s.nrrd", b"not read")},
        data={"seconds": value},
    )
    assert r.status_code == 422 and "seconds: Input should be a finite number" in r.json()["detail"], r.text
    r = c.session.put(
        f"{c.url}/settings",
        data=f'{{"retrain_after": 3, "retrain_minutes": {"NaN" if value == "nan" else "Infinity"}}}',
        headers={"content-type": "application/json"},
    )
    detail = r.json()["detail"]
    assert r.status_code == 422 and "retrain_minutes: Input should be a finite number" in detail, r.text
    assert c.settings()["retrain_after"] is None


def _raw_request(url: str, head: str, body_parts: list[bytes]) -> tuple[int, dict]:
    """Send ``head`` and ``body_parts`` on a raw socket, never finishing the body, and read the
    answer: a service that waits for the rest of the body never answers (the socket's timeout
    then fails the test)."""
    import socket

    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in body_parts:
            sock.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data:
            received = sock.recv(65536)
            assert received, f"the service closed the connection without an answer: {data!r}"
            data += received
        header, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in header.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        while len(body) < length:
            body += sock.recv(65536)
    return int(header.split()[1]), json.loads(body)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_huge_json_body_is_refused_before_it_is_read(service: Running, framing: str) -> None:
    """A 1.5 GB JSON body took the default service (2 GiB upload limit, no token) to 7.7 GiB of
    memory: a body without a file is refused past 64 KiB, from its Content-Length before a byte
    of it is read, or (chunked) as soon as it grows past the limit; the rest is never sent here."""
    url = service.client.url
    auth = service.client.session.headers.get("Authorization")
    start = "POST /training HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\n"
    start += f"Authorization: {auth}\n" if auth else ""
    if framing == "content-length":
        status, answer = _raw_request(url, start + "Content-Length: 1500000000\n", [b'{"preset": "'])
    else:
        parts = [_chunk(b'{"preset": "')] + [_chunk(b"x" * 8192)] * 10  # 80 KiB, no last chunk
        status, answer = _raw_request(url, start + "Transfer-Encoding: chunked\n", parts)
    assert status == 413, answer
    assert "at most 64 KiB for a request without a file" in answer["detail"], answer
    assert service.client.health()


def test_a_prediction_of_a_constant_scan_stored_earlier_names_the_case(tmp_path: Path, phantoms) -> None:  # noqa: ANN001
    """A scan stored before uploads were checked for constant intensity: the prediction is a 422
    naming the case and the way on, not a message about "image" that names no case."""
    ws = Workspace(tmp_path / "ws")
    like = sitk.ReadImage(str(phantoms[0].image))
    ws.add_case(like, "old_blank", source="test")
    (stored,) = [p for p in ws.case_dir("old_blank").iterdir() if p.name.startswith("image")]
    blank = sitk.Image(like.GetSize(), like.GetPixelID()) + 7
    blank.CopyInformation(like)
    sitk.WriteImage(blank, str(stored))
    run = start_service(ws.root, device="cpu")
    try:
        _import(run, write_bundle(tmp_path / "m.zip"))
        before = snapshot(ws.root)
        r = run.client.session.post(f"{run.client.url}/cases/old_blank/predict")
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "case old_blank" in detail and "constant intensity" in detail, detail
        assert "replace its scan or delete the case" in detail, detail
        assert snapshot(ws.root) == before
    finally:
        run.launcher.stop()


def test_an_id_in_other_letters_is_not_found_and_names_the_case(service: Running, phantoms) -> None:  # noqa: ANN001
    """IDs are case-sensitive on every route (only a new ID is compared without regard to case):
    ``PHANTOM_000`` is a 404 that names ``phantom_000``, and a delete in other letters deletes nothing."""
    c = service.client
    c.add_case(phantoms[0].image)
    other = phantoms[0].case_id.upper()
    for r in (c.session.get(f"{c.url}/cases/{other}"), c.session.delete(f"{c.url}/cases/{other}")):
        assert r.status_code == 404, r.text
        assert f"did you mean {phantoms[0].case_id!r}" in r.json()["detail"], r.text
    assert [case.id for case in c.list_cases()] == [phantoms[0].case_id]
