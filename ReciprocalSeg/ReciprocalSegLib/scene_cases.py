"""Which scene nodes belong to which service case, where they sit, and which are shown.

Nodes are tied to cases by two attributes (saved with the scene): ``ReciprocalSeg.CaseId`` and
``ReciprocalSeg.Role``. Every node made for a case is placed under the case volume's parent
transform, so that labels and predictions sit on the scan in world space whatever transform the
user put the scan under. Removing a node also removes what it alone owned (display, storage and
colour-table nodes), so that rounds of work leave no orphans in the scene.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .node_data import release_layers

ATTR_CASE_ID = "ReciprocalSeg.CaseId"
ATTR_ROLE = "ReciprocalSeg.Role"
ROLE_IMAGE = "image"
ROLE_LABEL = "label"
ROLE_TEACHER = "teacher"
ROLE_STUDENT = "student"
ROLE_DISAGREEMENT = "disagreement"
ROLE_SCRIBBLES = "scribbles"  # strokes per class and background (scribbles.py)
ROLE_REFINED = "refined"  # a copy of a round's network adapted to the strokes predicted it
DERIVED_ROLES = (ROLE_LABEL, ROLE_TEACHER, ROLE_STUDENT, ROLE_DISAGREEMENT, ROLE_SCRIBBLES, ROLE_REFINED)
CLASS_SEGMENT_ID = re.compile(r"^class_(\d+)$")  # = segment_export.SEGMENT_ID_PATTERN
# Node classes that can carry a case role (subclasses included by GetNodesByClass).
CASE_NODE_CLASSES = ("vtkMRMLVolumeNode", "vtkMRMLSegmentationNode")


def case_id_from_name(name: str | None) -> str:
    """A service case ID (``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``) from a Slicer node name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name or "").strip("._-")
    return (cleaned or "case")[:64]


def _nodes_of_class(scene: Any, class_name: str) -> Iterator[Any]:
    collection = scene.GetNodesByClass(class_name)
    for i in range(collection.GetNumberOfItems()):
        yield collection.GetItemAsObject(i)


class CaseNodes:
    """Find, tag, place, show and remove the nodes of service cases in one scene."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene

    # ------------------------------------------------------------------ lookup

    def tagged(self) -> Iterator[Any]:
        """Every node that carries a case ID."""
        for class_name in CASE_NODE_CLASSES:
            for node in _nodes_of_class(self.scene, class_name):
                if node.GetAttribute(ATTR_CASE_ID):
                    yield node

    def find(self, case_id: str | None, role: str) -> Any:
        """The node holding ``role`` of a case, or None."""
        if case_id is None:
            return None
        for node in self.tagged():
            if node.GetAttribute(ATTR_CASE_ID) == case_id and node.GetAttribute(ATTR_ROLE) == role:
                return node
        return None

    def case_ids(self) -> set:
        return {
            n.GetAttribute(ATTR_CASE_ID) for n in self.tagged() if n.GetAttribute(ATTR_ROLE) == ROLE_IMAGE
        }

    @staticmethod
    def tag(node: Any, case_id: str, role: str) -> None:
        node.SetAttribute(ATTR_CASE_ID, case_id)
        node.SetAttribute(ATTR_ROLE, role)

    @staticmethod
    def untag(node: Any) -> None:
        """The node is no case's any more (its case was deleted): *Add volume* sends it again."""
        if node is not None:
            node.RemoveAttribute(ATTR_CASE_ID)
            node.RemoveAttribute(ATTR_ROLE)

    def class_names(self, case_id: str) -> dict:
        """Class -> name that this case's own nodes give (segments ``class_k``): its label's, and
        for classes its label lacks, its scribbles'. Never another case's."""
        names: dict = {}
        for role in (ROLE_SCRIBBLES, ROLE_LABEL):  # the label's names win
            node = self.find(case_id, role)
            if node is None:
                continue
            segmentation = node.GetSegmentation()
            for i in range(segmentation.GetNumberOfSegments()):
                match = CLASS_SEGMENT_ID.match(segmentation.GetNthSegmentID(i))
                name = segmentation.GetNthSegment(i).GetName()
                if match and name:
                    names[int(match.group(1))] = name
        return names

    @staticmethod
    def place_like(node: Any, volume: Any) -> None:
        """Put ``node`` under the same parent transform as the case volume (or none, like it)."""
        if volume is not None:
            node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())

    # ------------------------------------------------------------------ removal

    def remove(self, node: Any) -> None:
        """Remove a node with the display, storage and colour-table nodes only it refers to."""
        if node is None or node.GetScene() is None:
            return
        owned = []
        for i in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
            display = node.GetNthDisplayNode(i)
            if display is None:
                continue
            owned.append(display)
            color = display.GetColorNode() if hasattr(display, "GetColorNode") else None
            # Colour tables made for one export (the User type) go with it; Slicer's defaults stay.
            if color is not None and color.GetType() == color.User and self._referrers(color) <= 1:
                owned.append(color)
        for i in range(node.GetNumberOfStorageNodes() if hasattr(node, "GetNumberOfStorageNodes") else 0):
            storage = node.GetNthStorageNode(i)
            if storage is not None:
                owned.append(storage)
        if node.IsA("vtkMRMLSegmentationNode"):
            release_layers(node)  # the node's segments go without splitting their shared labelmap
        self.scene.RemoveNode(node)
        for other in owned:
            if other.GetScene() is not None:
                self.scene.RemoveNode(other)

    def _referrers(self, target: Any) -> int:
        """How many display nodes use ``target`` as their colour node."""
        count = 0
        for display in _nodes_of_class(self.scene, "vtkMRMLDisplayNode"):
            if display.GetColorNodeID() == target.GetID():
                count += 1
        return count

    def remove_case(self, case_id: str, roles: tuple = DERIVED_ROLES) -> None:
        for role in roles:
            self.remove(self.find(case_id, role))

    def replace(self, case_id: str, role: str, class_name: str, name: str, volume: Any) -> Any:
        """A new node for ``role`` of a case (the previous one and its dependents removed)."""
        self.remove(self.find(case_id, role))
        node = self.scene.AddNewNodeByClass(class_name, name)
        self.tag(node, case_id, role)
        self.place_like(node, volume)
        return node

    # ------------------------------------------------------------------ display

    def show_only(self, case_id: str) -> None:
        """Show this case's label, predictions and disagreement map; hide every other case's."""
        for node in self.tagged():
            if node.GetAttribute(ATTR_ROLE) == ROLE_IMAGE:
                continue  # the widget decides which volume is in the slice views
            display = node.GetDisplayNode()
            if display is not None:
                display.SetVisibility(node.GetAttribute(ATTR_CASE_ID) == case_id)
