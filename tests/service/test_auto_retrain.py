"""Retrain by itself (issue 27, item 5) on a real service with a real training child.

With ``retrain_after`` = K set, a warm-started round of ``retrain_minutes`` starts once K
corrections (submitted label versions since the latest round started) have arrived; the current
round keeps serving meanwhile.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from service_helpers import TRAIN_FAST, Running

from reciprocalseg.client import ServiceError
from reciprocalseg.data.io import Case

pytestmark = pytest.mark.slow


def wait_for_new_run(c, old_run: str, timeout: float = 120) -> str:
    """The run ID of the round the service starts by itself (polls; fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run_id = c.training_status().run_id
        if run_id != old_run:
            return run_id
        time.sleep(0.1)
    raise AssertionError(f"no round started by itself; settings: {c.settings()}")


def trained_round(c, phantoms: list[Case], labelled: int = 2) -> str:
    for case in phantoms:
        c.add_case(case.image)
    for case in phantoms[:labelled]:
        c.put_label(case.case_id, case.label)
    st = c.start_training(**TRAIN_FAST)
    final = c.wait_for_training(poll=0.2, timeout=600)
    assert final.state == "completed", final.message
    return st.run_id


def test_a_warm_started_round_starts_after_k_corrections(
    service: Running, phantoms: list[Case], tmp_path: Path
) -> None:
    c = service.client
    first_run = trained_round(c, phantoms)
    settings = c.settings()
    assert settings["retrain_after"] is None and settings["corrections"] == 0

    settings = c.set_auto_retrain(2, minutes=0.05)
    assert (settings["retrain_after"], settings["retrain_minutes"]) == (2, 0.05)
    assert settings["n_classes"] == 2  # the class count is left as it was
    with pytest.raises(ServiceError) as err:
        c.set_auto_retrain(0)
    assert err.value.status_code == 422 and "retrain_after" in err.value.message

    c.put_label(phantoms[2].case_id, phantoms[2].label)  # one correction of two: no round
    assert c.settings()["corrections"] == 1
    assert c.training_status().run_id == first_run
    c.predict(phantoms[3].case_id)
    c.draft_from_prediction(phantoms[3].case_id)
    assert c.settings()["corrections"] == 1

    c.put_label(phantoms[3].case_id, phantoms[3].label)  # the second one starts a round
    auto_run = wait_for_new_run(c, first_run)
    job = json.loads((service.workspace / "runs" / auto_run / "job.json").read_text())
    assert (job["warm_start_round"], job["minutes"], job["preset"]) == (1, 0.05, "demo")
    expected = {p.case_id: 1 for p in phantoms[:3]} | {phantoms[3].case_id: 2}  # v1 of 003: the draft
    assert job["label_versions"] == expected
    settings = c.settings()
    assert settings["corrections"] == 0 and f"started run {auto_run}" in settings["retrain_message"]
    assert "after 2 corrections" in settings["retrain_message"]

    # The current round keeps serving while the new one trains.
    served = c.predict(phantoms[4].case_id)
    assert (served.round, served.live) == (1, False)

    final = c.wait_for_training(poll=0.2, timeout=600)
    assert final.state == "completed" and final.run_id == auto_run, final.message
    models = c.list_models()
    assert models.current == 2 and models.rounds[-1].warm_start_round == 1
    assert c.settings()["corrections"] == 0


def test_enabling_with_corrections_waiting_starts_at_once_and_off_starts_nothing(
    service: Running, phantoms: list[Case]
) -> None:
    c = service.client
    first_run = trained_round(c, phantoms)
    for case in phantoms[2:4]:
        c.put_label(case.case_id, case.label)
    settings = c.set_auto_retrain(3, minutes=0.05)  # two corrections of three: nothing starts
    assert settings["corrections"] == 2 and c.training_status().run_id == first_run
    settings = c.set_auto_retrain(None)
    assert settings["retrain_after"] is None and settings["retrain_minutes"] == 0.05  # kept for later

    c.set_auto_retrain(2)  # the two corrections already there are enough
    auto_run = wait_for_new_run(c, first_run)
    job = json.loads((service.workspace / "runs" / auto_run / "job.json").read_text())
    assert (job["warm_start_round"], job["minutes"]) == (1, 0.05)
    c.set_auto_retrain(None)
    final = c.wait_for_training(poll=0.2, timeout=600)
    assert final.state == "completed", final.message
