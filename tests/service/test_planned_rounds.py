"""A round planned from the data and sized in minutes, through a real service on loopback."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


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
