"""A round planned from the data and sized in minutes, through a real service on loopback."""

from __future__ import annotations

import json

import pytest
from service_helpers import TRAIN_FAST

from reciprocalseg.client import ServiceError
from reciprocalseg.planning.fingerprint import compute_fingerprint
from reciprocalseg.planning.planner import plan_from_fingerprint

pytestmark = pytest.mark.slow


def _record(service, case_id: str) -> dict:
    return json.loads((service.workspace / "cases" / case_id / "fingerprint.json").read_text())


def test_the_plan_comes_from_fingerprints_stored_when_cases_and_labels_arrive(service, phantoms) -> None:
    c = service.client
    with pytest.raises(ServiceError) as err:
        c.plan()
    assert err.value.status_code == 404 and "no labelled case" in err.value.message
    for case in phantoms[:4]:
        c.add_case(case.image)
    assert all(_record(service, case.case_id)["label"] is None for case in phantoms[:4])
    with pytest.raises(ServiceError) as err:  # scans but no label: nothing to take the classes from
        c.plan()
    assert err.value.status_code == 404 and "PUT /cases/{id}/label" in err.value.message
    for case in phantoms[:2]:
        c.put_label(case.case_id, case.label)
    assert _record(service, phantoms[0].case_id)["label"]["version"] == 1

    plan = c.plan()
    assert set(plan) == {"format", "device", "values", "overrides", "reasons", "fingerprint"}
    assert plan["device"] == "cpu" and plan["fingerprint"]["cases"] == {"labeled": 2, "unlabeled": 2}
    # The same plan as the CLI's, which reads the files: the stored records are the same records.
    cli = plan_from_fingerprint(compute_fingerprint(phantoms[:2], phantoms[2:4]), "cpu")
    assert plan["values"] == cli.values and plan["fingerprint"] == cli.fingerprint
    assert plan["overrides"] == {"n_classes": 2}  # the workspace's class count, as the round gets it

    # Unchanged cases are not recomputed; a missing record is computed again (and kept).
    missing = service.workspace / "cases" / phantoms[3].case_id / "fingerprint.json"
    others = [p for p in missing.parent.parent.glob("*/fingerprint.json") if p != missing]
    stamps = {p: p.stat().st_mtime_ns for p in others}
    missing.unlink()
    assert c.plan() == plan
    for path, stamp in stamps.items():
        assert path.stat().st_mtime_ns == stamp
    assert _record(service, phantoms[3].case_id)["intensity"] is not None

    # A deleted case drops out; a new label version replaces the case's label record.
    c.delete_case(phantoms[3].case_id)
    assert c.plan()["fingerprint"]["cases"] == {"labeled": 2, "unlabeled": 1}
    c.put_label(phantoms[2].case_id, phantoms[2].label)
    assert c.plan()["fingerprint"]["cases"] == {"labeled": 3, "unlabeled": 0}
    c.put_label(phantoms[0].case_id, phantoms[0].label, author="again")
    assert _record(service, phantoms[0].case_id)["label"]["version"] == 2


def test_an_auto_round_trains_the_plan_get_plan_shows_and_reports_it(service, phantoms) -> None:
    """Auto is the default preset; the round's plan.json is the plan GET /plan showed before it
    started, and its status carries the planned values (null for a fixed preset)."""
    c = service.client
    for case in phantoms[:4]:
        c.add_case(case.image)
    for case in phantoms[:2]:
        c.put_label(case.case_id, case.label)
    shown = c.plan()
    st = c.start_training(iterations=2, supervised_iterations=2, device="cpu", warm_start=False)
    assert st.preset == "auto"
    planned = {**shown["values"], **shown["overrides"]}
    assert st.plan == planned
    st = c.wait_for_training(poll=0.5, timeout=900)
    assert st.state == "completed", st.message
    assert st.plan == planned
    run = service.workspace / "runs" / st.run_id
    written = json.loads((run / "plan.json").read_text())
    assert written["values"] == shown["values"] and written["fingerprint"] == shown["fingerprint"]
    config = json.loads((run / "config.json").read_text())
    assert config["patch_size"] == shown["values"]["patch_size"]
    assert config["downsampling"] == shown["values"]["downsampling"]

    st = c.start_training(**TRAIN_FAST, warm_start=False)
    assert st.plan is None and c.wait_for_training(poll=0.5, timeout=900).state == "completed"


