"""What the panel shows of the service's state, through the scene logic on real MRML and a real
service on loopback: the training budget and plan (issue 16), the class count (issue 15), which
model made a prediction, the live model, and the QA column and ordering (issue 17)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator

import psutil
import pytest
from service_helpers import Running, start_service

from reciprocalseg.client import CaseInfo, TrainingStatus
from reciprocalseg.data.phantom import write_phantom_cohort

CASE = "phantom_003"


@pytest.fixture(scope="module")
def fresh_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Four 32^3 phantoms, two labelled, no round yet (this module trains its own)."""
    run = start_service(tmp_path_factory.mktemp("state-ws"), device="cpu")
    try:
        cases = write_phantom_cohort(
            tmp_path_factory.mktemp("state-phantoms"), 4, seed=2, shape_zyx=(32, 32, 32)
        )
        for n, case in enumerate(cases):
            run.client.add_case(case.image, case_id=case.case_id)
            if n < 2:
                run.client.put_label(case.case_id, case.label)
        yield run
    finally:
        run.launcher.stop()


def test_a_time_budget_reaches_the_service_and_the_status_line_shows_the_plan(fresh_service, loop_factory):
    from ReciprocalSegLib.status_text import format_training_status

    loop = loop_factory(fresh_service)
    loop.start_training(preset="auto", minutes=0.05, device="cpu", warm_start=False)
    assert loop.training_minutes == 0.05
    final = loop.wait_for_training(poll=0.3, timeout=600)
    assert final.state == "completed", final.message
    assert final.preset == "auto"  # the default plan from the cases
    budgets = [e for e in fresh_service.client.training_events().events if e["event"] == "budget"]
    assert budgets and all(e["minutes"] == 0.05 for e in budgets)  # minutes=, not iterations, sized it
    assert loop.budget_minutes(final) == 0.05
    assert loop.budget_minutes(TrainingStatus(state="running", run_id="another-clients-run")) is None
    line = format_training_status(final, loop.budget_minutes(final))
    assert line.startswith("completed") and "preset auto, budget 0.05 min" in line
    if "plan" in {f.name for f in dataclasses.fields(TrainingStatus)}:  # issue 16's status field
        assert f"crop {' × '.join(map(str, final.plan['patch_size']))} voxels" in line


def test_case_table_and_plan_box_on_the_service_answers(fresh_service, loop_factory):
    """The annotation columns and the plan as the service (of whatever version) reports them: the
    real values where it sends them, "?" and no plan where it does not; never an exception."""
    from ReciprocalSegLib.case_table import COLUMN_ANNOTATED, COLUMN_ANNOTATION, case_row, labelled_summary
    from ReciprocalSegLib.status_text import NO_PLAN, format_plan_box

    loop = loop_factory(fresh_service)
    cases = {c.id: c for c in loop.list_cases()}
    rows = {case_id: case_row(c) for case_id, c in cases.items()}
    labelled, unlabelled = "phantom_000", CASE  # the fixture labels the first two phantoms
    if hasattr(cases[labelled], "annotation"):  # a service with partial labels (issue 17 part 1)
        assert rows[labelled][COLUMN_ANNOTATION : COLUMN_ANNOTATED + 1] == ("full", "100 %")
        assert rows[unlabelled][COLUMN_ANNOTATION : COLUMN_ANNOTATED + 1] == ("unlabelled", "0 %")
        assert labelled_summary(list(cases.values())).startswith("2 fully and 0 partially labelled of")
    else:
        assert rows[labelled][COLUMN_ANNOTATION : COLUMN_ANNOTATED + 1] == ("?", "?")
        assert labelled_summary(list(cases.values())).startswith("2 labelled of")
    plan = loop.plan()  # an auto round's plan from the two labelled phantoms, when the service has GET /plan
    box = format_plan_box(loop.training_status(), plan)
    if hasattr(fresh_service.client, "plan"):
        assert isinstance(plan, dict) and "Crop: " in box and "Normalisation: " in box
    else:
        assert plan is None and box == NO_PLAN


