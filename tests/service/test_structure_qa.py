"""Per-structure QA through a real service: values against numpy counts, flags against the labelled
cases (and anew when the labels change), the opt-in QA ranking of next-case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from service_helpers import write_bundle

from reciprocalseg.client import ServiceError
from reciprocalseg.data.io import write_image
from reciprocalseg.data.phantom import write_phantom_cohort

SPACING = (1.0, 1.0, 1.5)
VOXEL_ML = 1.0 * 1.0 * 1.5 / 1000


def _scan(path: Path, shape_zyx: tuple[int, int, int], seed: int) -> Path:
    arr = np.random.default_rng(seed).normal(100, 20, shape_zyx).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    write_image(img, path)
    return path


def _label_volumes(path: Path, n_classes: int = 3) -> np.ndarray:
    img = sitk.ReadImage(str(path))
    voxel_ml = float(np.prod(img.GetSpacing())) / 1000
    return np.bincount(sitk.GetArrayFromImage(img).ravel(), minlength=n_classes) * voxel_ml


def test_qa_values_flags_and_ranking(service, tmp_path: Path) -> None:
    c = service.client
    phantoms = write_phantom_cohort(tmp_path / "p3", 4, seed=0, n_classes=2, shape_zyx=(32, 32, 32))
    for case in phantoms[:3]:
        c.add_case(case.image)
        c.put_label(case.case_id, case.label, author="ref")
    assert c.settings()["n_classes"] == 3
    # Two unlabelled scans: "zz_fit" small enough that a whole-scan structure lies within the labelled
    # class-1 volumes (0.93-1.46 mL here), "aa_big" (32^3) far above them.
    c.add_case(_scan(tmp_path / "zz_fit.nrrd", (8, 10, 10), seed=1), case_id="zz_fit")  # 1.2 mL
    c.add_case(_scan(tmp_path / "aa_big.nrrd", (32, 32, 32), seed=2), case_id="aa_big")  # 49 mL
    # Real model files whose teacher and student both predict class 1 in every voxel.
    bundle = write_bundle(
        tmp_path / "class1.zip", n_classes=3, teacher_bias=[-50, 50, -50], student_bias=[-50, 50, -50]
    )
    assert c.import_models(bundle).round == 1

    reference = np.array([_label_volumes(p.label) for p in phantoms[:3]])
    res = c.predict("aa_big")
    assert res.round == 1 and not res.live and res.qa is not None
    rows = {(r.model, r.label): r for r in res.qa}
    assert set(rows) == {(m, k) for m in ("teacher", "student") for k in (1, 2)}
    for model in ("teacher", "student"):
        whole = rows[(model, 1)]
        assert whole.volume_ml == pytest.approx(32 * 32 * 32 * VOXEL_ML)  # numpy: every voxel
        assert whole.pieces == 1 and whole.disagreement == 0.0
        assert whole.flags == ["volume_high"]
        absent = rows[(model, 2)]
        assert absent.volume_ml == 0.0 and absent.pieces == 0
        assert absent.flags == ["empty"]  # every labelled case has class 2
    assert res.qa_flags == 4 and [r.label for r in res.flagged] == [1, 2, 1, 2]

    with pytest.raises(ServiceError) as err:  # no prediction of zz_fit yet
        c.qa("zz_fit")
    assert err.value.status_code == 404 and "no prediction" in err.value.message

    qa = c.qa("aa_big")
    assert qa.round == 1 and qa.n_flags == 4 and qa.reference["cases"] == 3
    for k in (1, 2):  # the reference ranges: numpy counts of the labelled cases x voxel volume
        rng = qa.reference["classes"][str(k)]
        assert rng["volume_ml_min"] == pytest.approx(reference[:, k].min())
        assert rng["volume_ml_max"] == pytest.approx(reference[:, k].max())
        assert rng["present_in"] == 3

    # next-case: both networks agree everywhere (score 0), so by disagreement the ID breaks the tie
    # (zz_fit); by QA the case with more flags wins (aa_big: 4 against zz_fit's 2, class 2 empty).
    by_score = c.next_case()
    assert by_score.case_id == "zz_fit" and by_score.by == "disagreement" and by_score.score == 0.0
    by_qa = c.next_case(by="qa")
    assert by_qa.case_id == "aa_big" and by_qa.by == "qa" and by_qa.qa_flags == 4
    table = {x.id: x.qa_flags for x in c.list_cases()}  # the case table's sortable column
    assert table == {"aa_big": 4, "zz_fit": 2, **{p.case_id: None for p in phantoms[:3]}}
    fit = c.qa("zz_fit")
    assert fit.n_flags == 2
    assert {(s.model, s.label): s.flags for s in fit.structures}[("teacher", 1)] == []
    assert {(s.model, s.label): s.volume_ml for s in fit.structures}[("student", 1)] == pytest.approx(
        8 * 10 * 10 * VOXEL_ML
    )

    # A new labelled case whose class 1 fills the scan: the ranges widen, the stored prediction's
    # flags follow (no new prediction); the QA ranking then ties and falls back to the score.
    wide = np.ones((32, 32, 32), np.uint8)
    wide[:3, :3, :3] = 2
    wide_img = sitk.GetImageFromArray(wide)
    wide_img.CopyInformation(sitk.ReadImage(str(phantoms[3].image)))
    write_image(wide_img, tmp_path / "wide_label.nrrd")
    c.add_case(phantoms[3].image)
    c.put_label(phantoms[3].case_id, tmp_path / "wide_label.nrrd")
    qa = c.qa("aa_big")
    assert qa.reference["cases"] == 4 and qa.n_flags == 2
    assert {(s.model, s.label): s.flags for s in qa.structures} == {
        ("teacher", 1): [],
        ("teacher", 2): ["empty"],
        ("student", 1): [],
        ("student", 2): ["empty"],
    }
    assert c.get_prediction("aa_big").qa_flags == 2 and c.get_case("aa_big").qa_flags == 2
    assert c.next_case(by="qa").case_id == "zz_fit"


def test_reference_ranges_are_computed_once_per_label_state(tmp_path: Path) -> None:
    from reciprocalseg.data.io import read_image
    from reciprocalseg.service.quality import StructureChecks
    from reciprocalseg.service.workspace import Workspace

    phantoms = write_phantom_cohort(tmp_path / "p3", 3, seed=0, n_classes=2, shape_zyx=(32, 32, 32))
    ws = Workspace(tmp_path / "ws")
    for case in phantoms:
        ws.add_case(read_image(case.image), case.case_id, source="test")
    for case in phantoms[:2]:
        ws.add_label(case.case_id, read_image(case.label), max_value=2)
    checks = StructureChecks(ws)
    state, ranges = checks.ranges(3)
    assert checks.computed == 1 and ranges.cases == 2
    volumes = np.array([_label_volumes(p.label) for p in phantoms[:2]])
    assert ranges.classes[1].volume_ml_max == pytest.approx(volumes[:, 1].max())
    assert checks.ranges(3) == (state, ranges) and checks.computed == 1  # same labels: cached
    ws.add_label(phantoms[2].case_id, read_image(phantoms[2].label), kind="draft", max_value=2)
    assert checks.ranges(3)[0] == state and checks.computed == 1  # a draft is not a label of the reference
    ws.add_label(phantoms[2].case_id, read_image(phantoms[2].label), max_value=2)
    new_state, new_ranges = checks.ranges(3)
    assert new_state != state and new_ranges.cases == 3 and checks.computed == 2
    ws.delete_case(phantoms[0].case_id)
    assert checks.ranges(3)[1].cases == 2 and checks.computed == 3


def test_prediction_stored_before_qa_is_measured_from_its_files(tmp_path: Path) -> None:
    """A workspace's older predictions have no stored QA: it is measured from their label maps."""
    from reciprocalseg.data.io import read_image
    from reciprocalseg.service.quality import StructureChecks
    from reciprocalseg.service.workspace import Workspace

    phantoms = write_phantom_cohort(tmp_path / "p3", 2, seed=1, n_classes=2, shape_zyx=(32, 32, 32))
    ws = Workspace(tmp_path / "ws", n_classes=3)
    for case in phantoms:
        ws.add_case(read_image(case.image), case.case_id, source="test")
    ws.add_label(phantoms[0].case_id, read_image(phantoms[0].label), max_value=2)
    # As an older service stored it: maps and score, no QA fields.
    teacher, student = read_image(phantoms[1].label), read_image(phantoms[0].label)
    entry = ws.store_prediction(phantoms[1].case_id, 1, teacher, student, teacher, 0.5)
    assert "qa" not in entry
    rows, ranges = StructureChecks(ws).rows(phantoms[1].case_id, entry)
    a, b = sitk.GetArrayFromImage(teacher), sitk.GetArrayFromImage(student)
    assert ranges.cases == 1 and len(rows) == 4
    for row in rows:
        mine = (a if row.model == "teacher" else b) == row.label
        assert row.volume_ml == pytest.approx(np.count_nonzero(mine) * VOXEL_ML)
        ta, sb = a == row.label, b == row.label
        assert row.disagreement == pytest.approx(1 - np.count_nonzero(ta & sb) / np.count_nonzero(ta | sb))


def test_service_starts_without_torch_or_scipy() -> None:
    """The live model and QA load torch and scipy on first use: the service's start-up (which a
    restart after a crash, and Slicer, wait for) does not pay for them."""
    import subprocess
    import sys

    code = (
        "import sys, reciprocalseg.service.app, reciprocalseg.service.core\n"
        "print(sorted(m for m in ('torch', 'scipy.ndimage') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
