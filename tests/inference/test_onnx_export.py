"""`reciprocalseg export-onnx`: the exported networks, run by onnxruntime through the plain-numpy
sliding window of examples/onnx_predict.py (no reciprocalseg import), give our own inference's
probabilities and labels on real files: phantom cases, and a left-atrium scan when present."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("onnx", reason="the ONNX export needs the onnx package (test extras)")
pytest.importorskip("onnxruntime", reason="running the export needs onnxruntime (test extras)")

from reciprocalseg.config import make_config  # noqa: E402
from reciprocalseg.data.io import Case, read_image  # noqa: E402
from reciprocalseg.data.phantom import write_phantom_cohort  # noqa: E402
from reciprocalseg.evaluation.metrics import dice  # noqa: E402
from reciprocalseg.inference.sliding_window import load_model, predict_image  # noqa: E402
from reciprocalseg.training.runner import train  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "ReciprocalSeg"), "OMP_NUM_THREADS": "1"}


def _example():
    spec = importlib.util.spec_from_file_location("onnx_predict", REPO / "examples" / "onnx_predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(root: Path, cases: list[Case], **overrides) -> Path:
    config = make_config(
        "demo",
        n_classes=3,
        reciprocal_iterations=2,
        supervised_iterations=2,
        n_filters=4,
        device="cpu",
        **overrides,
    )
    unlabeled = [Case(c.case_id, c.image) for c in cases[2:4]]
    return train(config, cases[:2], unlabeled, root).student.parent


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("onnx")
    return root, write_phantom_cohort(root / "data", 6, seed=9, n_classes=2, shape_zyx=(24, 24, 24))


def _export(run: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reciprocalseg", "export-onnx", "--run", str(run), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


def _compare(export_dir: Path, run: Path, model: str, image, ours_image: sitk.Image | None = None) -> None:
    """onnxruntime + the example's numpy sliding window against `predict_image`, on the scan's grid
    (`image`: what the example gets, a scan or a list of channels; `ours_image`: what we get)."""
    example = _example()
    ours_image = image if ours_image is None else ours_image
    ours = predict_image(load_model(run / f"{model}.pt", "cpu"), ours_image, return_probabilities=True)
    probs = example.predict_probabilities(export_dir / "metadata.json", model, image)
    assert probs.shape == ours.probabilities.shape
    assert np.max(np.abs(probs - ours.probabilities)) < 1e-4
    labels = example.to_label_image(probs, image)
    image = ours_image
    assert labels.GetSize() == image.GetSize() and labels.GetOrigin() == image.GetOrigin()
    theirs, expected = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(ours.labels)
    assert float(np.mean(theirs == expected)) > 0.999
    for c in range(1, 3):
        if (expected == c).any():
            assert dice(theirs == c, expected == c) > 0.99


@pytest.fixture(scope="module")
def run32(cohort) -> Path:
    """A tiny run whose 32^3 patch is larger than the 24^3 phantoms (padding) and tiles an LA scan."""
    root, cases = cohort
    return _train(root / "run32", cases, patch_size=(32, 32, 32))


def test_export_runs_without_our_package_and_agrees_with_our_inference(cohort, run32, tmp_path: Path) -> None:
    _, cases = cohort
    run = run32
    out = tmp_path / "export"
    res = _export(run, out, "--class-names", "organ", "neighbour")
    assert res.returncode == 0, res.stderr
    assert "max |difference|" in res.stdout
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["classes"] == [
        {"value": 0, "name": "background"},
        {"value": 1, "name": "organ"},
        {"value": 2, "name": "neighbour"},
    ]
    assert meta["patch_size_xyz"] == [32, 32, 32] and meta["sliding_window"]["overlap"] == 0.5
    assert meta["intensity"]["method"] == "zscore"
    assert meta["spacing"]["training_median_mm_xyz"] == [1.0, 1.0, 1.5]

    import onnx

    proto = onnx.load(str(out / "student.onnx"))
    onnx.checker.check_model(proto)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["reciprocalseg"])["classes"] == meta["classes"]
    for case in cases[4:]:
        for model in ("teacher", "student"):
            _compare(out, run, model, read_image(case.image))

    # The README's command line, in a process that never imports reciprocalseg.
    seg = tmp_path / "seg.nrrd"
    script = (
        "import runpy, sys\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert not [m for m in sys.modules if m.startswith('reciprocalseg')], 'imported reciprocalseg'\n"
    )
    args = [str(REPO / "examples" / "onnx_predict.py"), str(out / "metadata.json"), "student"]
    res = subprocess.run(
        [sys.executable, "-c", script, *args, str(cases[4].image), str(seg)],
        capture_output=True,
        text=True,
        env={k: v for k, v in ENV.items() if k != "PYTHONPATH"},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    ours = predict_image(load_model(run / "student.pt", "cpu"), read_image(cases[4].image)).labels
    assert np.mean(sitk.GetArrayFromImage(sitk.ReadImage(str(seg))) == sitk.GetArrayFromImage(ours)) > 0.999


def test_export_with_a_target_spacing_resamples_as_our_inference(cohort, tmp_path: Path) -> None:
    root, cases = cohort
    run = _train(root / "run_spacing", cases, patch_size=(16, 16, 16), target_spacing=(1.0, 1.0, 1.0))
    out = tmp_path / "export"
    res = _export(run, out, "--model", "student")
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["spacing"]["target_mm_xyz"] == [1.0, 1.0, 1.0] and set(meta["models"]) == {"student"}
    _compare(out, run, "student", read_image(cases[5].image))


def test_export_on_a_left_atrium_scan(run32: Path, la_dir: Path, tmp_path: Path) -> None:
    run = run32
    out = tmp_path / "export"
    assert _export(run, out, "--model", "student").returncode == 0
    scan = sorted(la_dir.glob("*_image.nrrd"))[0]
    _compare(out, run, "student", read_image(scan))


def test_export_errors_are_clear(run32: Path, tmp_path: Path) -> None:
    res = _export(tmp_path / "no_run", tmp_path / "x")
    assert res.returncode == 1 and "no model file" in res.stderr
    res = _export(run32, tmp_path / "y", "--class-names", "just-one")
    assert res.returncode == 1 and "2 foreground classes" in res.stderr


def test_the_example_says_how_to_call_it_and_names_the_models(tmp_path: Path) -> None:
    example = str(REPO / "examples" / "onnx_predict.py")
    res = subprocess.run([sys.executable, example], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "onnx_predict.py EXPORT_DIR/metadata.json" in res.stderr, res.stderr
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps({"models": {"teacher": "teacher.onnx", "student": "student.onnx"}}))
    res = subprocess.run(
        [sys.executable, example, str(meta), "studnt", "scan.nrrd", "seg.nrrd"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "'studnt'" in res.stderr and "teacher, student" in res.stderr


def test_a_two_channel_model_exports_and_runs_in_onnxruntime(tmp_path: Path) -> None:
    """Issue 24: input N x 2 x ..., channel names and each channel's normalisation in the metadata; the
    example takes one file per channel (or a 4D file) and gives our inference's probabilities."""
    from reciprocalseg.config import with_channels
    from reciprocalseg.data.channels import read_case_image
    from reciprocalseg.data.phantom_channels import write_channel_phantom_cohort

    cases = write_channel_phantom_cohort(tmp_path / "data", 5, seed=2, shape_zyx=(24, 24, 24))
    config = make_config(
        "demo",
        patch_size=(16, 16, 16),
        reciprocal_iterations=2,
        supervised_iterations=2,
        n_filters=4,
        device="cpu",
    )
    config = with_channels(config, ["T2", "ADC"]).replace(
        channels=(
            {"name": "T2", "intensity": "zscore"},
            {"name": "ADC", "intensity": "ct", "ct_window": [0, 200]},
        )
    )
    run = train(config, cases[:2], [c.without_label() for c in cases[2:4]], tmp_path / "run").student.parent
    out = tmp_path / "export"
    res = _export(run, out)
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["input"]["shape"] == ["N", 2, 16, 16, 16]
    assert [(c["name"], c["intensity"]["method"]) for c in meta["channels"]] == [
        ("T2", "zscore"),
        ("ADC", "ct_window"),
    ]
    assert meta["channels"][1]["intensity"]["window"] == [0, 200]

    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1] == 2
    (probs,) = session.run(None, {"image": np.zeros((3, 2, 16, 16, 16), np.float32)})
    assert probs.shape == (3, 2, 16, 16, 16)

    case = cases[4]
    channels = [read_image(p) for p in case.channels]
    for model in ("teacher", "student"):
        _compare(out, run, model, channels, read_case_image(case))

    # The example from the command line: one file per channel, then one 4D file; no reciprocalseg import.
    four_d = tmp_path / "case_4d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(channels), str(four_d))
    ours = predict_image(load_model(run / "student.pt", "cpu"), read_case_image(case)).labels
    for i, scans in enumerate([[str(p) for p in case.channels], [str(four_d)]]):
        seg = tmp_path / f"seg{i}.nii.gz"
        res = subprocess.run(
            [
                sys.executable,
                str(REPO / "examples" / "onnx_predict.py"),
                str(out / "metadata.json"),
                "student",
            ]
            + scans
            + [str(seg)],
            capture_output=True,
            text=True,
            env={k: v for k, v in ENV.items() if k != "PYTHONPATH"},
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        assert (
            np.mean(sitk.GetArrayFromImage(sitk.ReadImage(str(seg))) == sitk.GetArrayFromImage(ours)) > 0.999
        )
    res = subprocess.run(
        [sys.executable, str(REPO / "examples" / "onnx_predict.py"), str(out / "metadata.json"), "student"]
        + [str(case.channels[0]), str(tmp_path / "seg_bad.nii.gz")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "takes 2 channel(s) (T2, ADC), in that order; got 1" in res.stderr
