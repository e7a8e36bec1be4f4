"""Batch adds are all-or-clear (issue 26, item 4), on real MRML and a real service.

One bad volume in the middle of *Add all loaded* (NaN voxels): the cases before and after it are
added and tagged in the scene, the bad one is named by its node name with the service's reason,
and a retry adds no duplicate. The old code stopped at the bad volume with the name of a transfer
file (``0001.nrrd``), left the cases before it untagged, and a retry added them again as ``_2``.
The same for folders.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from mrml_helpers import add_volume, blob_image, oblique_ijk_to_ras

SHAPE = (8, 9, 10)


def case_ids(client) -> list:
    return sorted(c.id for c in client.list_cases())


def test_add_all_with_a_bad_volume_in_the_middle(two_class_service, loop_factory):
    from ReciprocalSegLib.batch import BatchAddError
    from ReciprocalSegLib.scene_cases import ATTR_CASE_ID
    from slicer.util import arrayFromVolume, arrayFromVolumeModified

    loop = loop_factory(two_class_service)
    scene = loop.logics.scene
    image, _ = blob_image(shape=SHAPE, seed=31)
    bad_image = image.copy()
    bad_image[2, 3, 4] = np.nan
    first = add_volume(scene, "batch first", image, oblique_ijk_to_ras())
    bad = add_volume(scene, "Bad CT (NaN)", bad_image, oblique_ijk_to_ras())
    last = add_volume(scene, "batch last", image, oblique_ijk_to_ras())
    before = case_ids(two_class_service.client)

    with pytest.raises(BatchAddError) as failure:
        loop.add_all_volumes()
    message = str(failure.value)
    assert "Bad CT (NaN)" in message and "NaN" in message.split("Bad CT (NaN)", 1)[1]
    assert ".nrrd" not in message  # the volume is named, not a transfer file
    assert failure.value.result.added == ["batch_first", "batch_last"]
    assert (
        first.GetAttribute(ATTR_CASE_ID) == "batch_first" and last.GetAttribute(ATTR_CASE_ID) == "batch_last"
    )
    assert bad.GetAttribute(ATTR_CASE_ID) is None
    after = case_ids(two_class_service.client)
    assert sorted(set(after) - set(before)) == ["batch_first", "batch_last"]

    with pytest.raises(BatchAddError, match="Bad CT"):  # a retry: only the bad one is tried again
        loop.add_all_volumes()
    assert case_ids(two_class_service.client) == after  # no duplicate

    arrayFromVolume(bad)[2, 3, 4] = 0.0  # fixed
    arrayFromVolumeModified(bad)
    added, skipped = loop.add_all_volumes()
    assert (added, skipped) == (["Bad_CT_NaN"], [])
    assert sorted(set(case_ids(two_class_service.client)) - set(after)) == ["Bad_CT_NaN"]
    assert loop.add_all_volumes() == ([], [])


def test_add_folder_with_a_bad_file_in_the_middle(two_class_service, loop_factory, tmp_path):
    loop = loop_factory(two_class_service)
    folder = tmp_path / "folder"
    folder.mkdir()
    image, mask = blob_image(shape=SHAPE, seed=32)
    bad_image = image.copy()
    bad_image[1, 1, 1] = np.inf
    for name, array in (("fold_a", image), ("fold_b_bad", bad_image), ("fold_c", image)):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / f"{name}.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(folder / "fold_a_label.nrrd"))
    before = case_ids(two_class_service.client)

    result = loop.add_folder(folder)
    assert result.added == ["fold_a", "fold_c"]
    assert [name for name, _ in result.failed] == ["fold_b_bad.nrrd"]
    assert "infinite" in result.failed[0][1] or "NaN" in result.failed[0][1]
    assert two_class_service.client.get_case("fold_a").label_version == 1
    after = case_ids(two_class_service.client)
    assert sorted(set(after) - set(before)) == ["fold_a", "fold_c"]

    again = loop.add_folder(folder)  # a retry adds no duplicate and keeps the label
    assert (again.added, again.existing) == ([], ["fold_a", "fold_c"])
    assert [name for name, _ in again.failed] == ["fold_b_bad.nrrd"]
    assert case_ids(two_class_service.client) == after
    assert two_class_service.client.get_case("fold_a").label_version == 1
    assert "1 failed: fold_b_bad.nrrd" in again.message()


def test_a_free_case_id_differs_beyond_letter_case(two_class_service, loop_factory, tmp_path):
    """The service's case IDs are unique without regard to case: a volume named like an existing
    case in other letters gets a free variant, never a refusal."""
    loop = loop_factory(two_class_service)
    image, _ = blob_image(shape=SHAPE, seed=33)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / "Mixed_Case.nrrd"))
    two_class_service.client.add_case(tmp_path / "Mixed_Case.nrrd", case_id="Mixed_Case")
    volume = add_volume(loop.logics.scene, "mixed_case", image, oblique_ijk_to_ras())
    assert loop.add_volume(volume) == "mixed_case_2"
