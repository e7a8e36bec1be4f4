"""An empty label is asked about, a deleted case's volume is sent again (issue 26, item 5), on
real MRML and a real service.

The old code submitted an empty full label silently (the case became labelled, all background),
and *Add volume* returned a deleted case's ID without sending anything (*Add all* skipped it).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from mrml_helpers import add_volume, blob_image, oblique_ijk_to_ras, service_label

SHAPE = (8, 9, 10)


def new_volume(loop, name: str):
    image, _ = blob_image(shape=SHAPE, seed=41)
    return add_volume(loop.logics.scene, name, image, oblique_ijk_to_ras())


def test_an_empty_full_label_is_asked_about_and_warned_of(two_class_service, loop_factory, tmp_path, caplog):
    from ReciprocalSegLib.tasks import TaskRunner

    loop = loop_factory(two_class_service)
    case_id = loop.add_volume(new_volume(loop, "empty_label"))
    volume, label = loop.show_case(case_id)
    client = two_class_service.client

    # The panel: the question is asked on the GUI thread (the polling one), before any upload.
    asked, runner, out = [], TaskRunner(), {}

    def decline(question):
        asked.append(question)
        return False

    runner.submit(
        "submit", lambda c: loop.submit(case_id, False, c, confirm=decline), lambda r: out.update(result=r)
    )
    assert runner.wait(timeout=120)
    assert len(asked) == 1 and "all background" in asked[0] and case_id in asked[0]
    assert out["result"].declined and out["result"].version is None
    assert client.get_case(case_id).label_version is None  # declined: nothing uploaded

    with pytest.warns(UserWarning, match="all background"):  # the client's, for a console
        result = loop.submit(case_id, False, confirm=lambda question: True)
    assert result.version is not None and "all background" in result.warning
    np.testing.assert_array_equal(service_label(client, case_id, tmp_path), np.zeros(SHAPE, np.uint8))

    # The console: no question, a warning in the result, the log and Python's warnings.
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="all background"):
        version = loop.submit_segmentation(case_id, label, volume)
    assert version.version == 2 and "all background" in version.warning
    assert any("all background" in r.getMessage() for r in caplog.records)


def test_the_service_and_the_client_warn_of_an_all_background_label(
    two_class_service, loop_factory, tmp_path
):
    """The service's answer carries the warning for a full label with no class voxel (not for a
    label with a class, nor for background scribbles); the client warns (console) and returns it."""
    import SimpleITK as sitk

    loop = loop_factory(two_class_service)
    case_id = loop.add_volume(new_volume(loop, "client_warning"))
    client = two_class_service.client
    image = sitk.ReadImage(str(client.get_image(case_id, str(tmp_path / "image.nrrd"))))

    def upload(array):
        label = sitk.GetImageFromArray(array.astype(np.uint8))
        label.CopyInformation(image)
        sitk.WriteImage(label, str(tmp_path / "label.nrrd"))
        return client.put_label(case_id, tmp_path / "label.nrrd")

    with pytest.warns(UserWarning, match="all background"):
        version = upload(np.zeros(SHAPE))
    assert "no voxel of any class" in version.warning
    painted = np.zeros(SHAPE)
    painted[2:4, 2:5, 3:6] = 1
    strokes = np.full(SHAPE, 255)
    strokes[0] = 0  # background scribbles only: a partial label, no warning
    for array in (painted, strokes):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert upload(array).warning is None
    assert client.label_history(case_id).versions[0].warning is None  # said once, not stored


def test_a_deleted_cases_volume_is_sent_again(two_class_service, loop_factory):
    from ReciprocalSegLib.scene_cases import ATTR_CASE_ID

    loop = loop_factory(two_class_service)
    client = two_class_service.client
    volume = new_volume(loop, "readd_me")
    case_id = loop.add_volume(volume)
    client.delete_case(case_id)  # deleted by another client: the node is still tagged
    assert volume.GetAttribute(ATTR_CASE_ID) == case_id
    assert loop.add_volume(volume) == case_id
    assert case_id in {c.id for c in client.list_cases()}  # uploaded again

    client.delete_case(case_id)
    assert case_id in loop.add_all_volumes()[0]  # Add all sends it again too
    assert case_id in {c.id for c in client.list_cases()}

    loop.delete_case(case_id)  # deleted from the panel: the volume is no case any more
    assert volume.GetAttribute(ATTR_CASE_ID) is None
    assert loop.add_volume(volume) == case_id
    assert client.get_case(case_id).id == case_id
