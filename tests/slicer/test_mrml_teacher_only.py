"""A supervised-only round is a teacher alone (issue 23): the panel shows that one model on real
MRML, and a student (with its disagreement map) shown for an earlier round is taken away."""

from __future__ import annotations

from pathlib import Path

from service_helpers import TRAIN_FAST, start_service, write_bundle

from reciprocalseg.data.phantom import write_phantom_cohort


def _roles(loop, case_id: str) -> set[str]:  # noqa: ANN001
    from ReciprocalSegLib.scene_cases import ATTR_CASE_ID, ATTR_ROLE

    return {n.GetAttribute(ATTR_ROLE) for n in loop.nodes.tagged() if n.GetAttribute(ATTR_CASE_ID) == case_id}


def test_a_teacher_only_round_shows_one_model(loop_factory, tmp_path: Path) -> None:  # noqa: ANN001
    from ReciprocalSegLib.scene_cases import ROLE_DISAGREEMENT, ROLE_STUDENT, ROLE_TEACHER

    run = start_service(tmp_path / "ws", device="cpu")
    try:
        cases = write_phantom_cohort(tmp_path / "phantoms", 3, seed=2, shape_zyx=(32, 32, 32))
        for case in cases:
            run.client.add_case(case.image, case_id=case.case_id)
        run.client.put_label(cases[0].case_id, cases[0].label)
        run.client.import_models(write_bundle(tmp_path / "pair.zip"))  # round 1: teacher and student
        loop = loop_factory(run)
        shown = cases[1].case_id
        loop.show_case(shown)
        _, student, disagreement = loop.predict(shown)
        assert student is not None and disagreement is not None
        assert {ROLE_TEACHER, ROLE_STUDENT, ROLE_DISAGREEMENT} <= _roles(loop, shown)

        run.client.start_training(**{**TRAIN_FAST, "iterations": 0, "warm_start": False})
        assert run.client.wait_for_training(poll=0.3, timeout=600).state == "completed"
        assert run.client.list_models().rounds[-1].teacher_only
        teacher, student, disagreement = loop.predict(shown)
        assert teacher is not None and student is None and disagreement is None
        roles = _roles(loop, shown)
        assert ROLE_TEACHER in roles and ROLE_STUDENT not in roles and ROLE_DISAGREEMENT not in roles
        assert teacher.GetName() == f"{shown} teacher (round 2, teacher only)"
    finally:
        run.launcher.stop()
