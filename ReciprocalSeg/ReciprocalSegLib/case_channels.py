"""Cases with several images in the scene (issue 24): built from loaded volumes, shown as layers.

A case with several channels (T2 and ADC, CT and PET) is sent from volumes the user picks, in
order, with a name each. In the scene channel 0 is the case volume (role ``image``): the background
of the slice views and the grid its label and predictions lie on. Channel k >= 1 is a volume with
role ``channel<k>`` and its name in the ``ReciprocalSeg.Channel`` attribute. `show_channel` puts one
of them in the slice views' foreground layer, half transparent, so the user can look through the
channels; channel 0 stays the background. (vtkMRMLSliceCompositeNode's Set{Back,Fore}groundVolumeID
and SetForegroundOpacity: Libs/MRML/Core/vtkMRMLSliceCompositeNode.h, every Slicer 5.x.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from .scene_cases import ATTR_CASE_ID, ATTR_ROLE, ROLE_IMAGE

ATTR_CHANNEL = "ReciprocalSeg.Channel"
# As the service's CHANNEL_NAME_PATTERN (service/schemas.py): T2, ADC, CT, PET, T1c, FLAIR ...
CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _+.-]{0,31}$")
MAX_CHANNELS = 16
LAYER_OPACITY = 0.5
LAYER_NONE = "(none)"


def channel_role(index: int) -> str:
    """The role of channel ``index`` of a case (channel 0 is the case volume itself)."""
    return ROLE_IMAGE if index == 0 else f"channel{index}"


def check_channel_choice(volumes: Sequence[Any], names: Sequence[str]) -> list[str]:
    """The names, stripped, after checking the user's choice; ValueError saying what to change."""
    names = [str(n).strip() for n in names]
    if len(volumes) < 2:
        raise ValueError("A case with several images needs at least two volumes; pick them in order.")
    if len(volumes) > MAX_CHANNELS:
        raise ValueError(f"{len(volumes)} volumes: a case holds at most {MAX_CHANNELS} channels.")
    if any(v is None for v in volumes):
        raise ValueError("A channel has no volume selected; pick one for each channel.")
    ids = [v.GetID() for v in volumes]
    twice = sorted({v.GetName() for v in volumes if ids.count(v.GetID()) > 1})
    if twice:
        raise ValueError(
            f"{', '.join(twice)} is picked for more than one channel; each channel needs its own volume."
        )
    if len(names) != len(volumes):
        raise ValueError(
            f"{len(volumes)} volumes but {len(names)} names; name every channel (such as T2, ADC)."
        )
    bad = [n for n in names if not CHANNEL_NAME.match(n)]
    if bad:
        raise ValueError(
            f"Channel name {bad[0]!r}: use letters, digits, spaces and _+.- "
            "(at most 32 characters, such as T2)."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"Channel names must differ: {', '.join(names)}.")
    return names


def tag_channel(node: Any, case_id: str, index: int, name: str) -> None:
    node.SetAttribute(ATTR_CASE_ID, case_id)
    node.SetAttribute(ATTR_ROLE, channel_role(index))
    node.SetAttribute(ATTR_CHANNEL, name)


def channel_layers(scene: Any, case_id: str) -> list[tuple[int, str, Any]]:
    """(index, name, volume) of a case's channels in the scene, channel 0 first."""
    found = []
    for node in _volumes(scene):
        if node.GetAttribute(ATTR_CASE_ID) != case_id:
            continue
        role = node.GetAttribute(ATTR_ROLE) or ""
        if role == ROLE_IMAGE or re.fullmatch(r"channel\d+", role):
            index = 0 if role == ROLE_IMAGE else int(role[len("channel") :])
            found.append((index, node.GetAttribute(ATTR_CHANNEL) or node.GetName(), node))
    return sorted(found, key=lambda item: item[0])


def show_channel(scene: Any, background: Any, layer: Any | None, opacity: float = LAYER_OPACITY) -> None:
    """Every slice view: `background` (channel 0) behind, `layer` (another channel, or None for
    none) in front at `opacity`."""
    collection = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(collection.GetNumberOfItems()):
        composite = collection.GetItemAsObject(i)
        composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        composite.SetForegroundVolumeID(layer.GetID() if layer is not None else None)
        composite.SetForegroundOpacity(opacity if layer is not None else 0.0)


def choice_from_rows(rows: Sequence[tuple[Any, str]]) -> tuple[list[str], list[str]]:
    """(node IDs, names) in channel order from the dialog's rows of (volume or None, name typed);
    rows left empty (no volume, no name) are skipped, the rest checked (`check_channel_choice`)."""
    used = [
        (volume, str(name or "")) for volume, name in rows if volume is not None or str(name or "").strip()
    ]
    volumes = [volume for volume, _ in used]
    names = check_channel_choice(volumes, [name for _, name in used])
    return [v.GetID() for v in volumes], names


def suggest_channel_name(volume_name: str, index: int, taken: Sequence[str] = ()) -> str:
    """A name for the volume picked as channel `index`: its name's last word ("prostate T2" -> T2)
    when that is a valid name not taken yet, else ``channel<index>``."""
    words = str(volume_name or "").split()
    last = words[-1][:32] if words else ""
    taken_folded = {t.casefold() for t in taken}
    if CHANNEL_NAME.match(last) and last.casefold() not in taken_folded:
        return last
    return f"channel{index}"


def layer_choices(scene: Any, case_id: str) -> list[str]:
    """The layer selector's items: ``LAYER_NONE`` (channel 0 alone), then ``<k>: <name>`` for
    channels 1.. of the case in the scene; item k shows channel k (`show_layer`)."""
    return [LAYER_NONE] + [f"{index}: {name}" for index, name, _ in channel_layers(scene, case_id)[1:]]


def show_layer(scene: Any, case_id: str, choice: int) -> Any | None:
    """Item `choice` of `layer_choices`: channel 0 behind, that channel in front (0: none); returns
    the layer's volume. ValueError when the case has no volume in the scene."""
    layers = channel_layers(scene, case_id)
    if not layers or layers[0][0] != 0:
        raise ValueError(f"{case_id} has no volume in the scene: select the case again.")
    layer = layers[choice][2] if 1 <= choice < len(layers) else None
    show_channel(scene, layers[0][2], layer)
    return layer


def _volumes(scene: Any) -> Iterator[Any]:
    collection = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    for i in range(collection.GetNumberOfItems()):
        yield collection.GetItemAsObject(i)
