"""The workspace alone (no server): crash leftovers, corrupt manifests, concurrency, registry recovery."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.common.atomic import atomic_write_json
from reciprocalseg.data.io import Case
from reciprocalseg.service.app import Service, ServiceConfig, safe_filename
from reciprocalseg.service.errors import Conflict, Invalid, NotFound
from reciprocalseg.service.jobs import EventReader, TrainingManager
from reciprocalseg.service.workspace import Workspace, check_case_id


def _add(ws: Workspace, case: Case) -> None:
    ws.add_case(sitk.ReadImage(str(case.image)), case.case_id, source="test")


def test_case_ids_are_safe() -> None:
    for good in ("a", "case_01", "LA-2018.03", "x" * 64):
        assert check_case_id(good) == good
    for bad in ("", ".", "..", "../x", "a/b", "a\\b", "-a", ".hidden", "a b", "x" * 65, "a\x00", "é"):
        with pytest.raises(Invalid):
            check_case_id(bad)
    assert safe_filename("../../etc/passwd.nrrd") == "passwd.nrrd"
    assert safe_filename("C:\\Users\\x\\scan.nii.gz") == "scan.nii.gz"


def test_leftovers_are_cleaned_and_commits_survive(tmp_path: Path, phantoms: list[Case]) -> None:
    ws = Workspace(tmp_path / "ws")
    _add(ws, phantoms[0])
    label = sitk.ReadImage(str(phantoms[0].label))
    ws.add_label(phantoms[0].case_id, label, author="a")
    # what a crash could leave: a half-built case, a half-deleted case, an upload, an orphan label file
    (ws.cases_dir / ".incoming-123").mkdir()
    (ws.cases_dir / ".incoming-123" / "image.nrrd").write_bytes(b"partial")
    (ws.cases_dir / ".trash-x-1").mkdir()
    (ws.tmp_dir / "upload.nrrd").write_bytes(b"partial")
    orphan = ws.case_dir(phantoms[0].case_id) / "labels" / "v0002.nrrd"
    orphan.write_bytes(b"half a label")
    ws2 = Workspace(tmp_path / "ws")
    assert ws2.case_ids() == [phantoms[0].case_id]
    assert not (ws2.cases_dir / ".incoming-123").exists() and not (ws2.cases_dir / ".trash-x-1").exists()
    assert list(ws2.tmp_dir.iterdir()) == []
    rec = ws2.get_case(phantoms[0].case_id)
    assert [v["version"] for v in rec["labels"]] == [1]
    # the orphan (never acknowledged) is simply overwritten by the next version
    entry = ws2.add_label(phantoms[0].case_id, label, author="b")
    assert entry["version"] == 2
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(orphan))), sitk.GetArrayFromImage(label)
    )


def test_corrupt_case_manifest_is_isolated(tmp_path: Path, phantoms: list[Case]) -> None:
    ws = Workspace(tmp_path / "ws")
    _add(ws, phantoms[0])
    _add(ws, phantoms[1])
    (ws.case_dir(phantoms[1].case_id) / "case.json").write_text('{"id": "phantom_001", "lab')
    ws2 = Workspace(tmp_path / "ws")
    assert ws2.case_ids() == [phantoms[0].case_id]
    assert ws2.corrupt == [phantoms[1].case_id]
    assert ws2.counts()["corrupt"] == 1
    with pytest.raises(Conflict):  # its folder still exists: the ID cannot be reused by accident
        _add(ws2, phantoms[1])


def test_concurrent_label_writes(tmp_path: Path, phantoms: list[Case]) -> None:
    ws = Workspace(tmp_path / "ws")
    _add(ws, phantoms[0])
    label = sitk.ReadImage(str(phantoms[0].label))
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            ws.add_label(phantoms[0].case_id, label, author=f"t{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rec = json.loads((ws.case_dir(phantoms[0].case_id) / "case.json").read_text())
    assert sorted(v["version"] for v in rec["labels"]) == list(range(1, 9))
    assert sorted(v["author"] for v in rec["labels"]) == sorted(f"t{i}" for i in range(8))
    assert Workspace(tmp_path / "ws").get_case(phantoms[0].case_id) == rec


def test_delete_and_not_found(tmp_path: Path, phantoms: list[Case]) -> None:
    ws = Workspace(tmp_path / "ws")
    _add(ws, phantoms[0])
    ws.delete_case(phantoms[0].case_id)
    assert ws.case_ids() == [] and not ws.case_dir(phantoms[0].case_id).exists()
    with pytest.raises(NotFound):
        ws.get_case(phantoms[0].case_id)
    with pytest.raises(NotFound):
        ws.delete_case(phantoms[0].case_id)


def test_n_classes_cannot_drop_below_the_labels(tmp_path: Path, phantoms: list[Case]) -> None:
    from reciprocalseg.common.errors import DataError

    ws = Workspace(tmp_path / "ws", n_classes=3)
    assert Workspace(tmp_path / "ws").n_classes == 3
    _add(ws, phantoms[0])
    label = sitk.ReadImage(str(phantoms[0].label)) * 2  # values 0 and 2: needs 3 classes
    ws.add_label(phantoms[0].case_id, label)
    assert Workspace(tmp_path / "ws", n_classes=4).n_classes == 4  # more is fine
    with pytest.raises(DataError, match="at least 3 classes"):
        Workspace(tmp_path / "ws", n_classes=2)


def _write_models(run: Path, nan: bool = False) -> None:
    """Real (tiny) teacher.pt and student.pt files, as a finished worker leaves them."""
    import torch

    from reciprocalseg.config import make_config
    from reciprocalseg.model.vnet import VNet
    from reciprocalseg.training.checkpoint import save_model

    config = make_config("demo", n_filters=1)
    for name in ("teacher", "student"):
        model = VNet(1, config.n_classes, config.n_filters, config.normalization)
        if nan and name == "student":
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        save_model(model, config, run / f"{name}.pt")


def test_finished_run_is_registered_at_startup(tmp_path: Path) -> None:
    """A crash between the worker's done.json and the registry update loses no round."""
    ws = Workspace(tmp_path / "ws")
    run = ws.runs_dir / "run-1"
    run.mkdir()
    _write_models(run)
    (run / "done.json").write_text("{}")
    atomic_write_json(
        run / "job.json",
        {"run_id": "run-1", "state": "running", "pid": None, "preset": "demo", "n_classes": 1,
         "n_labeled": 1, "n_unlabeled": 0, "created": "2024-01-01T00:00:00+00:00"},
    )  # fmt: skip
    jobs = TrainingManager(ws)
    assert jobs.recover() == []
    reg = ws.registry()
    assert reg["current"] == 1 and reg["rounds"][0]["run_id"] == "run-1"
    assert ws.read_job("run-1")["state"] == "completed"
    assert TrainingManager(ws).recover() == []  # idempotent
    assert len(ws.registry()["rounds"]) == 1