def _pause_after_checkpoint(client, worker: psutil.Process, timeout: float = 300) -> dict:
    """Stop the worker right after its first checkpoint; returns the checkpoint event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = client.training_events(since=0).events
        assert not any(e["event"] == "done" for e in events), "the round ended before a checkpoint was seen"
        status = client.training_status()
        assert status.state == "running", f"the round {status.state}: {status.message}"
        checkpoints = [e for e in events if e["event"] == "checkpoint"]
        if checkpoints:
            worker.suspend()
            # The latest checkpoint file is the last event's (the worker is stopped now).
            return [e for e in client.training_events(since=0).events if e["event"] == "checkpoint"][-1]
        time.sleep(0.05)
    raise AssertionError("no checkpoint")


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="pauses the worker with SIGSTOP")
def test_predictions_say_which_model_made_them_live_or_round(fresh_service, loop_factory):
    from ReciprocalSegLib.logic import ATTR_MODEL

    loop = loop_factory(fresh_service)
    client = fresh_service.client
    current = client.info().current_round
    assert current is not None  # trained by the test above
    teacher, student, disagreement = loop.predict(CASE)
    assert loop.last_prediction_model == f"round {current}"
    for node in (teacher, student, disagreement):
        assert node.GetAttribute(ATTR_MODEL) == f"round {current}"
        assert node.GetName().endswith(f"(round {current})")

    status = client.start_training(
        preset="demo",
        supervised_iterations=4,
        iterations=60,
        checkpoint_every=2,
        device="cpu",
        warm_start=False,
    )
    run_dir = fresh_service.workspace / "runs" / status.run_id
    worker = psutil.Process(json.loads((run_dir / "job.json").read_text())["pid"])
    try:
        checkpoint = _pause_after_checkpoint(client, worker)
        teacher, student, disagreement = loop.predict(CASE, live=True)
        expected = f"live: round {current + 1} iteration {checkpoint['iteration']} ({checkpoint['phase']})"
        assert loop.last_prediction_model == expected
        for node in (teacher, student, disagreement):
            assert node.GetAttribute(ATTR_MODEL) == expected
            assert node.GetName().endswith(f"({expected})")
        # Only one node per role: the live prediction replaced the round's.
        assert [n.GetAttribute(ATTR_MODEL) for n in loop.nodes.tagged() if n.GetAttribute(ATTR_MODEL)] == [
            expected
        ] * 3
    finally:
        if worker.is_running():
            worker.resume()
        client.wait_for_training(poll=0.3, timeout=600)  # the round ends and becomes the current one
    loop.predict(CASE, live=False)
    assert loop.last_prediction_model == f"round {client.info().current_round}"


def test_qa_column_and_next_case_by_qa_on_the_service_answers(trained_service, loop_factory):
    from ReciprocalSegLib.case_table import COLUMN_QA, case_row, sort_cases

    loop = loop_factory(trained_service)
    # Not labelled: "unlabelled" or "predicted" (other tests of the session predict on this service).
    unlabelled = [c.id for c in loop.list_cases() if c.status != "labelled"]
    loop.predict(unlabelled[0])
    cases = loop.list_cases()
    predicted = next(c for c in cases if c.id == unlabelled[0])
    assert isinstance(predicted.qa_flags, int)  # the service's QA of the current prediction
    assert case_row(predicted)[COLUMN_QA] == str(predicted.qa_flags)
    ordered = sort_cases(cases, COLUMN_QA, descending=True)
    missing = [c.qa_flags is None for c in ordered]
    assert ordered[0].qa_flags is not None and missing == sorted(missing)  # never-predicted last
    flags = [c.qa_flags for c in ordered if c.qa_flags is not None]
    assert flags == sorted(flags, reverse=True)

    case_id, _score = loop.next_case("qa")
    assert loop.last_next_case.by == "qa" and case_id in unlabelled
    assert loop.next_case()[0] in unlabelled and loop.last_next_case.by == "disagreement"
    with pytest.raises(ValueError, match="disagreement"):
        loop.next_case("volume")


def _case(case_id: str, flags: int | None, score: float | None = None) -> CaseInfo:
    return CaseInfo(id=case_id, status="unlabelled", added="", geometry={}, score=score, qa_flags=flags)


def test_case_table_sorts_numbers_as_numbers_and_keeps_empty_cells_last():
    from ReciprocalSegLib.case_table import COLUMN_QA, COLUMN_SCORE, case_row, sort_cases

    cases = [_case("b", 9, 0.5), _case("a", None), _case("c", 10, 0.05), _case("d", 9, None)]
    ids = lambda cs: [c.id for c in cs]  # noqa: E731
    assert ids(sort_cases(cases, COLUMN_QA)) == ["b", "d", "c", "a"]  # 9 < 10 (text would say "10" < "9")
    assert ids(sort_cases(cases, COLUMN_QA, descending=True)) == ["c", "b", "d", "a"]
    assert ids(sort_cases(cases, COLUMN_SCORE, descending=True)) == ["b", "c", "a", "d"]
    assert ids(sort_cases(cases, 0, descending=True)) == ["d", "c", "b", "a"]
    assert case_row(cases[1])[:2] + case_row(cases[1])[COLUMN_SCORE:] == ("a", "unlabelled", "", "")
    assert case_row(cases[2])[:2] + case_row(cases[2])[COLUMN_SCORE:] == ("c", "unlabelled", "0.0500", "10")
    with pytest.raises(ValueError, match="no column 7"):
        sort_cases(cases, 7)


def test_class_count_set_fixed_and_released_through_the_logic(fresh_service, loop_factory):
    from ReciprocalSegLib.scene_cases import ROLE_LABEL

    loop = loop_factory(fresh_service)
    assert loop.class_settings() == (1, False)  # phantoms: one structure; follows the labels
    assert loop.set_class_count(3) == (3, True)
    # + background:
    assert class_count_of(fresh_service.client.settings()) == {"n_classes": 4, "n_classes_fixed": True}
    assert loop.class_count() == 3
    loop.show_case(CASE)  # a new empty label gets a segment per class
    assert loop.case_node(CASE, ROLE_LABEL).GetSegmentation().GetNumberOfSegments() == 3
    with pytest.raises(ValueError, match="at least one foreground class"):
        loop.set_class_count(0)
    count, fixed = loop.set_class_count(None)
    assert not fixed and fresh_service.client.settings()["n_classes_fixed"] is False
    assert count == loop.class_count()


def class_count_of(settings: dict) -> dict:
    """The class-count part of GET /settings (which also carries the retrain settings)."""
    return {key: settings[key] for key in ("n_classes", "n_classes_fixed")}
