"""Retrain by itself (issue 27, item 5) through the scene logic, on Slicer's real MRML classes
(slicer-core) and a real service on loopback with a real training child: the panel's checkbox
calls ``set_auto_retrain``, a label painted in the scene and submitted is a correction, and once K
have arrived the service starts a warm-started round while the current one keeps serving.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from mrml_helpers import add_volume, blob_image, oblique_ijk_to_ras, paint
from service_helpers import TRAIN_FAST, Running, start_service

from reciprocalseg.data.phantom import write_phantom_cohort

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_round(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Its own service (the round it starts by itself must not change another module's round)."""
    run = start_service(tmp_path_factory.mktemp("retrain-ws"), device="cpu")
    try:
        cases = write_phantom_cohort(
            tmp_path_factory.mktemp("retrain-phantoms"), 3, seed=4, shape_zyx=(32,) * 3
        )
        for n, case in enumerate(cases):
            run.client.add_case(case.image, case_id=case.case_id)
            if n < 2:
                run.client.put_label(case.case_id, case.label)
        run.client.start_training(**TRAIN_FAST)
        assert run.client.wait_for_training(poll=0.3, timeout=600).state == "completed"
        yield run
    finally:
        run.launcher.stop()


def test_labels_submitted_from_the_scene_start_a_round_by_themselves(own_round, loop_factory):
    loop = loop_factory(own_round)
    client = own_round.client
    first_run = client.training_status().run_id
    after, minutes, corrections, _ = loop.auto_retrain_settings()
    assert after is None and corrections == 0  # off by default
    with pytest.raises(ValueError, match="at least one correction"):
        loop.set_auto_retrain(0)

    assert loop.set_auto_retrain(2, minutes=0.05)[:3] == (2, 0.05, 0)
    image, mask = blob_image(seed=5)
    for n in range(2):
        volume = add_volume(loop.logics.scene, f"retrain_case_{n}", image, oblique_ijk_to_ras())
        case_id = loop.add_volume(volume)
        _, label = loop.show_case(case_id)
        paint(mask, label, "class_1", volume)
        assert loop.submit(case_id).version is not None
        if n == 0:  # one correction of two: nothing starts
            assert loop.auto_retrain_settings()[2] == 1
            assert client.training_status().run_id == first_run

    deadline = time.monotonic() + 120
    while client.training_status().run_id == first_run:
        assert time.monotonic() < deadline, f"no round started by itself: {loop.auto_retrain_settings()}"
        time.sleep(0.1)
    status = client.training_status()
    assert status.state in ("queued", "running", "completed"), status.message
    message = loop.auto_retrain_settings()[3]
    assert message and status.run_id in message  # the panel's line names the round it started
    final = loop.wait_for_training(poll=0.3, timeout=600)
    assert final.state == "completed", final.message
    assert loop.auto_retrain_settings()[2] == 0  # counted again from the new round
    assert loop.set_auto_retrain(None)[0] is None  # the checkbox off (what "off" does: tests/service)