def test_a_run_that_finished_as_the_stop_reached_it_is_registered(tmp_path: Path) -> None:
    """done.json is the worker's last write: a SIGTERM that arrives while the finished worker
    exits (code -15 on a stop) must not turn the complete round into a cancelled run."""
    ws = Workspace(tmp_path / "ws")
    run = ws.runs_dir / "run-1"
    run.mkdir()
    _write_models(run)
    (run / "done.json").write_text("{}")
    job = {"run_id": "run-1", "state": "running", "pid": 123, "preset": "demo", "n_classes": 1,
           "n_labeled": 1, "n_unlabeled": 0, "created": "2024-01-01T00:00:00+00:00"}  # fmt: skip
    atomic_write_json(run / "job.json", job)
    TrainingManager(ws)._finish(job, -15, stopping=True)
    assert ws.read_job("run-1")["state"] == "completed"
    assert ws.registry()["current"] == 1


def test_event_reader_skips_partial_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "phase"}\n{"event": "progress", "iter')
    reader = EventReader(path)
    assert [e["event"] for e in reader.refresh()] == ["phase"]
    with open(path, "a") as f:
        f.write('ation": 1}\n')
    assert [e["event"] for e in reader.refresh()] == ["phase", "progress"]


def test_service_without_http(tmp_path: Path, phantoms: list[Case]) -> None:
    """The Service object works without the HTTP layer (used by embedders)."""
    svc = Service(ServiceConfig(workspace=tmp_path / "ws"))
    tmp = svc.ws.new_tmp_path(".nrrd")
    tmp.write_bytes(phantoms[2].image.read_bytes())
    info = svc.add_uploaded_case(tmp, "phantom_002_image.nrrd", None)
    assert info.id == "phantom_002" and info.status == "unlabelled"
    assert svc.info().counts.cases == 1
    with pytest.raises(Conflict):
        svc.next_case()
    svc.close()
