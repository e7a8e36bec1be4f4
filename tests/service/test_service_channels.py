"""Cases with several images through a real service on loopback and the Python client (issue 24).

Two-channel phantoms (T2, ADC) added as separate files (upload and register) and as a 4D file; the
case list shows the channels; every channel can be downloaded; a case with other channels or a
channel off channel 0's grid is refused by name; a round trains on both channels (plan per
channel, model files with two input channels) and predicts on channel 0's grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from service_helpers import TRAIN_FAST, start_service

from reciprocalseg.client import ServiceError
from reciprocalseg.data.io import read_image, write_image
from reciprocalseg.data.phantom_channels import write_channel_phantom_cohort
from reciprocalseg.training.checkpoint import load_model_file

pytestmark = pytest.mark.slow


@pytest.fixture
def two_channel(tmp_path: Path):
    cases = write_channel_phantom_cohort(tmp_path / "data", 5, seed=7, shape_zyx=(32, 32, 32))
    run = start_service(tmp_path / "ws", device="cpu", extra_args=["--register-root", str(tmp_path / "data")])
    try:
        yield run, cases, tmp_path
    finally:
        run.launcher.stop()


def test_a_two_channel_case_from_upload_to_prediction(two_channel) -> None:
    run, cases, tmp = two_channel
    c = run.client
    names = ["T2", "ADC"]
    first = c.add_case(cases[0].channels[0], channels=[cases[0].channels[1]], channel_names=names)
    assert first.id == "chan_000" and first.channels == names
    # registered from the server's disk: the workspace's names are the default
    assert c.add_case(cases[1].channels[0], channels=[cases[1].channels[1]], upload=False).channels == names
    # one 4D file holding both channels
    four_d = tmp / "four_d" / "chan_002.nii.gz"
    write_image(sitk.JoinSeries([read_image(p) for p in cases[2].channels]), four_d)
    assert c.add_case(four_d).channels == names
    for case in cases[3:]:
        c.add_case(case.channels[0], channels=[case.channels[1]])
    assert [x.channels for x in c.list_cases()] == [names] * 5

    # each channel comes back as it went in; channel 0 is the default
    for k in range(2):
        got = sitk.ReadImage(str(c.get_image("chan_002", tmp / f"ch{k}.nrrd", channel=k)))
        want = read_image(cases[2].channels[k])
        np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(want))
        assert got.GetOrigin() == pytest.approx(want.GetOrigin())
    default = sitk.ReadImage(str(c.get_image("chan_002", tmp / "default.nrrd")))
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(default), sitk.GetArrayFromImage(read_image(cases[2].image))
    )
    with pytest.raises(ServiceError) as err:
        c.get_image("chan_002", tmp / "none.nrrd", channel=2)
    assert err.value.status_code == 404 and "has 2 channel(s)" in err.value.message

    # labels on channel 0's grid, a round on both channels
    for case in cases[:2]:
        c.put_label(case.case_id, case.label)
    status = c.start_training(**TRAIN_FAST, warm_start=False)
    assert status.n_labeled == 2 and status.n_unlabeled == 3
    status = c.wait_for_training(poll=0.5, timeout=900)
    assert status.state == "completed", status.message
    run_dir = run.workspace / "runs" / status.run_id
    config = json.loads((run_dir / "config.json").read_text())
    assert [ch["name"] for ch in config["channels"]] == names
    meta = load_model_file(run_dir / "teacher.pt")["meta"]
    assert meta["in_channels"] == 2 and meta["channel_names"] == names
    manifest = json.loads((run_dir / "cases.json").read_text())
    assert all(len(entry["channels"]) == 2 for entry in manifest["labeled"] + manifest["unlabeled"])

    pred = c.predict("chan_003", out_dir=tmp / "pred")
    teacher = sitk.ReadImage(str(pred.teacher))
    scan = read_image(cases[3].image)
    assert teacher.GetSize() == scan.GetSize() and teacher.GetOrigin() == pytest.approx(scan.GetOrigin())


def test_cases_with_other_channels_or_off_grid_channels_are_refused(two_channel) -> None:
    run, cases, tmp = two_channel
    c = run.client
    c.add_case(cases[0].channels[0], channels=[cases[0].channels[1]], channel_names=["T2", "ADC"])
    with pytest.raises(ServiceError) as err:
        c.add_case(cases[1].channels[0])
    assert err.value.status_code == 422
    assert (
        "case 'chan_001' has channels (one image) but the workspace's cases have (T2, ADC)"
        in err.value.message
    )
    with pytest.raises(ServiceError) as err:
        c.add_case(cases[1].channels[0], channels=[cases[1].channels[1]], channel_names=["ADC", "T2"])
    assert err.value.status_code == 422 and "same channels, in the same order" in err.value.message

    shifted = read_image(cases[2].channels[1])
    shifted.SetOrigin([v + 4.0 for v in shifted.GetOrigin()])
    moved = tmp / "moved" / "chan_002_0001.nrrd"
    write_image(shifted, moved)
    with pytest.raises(ServiceError) as err:
        c.add_case(cases[2].channels[0], channels=[moved])
    assert err.value.status_code == 422
    assert (
        "case 'chan_002': channel 1 (ADC) is not on channel 0 (T2)'s grid: origin differs"
        in err.value.message
    )
    assert [x.id for x in c.list_cases()] == ["chan_000"]  # nothing of a refused case was kept
    # resampled onto channel 0's grid when asked, with the interpolation said
    info = c.add_case(cases[2].channels[0], channels=[moved], resample_channels="linear")
    assert info.channels == ["T2", "ADC"]