def test_an_auto_round_with_a_time_budget(service, phantoms) -> None:
    c = service.client
    for case in phantoms[:4]:
        c.add_case(case.image)
    for case in phantoms[:2]:
        c.put_label(case.case_id, case.label)
    st = c.start_training(preset="auto", minutes=0.05, device="cpu", warm_start=False)
    st = c.wait_for_training(poll=0.5, timeout=900)
    assert st.state == "completed", st.message
    run = service.workspace / "runs" / st.run_id
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "auto" and config["minutes"] == 0.05
    plan = json.loads((run / "plan.json").read_text())
    assert plan["values"]["class_crop_share"] == pytest.approx(1 / 3)
    kinds = [e["event"] for e in c.training_events(since=0).events]
    assert kinds.count("budget") == 2  # both phases sized from their measured speed


def test_a_fixed_preset_round_after_an_auto_round_is_refused_before_it_starts(service, phantoms) -> None:
    """The auto round's network comes from its plan: a demo round whose network differs cannot
    warm-start from it, and is refused at the request (409 naming the fields), not 202 and then a
    failed worker. An auto round after it keeps the network and is accepted."""
    from reciprocalseg.client import ServiceError

    c = service.client
    for case in phantoms[:4]:
        c.add_case(case.image)
    for case in phantoms[:2]:
        c.put_label(case.case_id, case.label)
    c.start_training(preset="auto", iterations=2, supervised_iterations=2, device="cpu", warm_start=False)
    assert c.wait_for_training(poll=0.5, timeout=900).state == "completed"
    run = service.workspace / "runs" / c.training_status().run_id
    planned = json.loads((run / "config.json").read_text())["downsampling"]
    assert planned != [[2, 2, 2]] * 4  # the phantoms' plan keeps an axis at the last level
    with pytest.raises(ServiceError) as err:
        c.start_training(preset="demo", iterations=2, supervised_iterations=2, device="cpu")
    assert err.value.status_code == 409 and "downsampling" in err.value.message
    st = c.start_training(preset="auto", iterations=2, supervised_iterations=2, device="cpu")
    assert c.wait_for_training(poll=0.5, timeout=900).state == "completed", st


def test_the_training_child_is_given_the_services_plan(tmp_path) -> None:
    """The child trains the request the service wrote, which names the service's plan
    (``RUN/plan.json``); a run started by a service that passed a command line gets one too."""
    from reciprocalseg.data.io import write_case_list
    from reciprocalseg.service.jobs import REQUEST_FILE, TrainingManager
    from reciprocalseg.service.workspace import Workspace
    from reciprocalseg.training.request import TrainRequest

    ws = Workspace(tmp_path / "ws")
    run_dir = ws.runs_dir / "run-1"
    run_dir.mkdir()
    write_case_list(run_dir / "cases.json", [], [])
    (run_dir / "plan.json").write_text("{}")
    job = {"run_id": "run-1", "preset": "auto", "device": "cpu", "n_classes": 2, "minutes": 1.5}
    job["classes_include_background"] = True
    manager = TrainingManager(ws)
    manager._write_request_of_older_run(job)
    request = TrainRequest.load(run_dir / REQUEST_FILE)
    assert request.plan == run_dir / "plan.json" and request.preset == "auto"
    assert request.config == {"n_classes": 2, "device": "cpu", "minutes": 1.5}
    assert request.out == run_dir and request.json_events
    cmd = manager._command(run_dir)
    assert cmd[cmd.index("--request") + 1] == str(run_dir / REQUEST_FILE)
