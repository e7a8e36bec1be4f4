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
