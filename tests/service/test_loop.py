"""The whole annotation loop through HTTP with the Python client, on phantom data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from service_helpers import TRAIN_FAST

from reciprocalseg.client import ServiceError

pytestmark = pytest.mark.slow


def test_whole_loop(service, phantoms, tmp_path: Path) -> None:
    c = service.client
    info = c.info()
    assert info.counts["cases"] == 0 and info.device.type in ("cpu", "cuda") and info.version

    # add 6 cases (4 uploaded, 2 registered from the server's disk)
    for case in phantoms[:4]:
        assert c.add_case(case.image).status == "unlabelled"
    for case in phantoms[4:]:
        c.add_case(case.image, upload=False)
    cases = c.list_cases()
    assert [x.id for x in cases] == [p.case_id for p in phantoms]
    img = c.get_image("phantom_003", tmp_path / "img.nrrd")
    a = sitk.ReadImage(str(img))
    b = sitk.ReadImage(str(phantoms[3].image))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert a.GetSpacing() == pytest.approx(b.GetSpacing()) and a.GetOrigin() == pytest.approx(b.GetOrigin())

    # label 2
    for case in phantoms[:2]:
        v = c.put_label(case.case_id, case.label, author="alice")
        assert v.version == 1 and v.kind == "submitted" and v.author == "alice"
    assert sum(x.status == "labelled" for x in c.list_cases()) == 2

    # train round 1 (second start while it runs is refused)
    st = c.start_training(**TRAIN_FAST, warm_start=False)
    assert st.state == "running" and st.n_labeled == 2 and st.n_unlabeled == 4
    with pytest.raises(ServiceError) as err:
        c.start_training(**TRAIN_FAST)
    assert err.value.status_code == 409 and "one training job" in err.value.message
    seen = []
    st = c.wait_for_training(poll=0.5, timeout=900, callback=seen.append)
    assert st.state == "completed", st.message
    assert st.round == 1 and st.current_round == 1
    events = c.training_events(since=0)
    kinds = [e["event"] for e in events.events]
    assert "progress" in kinds and kinds[-1] == "done"
    assert c.training_events(since=events.next).events == []
    models = c.list_models()
    assert models.current == 1 and len(models) == 1
    assert all(len(h or "") == 64 for h in (models.rounds[0].teacher_sha256, models.rounds[0].student_sha256))

    # predict a case and download the three maps
    pred = c.predict("phantom_003", out_dir=tmp_path / "pred")
    assert pred.round == 1 and 0.0 <= pred.score <= 1.0
    teacher = sitk.ReadImage(str(pred.teacher))
    assert teacher.GetSize() == a.GetSize()
    assert sitk.ReadImage(str(pred.disagreement)).GetPixelID() == sitk.sitkFloat32
    assert c.get_case("phantom_003").status == "predicted"

    # next case: every unlabelled case gets a score of round 1; the highest wins
    nxt = c.next_case()
    assert nxt.round == 1 and nxt.n_candidates == 4
    scores = {x.id: x.score for x in c.list_cases() if x.status != "labelled"}
    assert all(s is not None for s in scores.values())
    if not nxt.both_empty:  # a case where both networks find nothing would rank first
        assert nxt.case_id == max(scores, key=lambda k: (scores[k], k))

    # submit a corrected label for the suggested case (the teacher's draft, then the reference)
    draft = c.draft_from_prediction(nxt.case_id, author="model")
    assert draft.kind == "draft"
    ref = next(p for p in phantoms if p.case_id == nxt.case_id)
    final = c.put_label(nxt.case_id, ref.label, author="bob", note="corrected")
    hist = c.label_history(nxt.case_id)
    assert [v.kind for v in hist.versions] == ["draft", "submitted"] and hist.current == final.version
    got = c.get_label(nxt.case_id, tmp_path / "lab.nrrd")
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(got))),
        sitk.GetArrayFromImage(sitk.ReadImage(str(ref.label))),
    )
    c.get_label(nxt.case_id, tmp_path / "draft.nrrd", version=draft.version)

    # retrain warm-started: a new round, the models change, old predictions are no longer current
    st = c.start_training(**TRAIN_FAST, warm_start=True)
    assert st.warm_start_round == 1 and st.n_labeled == 3
    st = c.wait_for_training(poll=0.5, timeout=900)
    assert st.state == "completed", st.message
    models = c.list_models()
    assert models.current == 2 and [r.round for r in models.rounds] == [1, 2]
    assert models.rounds[1].warm_start_round == 1
    b1, b2 = tmp_path / "r1.zip", tmp_path / "r2.zip"
    c.export_models(b1, round=1)
    c.export_models(b2)
    import zipfile

    with zipfile.ZipFile(b1) as z1, zipfile.ZipFile(b2) as z2:
        assert z1.read("teacher.pt") != z2.read("teacher.pt")
    assert not c.get_case("phantom_003").score_current
    pred2 = c.predict("phantom_003")
    assert pred2.round == 2

    # importing round 1's bundle gives round 1 back (same sha256), current again; no copy is made
    imported = c.import_models(b1)
    assert imported.round == 1 and imported.source == "trained" and imported.current
    assert len(c.list_models()) == 2
    assert c.predict("phantom_003").round == 1
    assert c.set_current_model(2).current == 2
    info = c.info()
    assert info.counts == {
        "cases": 6, "labelled": 3, "unlabelled": 3, "predicted": 4, "rounds": 2, "corrupt": 0
    }  # fmt: skip

    # delete a case
    c.delete_case("phantom_005")
    assert "phantom_005" not in [x.id for x in c.list_cases()]
