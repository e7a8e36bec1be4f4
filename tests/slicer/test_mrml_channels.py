"""A case of several loaded volumes on Slicer's real MRML classes (slicer-core) and a real service
(issue 24): picked in order with names, sent as one case, shown with channel 0 as the background and
the others as layers; downloaded again into an empty scene voxel for voxel on an oblique grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mrml_helpers import add_volume, blob_image, oblique_ijk_to_ras
from service_helpers import start_service

from reciprocalseg.client import ServiceError


@pytest.fixture
def service(tmp_path: Path):
    run = start_service(tmp_path / "ws", device="cpu")
    try:
        yield run
    finally:
        run.launcher.stop()


def _volumes(scene, grid=None):
    t2, _ = blob_image(seed=1)
    adc, _ = blob_image(seed=2)
    grid = oblique_ijk_to_ras() if grid is None else grid
    return add_volume(scene, "prostate T2", t2, grid), add_volume(
        scene, "prostate ADC", adc, oblique_ijk_to_ras()
    )


def _ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_a_case_from_two_loaded_volumes_round_trips_with_its_channel_layers(
    service, loop_factory, logics
) -> None:
    from ReciprocalSegLib.case_channels import channel_layers
    from ReciprocalSegLib.case_table import COLUMN_CHANNELS, case_row
    from slicer.util import arrayFromVolume

    scene = logics.scene
    view = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")  # what a slice view of the application has
    loop = loop_factory(service)
    t2, adc = _volumes(scene)
    case_id = loop.add_volumes_as_case([t2, adc], ["T2", "ADC"])
    assert case_id == "prostate_T2"
    info = service.client.get_case(case_id)
    assert info.channels == ["T2", "ADC"] and case_row(info)[COLUMN_CHANNELS] == "2"
    assert [(i, name, node.GetID()) for i, name, node in channel_layers(scene, case_id)] == [
        (0, "T2", t2.GetID()),
        (1, "ADC", adc.GetID()),
    ]
    assert view.GetBackgroundVolumeID() == t2.GetID() and view.GetForegroundVolumeID() == adc.GetID()
    assert view.GetForegroundOpacity() == pytest.approx(0.5)

    # Into an empty scene (another session): the case volume is channel 0, the ADC a layer over it.
    expected = {name: arrayFromVolume(node).copy() for name, node in (("T2", t2), ("ADC", adc))}
    for node in (t2, adc):
        scene.RemoveNode(node)
    volume, _ = loop.show_case(case_id)
    layers = channel_layers(scene, case_id)
    assert [(i, name) for i, name, _ in layers] == [(0, "T2"), (1, "ADC")]
    assert layers[0][2].GetID() == volume.GetID()
    for _, name, node in layers:
        np.testing.assert_allclose(arrayFromVolume(node), expected[name], rtol=1e-6)
        np.testing.assert_allclose(_ijk_to_ras(node), oblique_ijk_to_ras(), atol=1e-4)
    assert (
        view.GetBackgroundVolumeID() == volume.GetID()
        and view.GetForegroundVolumeID() == layers[1][2].GetID()
    )


def test_channels_off_channel_0s_grid_and_bad_choices_are_refused(service, loop_factory, logics) -> None:
    scene = logics.scene
    loop = loop_factory(service)
    shifted = oblique_ijk_to_ras(origin=(-18.0, 15.0, 30.0))
    t2, adc = _volumes(scene, grid=shifted)
    with pytest.raises(ServiceError) as err:
        loop.add_volumes_as_case([t2, adc], ["T2", "ADC"])
    assert err.value.status_code == 422
    assert "channel 1 (ADC) is not on channel 0 (T2)'s grid: origin differs" in err.value.message
    assert service.client.list_cases() == []
    with pytest.raises(ValueError, match="picked for more than one channel"):
        loop.add_volumes_as_case([t2, t2], ["T2", "ADC"])
    with pytest.raises(ValueError, match="at least two volumes"):
        loop.add_volumes_as_case([t2], ["T2"])
    with pytest.raises(ValueError, match="Channel names must differ"):
        loop.add_volumes_as_case([t2, adc], ["T2", "T2"])


def test_the_panels_dialog_rows_and_layer_selector_on_real_nodes(logics) -> None:
    """What the panel's *Case from volumes...* dialog and *Layer* selector decide, on real MRML
    nodes: empty rows skipped, names suggested and checked, layers listed and shown in every view."""
    from ReciprocalSegLib.case_channels import (
        LAYER_NONE,
        choice_from_rows,
        layer_choices,
        show_layer,
        suggest_channel_name,
        tag_channel,
    )

    scene = logics.scene
    views = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]  # Red, Yellow, Green
    t2, adc = _volumes(scene)
    dwi = add_volume(scene, "prostate DWI b800", blob_image(seed=3)[0], oblique_ijk_to_ras())

    assert suggest_channel_name("prostate T2", 0) == "T2"
    assert suggest_channel_name("prostate T2", 1, taken=["t2"]) == "channel1"  # the service folds case
    assert suggest_channel_name("", 2) == "channel2"
    assert suggest_channel_name("scan (1)", 1) == "channel1"  # "(1)" is no valid channel name

    rows = [(t2, " T2 "), (None, ""), (adc, "ADC"), (None, "  ")]
    assert choice_from_rows(rows) == ([t2.GetID(), adc.GetID()], ["T2", "ADC"])
    with pytest.raises(ValueError, match="has no volume selected"):
        choice_from_rows([(t2, "T2"), (None, "ADC")])  # a name without its volume
    with pytest.raises(ValueError, match="at least two volumes"):
        choice_from_rows([(t2, "T2"), (None, "")])
    with pytest.raises(ValueError, match="Channel name"):
        choice_from_rows([(t2, "T2"), (adc, "A/D")])

    assert layer_choices(scene, "prostate") == [LAYER_NONE]  # nothing tagged: no layers
    for index, (node, name) in enumerate(((t2, "T2"), (adc, "ADC"), (dwi, "DWI"))):
        tag_channel(node, "prostate", index, name)
    assert layer_choices(scene, "prostate") == [LAYER_NONE, "1: ADC", "2: DWI"]
    assert show_layer(scene, "prostate", 2) is dwi
    for view in views:
        assert (view.GetBackgroundVolumeID(), view.GetForegroundVolumeID()) == (t2.GetID(), dwi.GetID())
        assert view.GetForegroundOpacity() == pytest.approx(0.5)
    assert show_layer(scene, "prostate", 0) is None  # (none): channel 0 alone
    for view in views:
        assert (view.GetBackgroundVolumeID(), view.GetForegroundVolumeID()) == (t2.GetID(), None)
    with pytest.raises(ValueError, match="other has no volume in the scene"):
        show_layer(scene, "other", 1)
