"""The annotation loop on a scene: work functions that run on any thread and do their scene
steps on the GUI thread.

MRML is not thread-safe, a network call can take minutes and reading a large scan seconds. So
each operation that talks to the service is a work function ``op(..., context)``: it downloads,
reads, maps, writes and uploads on the thread it runs on, and asks ``context.on_main(step)`` for
every step that touches the scene, each short (nodes added with data already built, a copy of
what was painted: benchmarks/gui_steps.py measures them). The panel runs them on its task runner
(``tasks.TaskRunner``); with ``tasks.DIRECT``, the default, they run on the calling thread, as the
Python console, scripts and tests call them (``add_volume``, ``show_case``, ``submit_segmentation``,
``predict``). ``NETWORK_METHODS`` lists the methods that wait on the network or a process;
tests/slicer/test_static_gui_thread.py checks that the widget calls them only through its task runner.

Nodes are made from memory, never from a kept file: a Save writes them (Slicer gives a node
without a storage node a default one, qSlicerSaveDataDialog.cxx nodeFileInfo, v5.12.3), so the
module leaves no file behind and none to clean up.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reciprocalseg.common.errors import DataError

from .batch import BatchAddError, BatchResult
from .case_channels import (
    LAYER_NONE,
    check_channel_choice,
    layer_choices,
    show_channel,
    show_layer,
    tag_channel,
)
from .case_content import (
    CaseState,
    LabelContent,
    PredictionContent,
    label_content,
    prediction_content,
    refined_content,
    scan_content,
)
from .learning_curve import LearningCurve
from .node_data import (
    BINARY_LABELMAP,
    PaintedLayers,
    SegmentSpec,
    SegmentsSnapshot,
    add_segments,
    add_volume_node,
    copy_in_steps,
    painted_layers,
    release_layers,
    volume_grid,
)
from .prediction_display import (
    LABEL_COLORS,
    REFINED_COLORS,
    STUDENT_COLORS,
    TEACHER_COLORS,
    show_disagreement,
    show_refined,
    show_student,
    show_teacher,
)
from .scene_cases import (
    ATTR_CASE_ID,
    ATTR_ROLE,
    ROLE_DISAGREEMENT,
    ROLE_IMAGE,
    ROLE_LABEL,
    ROLE_REFINED,
    ROLE_SCRIBBLES,
    ROLE_STUDENT,
    ROLE_TEACHER,
    CaseNodes,
    case_id_from_name,
)
from .scribbles import ScribbleSummary, add_scribble_segments, compose_scribbles, scribble_classes
from .segment_export import compose_full_label, exported_masks, segment_classes, segment_id_for_class
from .slicer_logics import SlicerLogics
from .status_text import model_description
from .submission import EMPTY_LABEL_QUESTION, EMPTY_LABEL_WARNING, SubmitResult
from .tasks import DIRECT
from .volume_files import is_scalar_volume

if TYPE_CHECKING:  # SimpleITK (under reciprocalseg.common.geometry) is imported when first needed
    from reciprocalseg.common.geometry import Geometry

log = logging.getLogger(__name__)

# Attribute of prediction nodes (teacher, student, disagreement): the model that made them.
ATTR_MODEL = "ReciprocalSeg.Model"
NEXT_BY = ("disagreement", "qa")  # the service's /next-case orders

# Methods that wait on the network or a child process: never call them on the GUI thread.
NETWORK_METHODS = frozenset(
    {
        "start_local_service",
        "connect",
        "stop_service",
        "info",
        "list_cases",
        "add_volumes",
        "add_volume",
        "add_all_volumes",
        "add_folder",
        "delete_case_on_service",
        "delete_case",
        "load_case",
        "show_case",
        "case_volume",
        "apply_case",
        "submit",
        "submit_segmentation",
        "submit_scribbles",
        "plan",
        "show_prediction",
        "show_prediction_files",
        "predict",
        "copy_student_to_label",
        "next_case",
        "class_settings",
        "set_class_count",
        "start_training",
        "stop_training",
        "training_status",
        "wait_for_training",
        "refine",
        "accept_refined",
        "overview",
        "auto_retrain_settings",
        "set_auto_retrain",
    }
)


@dataclass
class CaseFiles:
    """A case's image and current label downloaded to files (None: not needed or none on the service)."""

    case_id: str
    image: Path | None = None
    label: Path | None = None
    channels: list = field(default_factory=list)  # (index, name, path) of channels 1.. of a case
    channel_names: list = field(default_factory=list)  # all its channels' names ([] for one image)


@dataclass
class VolumeSnapshot:
    """A copy of a scene volume to upload: its node name, the case it is tagged with (None: none),
    its voxels (k, j, i; copied after) and grid."""

    name: str
    case_id: str | None
    voxels: np.ndarray | None
    grid: Geometry


@dataclass
class Painted:
    """What is painted in a segmentation (its layers, copied in steps after; or, exported through
    Slicer, a snapshot already), each segment's class, the volume's grid."""

    layers: PaintedLayers | None
    snapshot: SegmentsSnapshot | None
    classes: dict
    grid: Geometry

    def copy(self, context: Any) -> SegmentsSnapshot:
        return self.snapshot if self.snapshot is not None else self.layers.copy(context)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    value = getattr(obj, name, None)
    return default if value is None else value


def refined_suffix(name: str) -> str:
    """``from round 3, 2 strokes`` of the service's ``refined from round 3, 2 strokes``."""
    return name[len("refined ") :] if name.startswith("refined ") else name


def _write_label(label: Any, grid: Geometry, path: Path) -> Path:
    """Any thread: a label map (k, j, i) written compressed on ``grid``."""
    import SimpleITK as sitk

    from reciprocalseg.common.geometry import image_from_array

    sitk.WriteImage(image_from_array(label, grid), str(path), True)
    return path


def add_class_segments(segmentation_node: Any, names: Sequence[str], colors: Sequence) -> None:
    """Main thread: empty segments ``class_k`` named ``names[k-1]`` (a label to paint)."""
    segmentation = segmentation_node.GetSegmentation()
    for k, name in enumerate(names, start=1):
        segmentation.AddEmptySegment(segment_id_for_class(k), name, colors[(k - 1) % len(colors)])


def exported_snapshot(segmentation: Any, classes: dict, volume: Any, nodes: CaseNodes) -> SegmentsSnapshot:
    """Main thread: the segments exported through Slicer onto the volume's grid (any transform,
    linear or not; slow on a large scan), as a snapshot with one layer per segment."""
    grid = volume_grid(volume)
    snapshot = SegmentsSnapshot()
    for segment_id, _k, mask in exported_masks(segmentation, classes, volume, nodes):
        snapshot.segments.append((segment_id, segment_id, len(snapshot.layers), 1))
        snapshot.layers.append((mask.astype(np.uint8), grid))
    return snapshot


class ReciprocalSegLoop:
    """The loop for one scene and one service connection.

    Args:
        logics: the scene and module logics (``SlicerLogics.from_application()`` in Slicer,
            ``SlicerLogics.standalone()`` with slicer-core); looked up on first use when None.
        scratch_dir: parent of the short-lived download/upload folders (the system temp if None).
    """

    def __init__(self, logics: SlicerLogics | None = None, scratch_dir: Path | None = None) -> None:
        self._logics = logics
        self.scratch_dir = Path(scratch_dir) if scratch_dir is not None else None
        self.client: Any = None
        self.service: Any = None
        self.url: str | None = None
        self.info_: Any = None
        self.last_prediction_score: float | None = None
        self.last_prediction_model: str | None = None  # model_description of the last prediction
        self.training_minutes: float | None = None  # the time budget of the round last started
        self._training_run_id: str | None = None  # ... and its run
        self.last_next_case: Any = None
        self.last_refined: Any = None  # the service's answer to the last refine (name, strokes, seconds)
        self._token: str | None = None
        self._poll_client: Any = None
        self._learning_curve: LearningCurve | None = None

    # ------------------------------------------------------------------ scene access

    @property
    def logics(self) -> SlicerLogics:
        if self._logics is None:
            self._logics = SlicerLogics.from_application()
        return self._logics

    @property
    def nodes(self) -> CaseNodes:
        return CaseNodes(self.logics.scene)

    @property
    def learning_curve(self) -> LearningCurve:
        if self._learning_curve is None or self._learning_curve.scene is not self.logics.scene:
            self._learning_curve = LearningCurve(self.logics.scene)
        return self._learning_curve

    def case_node(self, case_id: str | None, role: str) -> Any:
        return self.nodes.find(case_id, role)

    def case_roles(self, case_id: str | None) -> set:
        """Main thread: the roles (image, label, teacher, refined, ...) the case has nodes for."""
        return {
            n.GetAttribute(ATTR_ROLE) for n in self.nodes.tagged() if n.GetAttribute(ATTR_CASE_ID) == case_id
        }

    def _scratch(self) -> Path:
        if self.scratch_dir is not None:
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="ReciprocalSeg-", dir=self.scratch_dir))

    # ------------------------------------------------------------------ backend (network, process)

    @property
    def connected(self) -> bool:
        return self.client is not None

    def require_client(self) -> Any:
        if self.client is None:
            raise RuntimeError("Not connected: start the local service or connect to a remote one first.")
        return self.client

    def start_local_service(
        self, workspace: Path, python: str, env: dict | None = None, timeout: float = 60.0
    ) -> Any:
        """Start a service with ``python`` on a free loopback port and connect to it (blocks)."""
        from reciprocalseg.client import LocalService

        self.stop_service()
        workspace = Path(workspace).expanduser()
        workspace.mkdir(parents=True, exist_ok=True)
        service = LocalService(str(workspace), python=python, env=env)
        url, token = service.start(timeout=timeout)
        self.service = service
        try:
            return self.connect(url, token)
        except Exception:
            self.stop_service()
            raise

    def connect(self, url: str, token: str | None = None) -> Any:
        """Use the service at ``url``; returns its info (version, device, counts)."""
        from reciprocalseg.client import Client

        client = Client(url, token=token or None)
        info = client.info()
        self.client, self.url, self._token, self.info_ = client, url, token or None, info
        self._poll_client = None
        return info

    def polling_client(self) -> Any:
        """A second client with a short timeout, for the training-progress thread only."""
        from reciprocalseg.client import Client

        self.require_client()
        if self._poll_client is None:
            self._poll_client = Client(self.url, token=self._token, timeout=5.0)
        return self._poll_client

    def info(self) -> Any:
        self.info_ = self.require_client().info()
        return self.info_

    def stop_service(self) -> None:
        """Disconnect; stop the local service if this loop started it (blocks until it ends)."""
        self.client = None
        self._poll_client = None
        service, self.service = self.service, None
        if service is not None:
            service.stop()

    def release_service(self) -> None:
        """Disconnect at once (Slicer quits): a local service this loop started is asked to stop and
        not waited for; it checkpoints a running round and ends by itself (it also ends when Slicer's
        process does: ``serve --parent-pid``)."""
        self.client = None
        self._poll_client = None
        service, self.service = self.service, None
        if service is not None:
            service.request_stop()

    def class_count(self) -> int | None:
        """Foreground classes (label values 1..K); the service's ``n_classes`` counts the background too."""
        n = _field(self.info_, "n_classes")
        return int(n) - 1 if n else None

    def class_settings(self) -> tuple:
        """Any thread: (foreground classes, fixed?) as the service has them now."""
        settings = self.require_client().settings()
        self.info_ = self.require_client().info()
        return int(settings["n_classes"]) - 1, bool(settings["n_classes_fixed"])

    def set_class_count(self, foreground: int | None) -> tuple:
        """Any thread: fix the service's class count to ``foreground`` classes plus the background
        (None: let it follow the labels again); returns ``class_settings()``."""
        if foreground is not None and foreground < 1:
            raise ValueError(f"A model needs at least one foreground class, not {foreground}.")
        self.require_client().set_n_classes(None if foreground is None else foreground + 1)
        return self.class_settings()

    # ------------------------------------------------------------------ adding volumes

    def volumes_to_add(self) -> tuple:
        """Main thread: (IDs of the scalar volumes *Add all* sends: not cases yet, or cases the
        service may have lost, which ``add_volumes`` checks; messages for the volumes skipped)."""
        volumes, skipped = [], []
        collection = self.logics.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        for i in range(collection.GetNumberOfItems()):
            node = collection.GetItemAsObject(i)
            role = node.GetAttribute(ATTR_ROLE)
            if node.IsA("vtkMRMLLabelMapVolumeNode") or (role is not None and role != ROLE_IMAGE):
                continue  # label maps and the nodes this module made (disagreement maps)
            if not is_scalar_volume(node):
                skipped.append(
                    f"{node.GetName()}: a {node.GetClassName()} is not a single-component scalar volume "
                    "(vector, RGB, diffusion or tensor volumes cannot be trained on); skipped."
                )
                continue
            volumes.append(node.GetID())
        return volumes, skipped

    def add_volumes(self, node_ids: Sequence[str], context: Any = DIRECT) -> BatchResult:
        """Any thread: send each volume (scene node ID) as a case; all-or-clear (batch.py): each
        one uploaded is tagged at once, each one that fails is named with the reason and the
        batch goes on; a volume whose case the service has is skipped, one whose case it lost
        (deleted) is sent again."""
        client = self.require_client()
        known = {c.id for c in client.list_cases()}
        result = BatchResult()
        folder = self._scratch()
        try:
            for n, node_id in enumerate(node_ids):
                if context.cancelled:
                    result.cancelled = True
                    break
                snapshot = context.on_main(lambda node_id=node_id: self._volume_snapshot(node_id))
                if snapshot is None:
                    continue  # the node left the scene meanwhile
                if snapshot.case_id in known:
                    result.existing.append(snapshot.case_id)
                    continue
                context.progress(n / max(len(node_ids), 1), f"uploading {snapshot.name}")
                try:
                    snapshot.voxels = self._volume_voxels(context, node_id)
                    case_id = self._upload_volume(client, snapshot, known, folder)
                except Exception as error:  # named and reported; the batch goes on
                    result.failed.append((snapshot.name, str(error)))
                    continue
                known.add(case_id)
                context.on_main(lambda node_id=node_id, case_id=case_id: self._tag_image(node_id, case_id))
                result.added.append(case_id)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return result

    def _volume_voxels(self, context: Any, node_id: str) -> np.ndarray:
        """Any thread: a copy of a scene volume's voxels, taken in short GUI-thread steps."""
        from slicer.util import arrayFromVolume

        def node() -> Any:
            volume = self.logics.scene.GetNodeByID(node_id)
            if volume is None or volume.GetImageData() is None:
                raise RuntimeError("the volume left the scene while it was added")
            return volume

        return copy_in_steps(
            context, lambda: arrayFromVolume(node()), lambda: node().GetImageData().GetMTime()
        )

    def _volume_snapshot(self, node_id: str) -> VolumeSnapshot | None:
        """Main thread: a volume's name, case tag and grid (its voxels: ``_volume_voxels``), or None."""
        volume = self.logics.scene.GetNodeByID(node_id)
        if volume is None:
            return None
        if not is_scalar_volume(volume):
            raise ValueError(f"{volume.GetName()} is a {volume.GetClassName()}, not a scalar volume.")
        tagged = volume.GetAttribute(ATTR_CASE_ID) if volume.GetAttribute(ATTR_ROLE) == ROLE_IMAGE else None
        return VolumeSnapshot(volume.GetName(), tagged, None, volume_grid(volume))

    def _upload_volume(self, client: Any, snapshot: VolumeSnapshot, known: set, folder: Path) -> str:
        """Any thread: write the copy (its own grid) and upload it under a free case ID."""
        import SimpleITK as sitk

        from reciprocalseg.common.geometry import image_from_array

        wanted = snapshot.case_id or case_id_from_name(snapshot.name)
        taken = {known_id.casefold() for known_id in known}  # the service's IDs differ beyond case
        case_id, k = wanted, 2
        while case_id.casefold() in taken:
            case_id, k = f"{wanted[:60]}_{k}", k + 1
        path = folder / f"{case_id}.nrrd"
        # Compressed for a remote service (the network is the bottleneck), raw for a local one.
        sitk.WriteImage(image_from_array(snapshot.voxels, snapshot.grid), str(path), self.service is None)
        try:
            return client.add_case(str(path), case_id=case_id, upload=True).id
        except Exception as error:  # the service names the transfer file; the caller names the volume
            raise RuntimeError(str(error).replace(f"{path.name}: ", "", 1)) from error
        finally:
            path.unlink(missing_ok=True)

    def _tag_image(self, node_id: str, case_id: str) -> None:
        node = self.logics.scene.GetNodeByID(node_id)
        if node is not None:
            CaseNodes.tag(node, case_id, ROLE_IMAGE)

    def add_volume(self, volume: Any) -> str:
        """Send one scene volume to the service; returns its case ID (its existing one if the
        service has it). RuntimeError naming the volume and the reason when it is refused."""
        if volume is None:
            raise ValueError("No volume selected.")
        result = self.add_volumes([volume.GetID()])
        if result.failed:
            raise RuntimeError(result.failure_text())
        return (result.added + result.existing)[0]

    def add_all_volumes(self) -> tuple:
        """Send every scalar volume that is no case of the service yet; returns (case IDs added,
        skipped-volume messages). BatchAddError names the volumes that failed (the rest are added)."""
        volumes, skipped = self.volumes_to_add()
        result = self.add_volumes(volumes)
        if result.failed:
            raise BatchAddError(result)
        return result.added, skipped

    # ------------------------------------------------------------------ a case of several volumes

    def add_channel_case(
        self, node_ids: Sequence[str], names: Sequence[str], case_id: str | None = None, context: Any = DIRECT
    ) -> str:
        """Any thread: send scene volumes (channel order, a name each: T2, ADC ...) as one case with
        several images; the service checks they lie on the first one's grid. Tags them as the case's
        channels and shows channel 0 behind, channel 1 in front; returns the case ID."""
        client = self.require_client()
        names = context.on_main(lambda: self._channel_choice(node_ids, names))
        snapshots = [context.on_main(lambda i=i: self._volume_snapshot(i)) for i in node_ids]
        for snapshot, node_id in zip(snapshots, node_ids, strict=True):
            snapshot.voxels = self._volume_voxels(context, node_id)
        folder = self._scratch()
        try:
            taken = {c.id.casefold() for c in client.list_cases()}
            wanted = case_id or case_id_from_name(snapshots[0].name)
            chosen, k = wanted, 2
            while chosen.casefold() in taken:
                chosen, k = f"{wanted[:60]}_{k}", k + 1
            paths = [
                self._write_snapshot(s, folder / f"channel{n:02d}.nrrd") for n, s in enumerate(snapshots)
            ]
            first, *more = (str(p) for p in paths)
            added = client.add_case(first, case_id=chosen, channels=more, channel_names=names).id
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        context.on_main(lambda: self._tag_channels(node_ids, names, added))
        return added

    def add_volumes_as_case(
        self, volumes: Sequence[Any], names: Sequence[str], case_id: str | None = None
    ) -> str:
        """``add_channel_case`` for volume nodes (the console's way)."""
        if any(v is None for v in volumes):
            raise ValueError("A channel has no volume selected; pick one for each channel.")
        return self.add_channel_case([v.GetID() for v in volumes], names, case_id)

    def _channel_choice(self, node_ids: Sequence[str], names: Sequence[str]) -> list:
        """Main thread: the user's channels checked (case_channels.check_channel_choice)."""
        return check_channel_choice([self.logics.scene.GetNodeByID(i) for i in node_ids], names)

    def _write_snapshot(self, snapshot: VolumeSnapshot, path: Path) -> Path:
        import SimpleITK as sitk

        from reciprocalseg.common.geometry import image_from_array

        sitk.WriteImage(image_from_array(snapshot.voxels, snapshot.grid), str(path), self.service is None)
        return path

    def _tag_channels(self, node_ids: Sequence[str], names: Sequence[str], case_id: str) -> None:
        """Main thread: channel 0 is the case volume, the others its layers; 0 behind, 1 in front."""
        nodes = [self.logics.scene.GetNodeByID(i) for i in node_ids]
        for index, (node, name) in enumerate(zip(nodes, names, strict=True)):
            if node is not None:
                tag_channel(node, case_id, index, name)
        show_channel(self.logics.scene, nodes[0], nodes[1] if len(nodes) > 1 else None)

    def add_folder(self, path: Path, context: Any = DIRECT) -> BatchResult:
        """Any thread: add a folder's images (and ``<ID>_label`` files); a local service reads in
        place. Cases the service has are skipped (their label is added if they have none); a file
        that fails is named with the reason and the rest go on."""
        from reciprocalseg.data.io import discover_cases

        client = self.require_client()
        upload = self.service is None
        cases = list(discover_cases(path))
        known = {c.id: c for c in client.list_cases()}
        result = BatchResult()
        for n, case in enumerate(cases):
            if context.cancelled:
                result.cancelled = True
                break
            context.progress(n / max(len(cases), 1), f"adding {case.case_id}")
            try:
                if case.case_id in known:
                    result.existing.append(case.case_id)
                    if case.label is not None and known[case.case_id].label_version is None:
                        client.put_label(case.case_id, str(case.label))
                    continue
                case_id = client.add_case(str(case.image), case_id=case.case_id, upload=upload).id
                result.added.append(case_id)
                if case.label is not None:
                    client.put_label(case_id, str(case.label))
            except Exception as error:  # named and reported; the folder goes on
                result.failed.append((Path(case.image).name, str(error)))
        return result

    def list_cases(self) -> list:
        return self.require_client().list_cases()

    def overview(self) -> tuple:
        """Any thread: (cases, class settings, plan, retraining settings): the case list with what
        follows the labels (the class count, the plan, the corrections since the last round)."""
        return self.list_cases(), self.class_settings(), self.plan(), self.auto_retrain_settings()

    def delete_case_on_service(self, case_id: str) -> None:
        self.require_client().delete_case(case_id)

    def remove_case_nodes(self, case_id: str) -> None:
        """Main thread: the case's label, scribbles, predictions and disagreement map leave the scene."""
        self.nodes.remove_case(case_id)

    def forget_case(self, case_id: str) -> None:
        """Main thread, after the case was deleted on the service: its nodes leave the scene and its
        volume is no case any more (*Add volume* sends it again)."""
        self.remove_case_nodes(case_id)
        CaseNodes.untag(self.case_node(case_id, ROLE_IMAGE))

    def delete_case(self, case_id: str) -> None:
        self.delete_case_on_service(case_id)
        self.forget_case(case_id)

    # ------------------------------------------------------------------ showing a case

    def case_state(self, case_id: str) -> CaseState:
        """Main thread: what the scene has of a case (``case_content.CaseState``)."""
        volume = self.case_node(case_id, ROLE_IMAGE)
        return CaseState(
            grid=None if volume is None or volume.GetImageData() is None else volume_grid(volume),
            has_label=self.case_node(case_id, ROLE_LABEL) is not None,
            has_scribbles=self.case_node(case_id, ROLE_SCRIBBLES) is not None,
            names=self.nodes.class_names(case_id),
        )

    def needs(self, case_id: str) -> tuple:
        """Main thread: (need_image, need_label): what ``load_case`` downloads."""
        state = self.case_state(case_id)
        return state.grid is None, not state.has_label

    def load_case(self, case_id: str, context: Any = DIRECT) -> tuple:
        """Any thread: the case's volume and editable label in the scene (downloaded, read and
        built by this thread when missing; the nodes added in one GUI-thread step), only this
        case shown. Returns (volume, label segmentation)."""
        from reciprocalseg.client import ServiceError

        state = context.on_main(lambda: self.case_state(case_id))
        files = CaseFiles(case_id)
        if state.grid is None or not state.has_label:
            client = self.require_client()
            folder = self._scratch()
            try:
                if state.grid is None:
                    context.progress(None, f"downloading {case_id}")
                    files.image = client.get_image(case_id, str(folder / f"{case_id}.nrrd"))
                    self._download_channels(client, case_id, folder, files)
                if not state.has_label:
                    try:
                        files.label = client.get_label(case_id, str(folder / f"{case_id}_label.nrrd"))
                    except ServiceError as error:
                        if error.status_code != 404:
                            raise
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)  # no download left behind
                raise
        return self.apply_case(case_id, files, context, state)

    def channel_layer(self, case_id: str) -> Any:
        """Main thread: channel 1 of a case with several images in the scene (None: one image)."""
        return self.case_node(case_id, "channel1")

    def layer_choices(self, case_id: str | None) -> list:
        """Main thread: the panel's layer selector items for the case (case_channels.layer_choices)."""
        return layer_choices(self.logics.scene, case_id) if case_id else [LAYER_NONE]

    def show_layer(self, case_id: str, choice: int) -> Any:
        """Main thread: channel 0 behind, the channel of selector item `choice` in front (0: none)."""
        return show_layer(self.logics.scene, case_id, choice)

    @staticmethod
    def _download_channels(client: Any, case_id: str, folder: Path, files: CaseFiles) -> None:
        """Any thread: channels 1.. of a case with several images, beside its image (channel 0)."""
        files.channel_names = list(getattr(client.get_case(case_id), "channels", None) or [])
        for index, name in enumerate(files.channel_names[1:], start=1):
            path = client.get_image(case_id, str(folder / f"{case_id}_channel{index}.nrrd"), channel=index)
            files.channels.append((index, name, path))

    def show_case(self, case_id: str) -> tuple:
        """Case volume and editable label in the scene (downloaded when missing); others hidden."""
        return self.load_case(case_id)

    def case_volume(self, case_id: str) -> Any:
        return self.load_case(case_id)[0]

    def apply_case(self, case_id: str, files: CaseFiles, context: Any = DIRECT, state: Any = None) -> tuple:
        """Any thread: a case's downloaded files (deleted after) into the scene; see ``load_case``."""
        try:
            state = state if state is not None else context.on_main(lambda: self.case_state(case_id))
            scan = None
            if state.grid is None:
                if files.image is None:
                    raise RuntimeError(f"The image of {case_id} was not downloaded.")
                context.progress(None, f"reading {case_id}")
                scan = scan_content(files.image)
            grid = state.grid if scan is None else scan.grid
            layers = [(index, name, scan_content(path)) for index, name, path in files.channels]
            label = None
            if not state.has_label and files.label is not None:
                label = label_content(files.label, grid, state, self.class_count() or 0, LABEL_COLORS)
        finally:
            for path in (files.image, files.label):
                if path is not None:
                    shutil.rmtree(Path(path).parent, ignore_errors=True)
        return context.on_main(lambda: self._attach_case(case_id, scan, label, files.channel_names, layers))

    def _attach_case(
        self,
        case_id: str,
        scan: Any,
        content: LabelContent | None,
        names: Sequence = (),
        layers: Sequence = (),
    ) -> tuple:
        """Main thread: the nodes of ``apply_case`` (pointer work: the voxels are built); `layers`:
        (index, name, scan) of channels 1.. of a case with several images (`names`: all of them)."""
        volume = self.case_node(case_id, ROLE_IMAGE)
        if volume is None:
            if scan is None:
                raise RuntimeError(f"The volume of {case_id} left the scene: select the case again.")
            volume = add_volume_node(self.logics.scene, scan, case_id)
            CaseNodes.tag(volume, case_id, ROLE_IMAGE)
            self._attach_channels(case_id, volume, names, layers)
        label = self.case_node(case_id, ROLE_LABEL)
        if label is None:
            label = self._new_segmentation(case_id, ROLE_LABEL, volume)
            if content is None:
                names = self.case_state_names(case_id, max(self.class_count() or 0, 1))
                add_class_segments(label, names, LABEL_COLORS)
            else:
                add_segments(label, content.label.layer, content.label.specs)
                if content.scribbles is not None and self.case_node(case_id, ROLE_SCRIBBLES) is None:
                    scribbles = self._new_segmentation(case_id, ROLE_SCRIBBLES, volume)
                    add_segments(scribbles, content.scribbles.layer, content.scribbles.specs)
        self.nodes.show_only(case_id)
        return volume, label

    def _attach_channels(self, case_id: str, volume: Any, names: Sequence, layers: Sequence) -> None:
        """Main thread: channels 1.. as volumes beside the case volume (channel 0), tagged by index
        and name, under its transform; channel 0 behind and channel 1 in front in the slice views."""
        if not layers:
            return
        tag_channel(volume, case_id, 0, names[0])
        nodes = []
        for index, name, data in layers:
            node = add_volume_node(self.logics.scene, data, f"{case_id} {name}")
            tag_channel(node, case_id, index, name)
            CaseNodes.place_like(node, volume)
            nodes.append(node)
        show_channel(self.logics.scene, volume, nodes[0])

    def _new_segmentation(self, case_id: str, role: str, volume: Any) -> Any:
        """Main thread: an empty segmentation for ``role`` of a case, on the scan's grid and
        under its transform, named ``<case> <role>`` (the previous one removed)."""
        segmentation = self.nodes.replace(
            case_id, role, "vtkMRMLSegmentationNode", f"{case_id} {role}", volume
        )
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        return segmentation

    def case_state_names(self, case_id: str, count: int) -> list:
        """Main thread: names of classes 1..count for this case (its own nodes, else "Class k")."""
        return CaseState(names=self.nodes.class_names(case_id)).class_names(count)

    # ------------------------------------------------------------------ submitting

    def submit(
        self,
        case_id: str,
        scribbles: bool = False,
        context: Any = DIRECT,
        author: str | None = None,
        confirm: Callable | None = None,
        segmentation: Any = None,
    ) -> SubmitResult:
        """Any thread: the case's label (or with ``scribbles`` its strokes) as its new label
        version, on the grid the service stores for the case, voxel-exact (a copy of the painted
        voxels is taken on the GUI thread; mapping, writing and uploading run here).

        A full label with nothing painted asks ``confirm(question)`` on the GUI thread first (the
        panel's OK/Cancel); without ``confirm`` it is submitted with a warning (result and log).
        """
        painted = context.on_main(lambda: self._painted(case_id, scribbles, segmentation))
        snapshot = painted.copy(context)
        client = self.require_client()
        stored = self._stored_grid(client, case_id, painted.grid)
        masks = snapshot.masks(painted.classes, stored)
        result = SubmitResult(case_id, scribbles)
        if scribbles:
            label, result.summary = compose_scribbles(masks)
        else:
            label = compose_full_label(masks)
            if not label.any():
                question = EMPTY_LABEL_QUESTION.format(case=case_id)
                if confirm is not None and not context.on_main(lambda: confirm(question)):
                    result.declined = True
                    return result
                result.warning = EMPTY_LABEL_WARNING.format(case=case_id)
                log.warning(result.warning)
        result.version = self._upload_label(client, case_id, label, stored, author)
        result.warning = _field(result.version, "warning", result.warning)
        return result

    def _painted(self, case_id: str, scribbles: bool, segmentation: Any = None) -> Painted:
        """Main thread: what is painted in the case's label or scribbles (its layers), with each
        segment's class (from this case's own names) and the volume's grid."""
        volume = self.case_node(case_id, ROLE_IMAGE)
        role = ROLE_SCRIBBLES if scribbles else ROLE_LABEL
        segmentation = segmentation if segmentation is not None else self.case_node(case_id, role)
        if volume is None or segmentation is None:
            raise RuntimeError(f"Select {case_id} and paint its {role} first: it is not in the scene.")
        if (
            not scribbles
            and self.case_node(case_id, ROLE_LABEL) is None
            and not segmentation.GetAttribute(ATTR_ROLE)
        ):
            CaseNodes.tag(segmentation, case_id, ROLE_LABEL)
        names = self.case_state_names(case_id, max(self.class_count() or 0, 1))
        classes = (scribble_classes if scribbles else segment_classes)(segmentation, names)
        layers = painted_layers(segmentation, volume)
        # A non-linear transform between them: Slicer exports (resamples) each segment (slow path).
        snapshot = (
            None if layers is not None else exported_snapshot(segmentation, classes, volume, self.nodes)
        )
        return Painted(layers, snapshot, classes, volume_grid(volume))

    @staticmethod
    def _stored_grid(client: Any, case_id: str, grid: Geometry) -> Geometry:
        """Any thread: the grid the service stores the case on; DataError when the scene's volume
        is not on the same voxels (resampled or cropped in Slicer)."""
        from reciprocalseg.common.geometry import Geometry
        from reciprocalseg.common.grid_mapping import same_voxels

        stored = Geometry.from_dict(client.get_case(case_id).geometry)
        if not same_voxels(grid, stored):
            raise DataError(
                f"The volume of {case_id} in the scene is not on the voxels the service stores for "
                f"it ({'; '.join(grid.matches(stored)) or 'other voxel centres'}): it was resampled "
                "or cropped. Remove it, select the case again to load the stored scan, and paint there."
            )
        return stored

    def _upload_label(self, client: Any, case_id: str, label: Any, grid: Geometry, author: str | None) -> Any:
        """Any thread: write the label map (compressed) on ``grid`` and upload it."""
        folder = self._scratch()
        try:
            path = _write_label(label, grid, folder / f"{case_id}_label.nrrd")
            return client.put_label(case_id, str(path), author=author)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def submit_segmentation(
        self, case_id: str, segmentation: Any, volume: Any = None, author: str | None = None
    ) -> Any:
        """Upload ``segmentation`` as the case's new full label (class by segment identity); returns
        the service's label version. ``volume`` is the case's volume (checked when given)."""
        if volume is not None and volume is not self.case_node(case_id, ROLE_IMAGE):
            raise RuntimeError(f"{volume.GetName()} is not the volume of {case_id} in the scene.")
        return self.submit(case_id, False, author=author, segmentation=segmentation).version

    def scribble_label(self, case_id: str) -> tuple:
        """Main thread: (the partial label map the scribbles give on the volume's grid, its summary)."""
        painted = self._painted(case_id, True)
        return compose_scribbles(painted.copy(DIRECT).masks(painted.classes, painted.grid))

    # ------------------------------------------------------------------ scribbles (partial labels)

    def scribble_segmentation(self, case_id: str) -> Any:
        """Main thread: the case's scribble segmentation, made when missing: empty segments
        Background and one per class, on the scan's grid and under its transform."""
        volume = self.case_node(case_id, ROLE_IMAGE)
        if volume is None:
            raise RuntimeError(f"Select {case_id} first: its volume is not in the scene.")
        scribbles = self.case_node(case_id, ROLE_SCRIBBLES)
        if scribbles is None:
            names = self.case_state_names(case_id, max(self.class_count() or 0, 1))
            scribbles = self._new_segmentation(case_id, ROLE_SCRIBBLES, volume)
            add_scribble_segments(scribbles, names, LABEL_COLORS)
        self.nodes.show_only(case_id)
        return scribbles

    def submit_scribbles(
        self, case_id: str, scribbles: Any = None, author: str | None = None
    ) -> ScribbleSummary:
        """The case's strokes uploaded as its new (partial) label version; returns what they annotate."""
        return self.submit(case_id, True, author=author, segmentation=scribbles).summary

    # ------------------------------------------------------------------ prediction

    def show_prediction(self, case_id: str, live: bool = False, context: Any = DIRECT) -> tuple:
        """Any thread: predict the case (the current round, or with ``live`` the latest checkpoint
        of the round in training) and show teacher, student and disagreement on its scan."""
        state = context.on_main(lambda: self.case_state(case_id))
        client = self.require_client()
        context.progress(None, f"predicting {case_id}")
        folder = self._scratch()
        try:
            result = client.predict(case_id, out_dir=str(folder), live=live)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # no download left behind
            raise
        return self.show_prediction_files(case_id, result, context, state)

    def predict(self, case_id: str, live: bool = False) -> tuple:
        """Predict a case; returns (teacher segmentation, student segmentation, disagreement volume);
        a teacher-only round (supervised only) gives (teacher segmentation, None, None)."""
        return self.show_prediction(case_id, live)

    def show_prediction_files(
        self, case_id: str, result: Any, context: Any = DIRECT, state: Any = None
    ) -> tuple:
        """Any thread: the prediction files of ``result`` (deleted after) on the case's scan."""
        try:
            state = state if state is not None else context.on_main(lambda: self.case_state(case_id))
            scan = None
            if state.grid is None:
                files = CaseFiles(case_id, image=self.require_client().get_image(
                    case_id, str(Path(result.teacher).parent / f"{case_id}.nrrd")
                ))  # fmt: skip
                scan = scan_content(files.image)
            context.progress(None, f"reading the prediction of {case_id}")
            content = prediction_content(
                result,
                state.grid or scan.grid,
                state,
                self.class_count() or 0,
                (TEACHER_COLORS, STUDENT_COLORS),
            )
        finally:
            shutil.rmtree(Path(result.teacher).parent, ignore_errors=True)
        return context.on_main(lambda: self._attach_prediction(case_id, result, scan, content))

    def _attach_prediction(self, case_id: str, result: Any, scan: Any, content: PredictionContent) -> tuple:
        """Main thread: teacher (filled), student (outline), disagreement (zero transparent)."""
        volume = self.case_node(case_id, ROLE_IMAGE)
        if volume is None:
            volume = self._attach_case(case_id, scan, None)[0]
        teacher = self._new_segmentation(case_id, ROLE_TEACHER, volume)
        add_segments(teacher, content.teacher.layer, content.teacher.specs)
        show_teacher(teacher)
        self.nodes.remove(self.case_node(case_id, ROLE_DISAGREEMENT))
        student = disagreement = None
        if content.student is None:  # a teacher-only round: its one model is shown, no stale student
            self.nodes.remove(self.case_node(case_id, ROLE_STUDENT))
        else:
            student = self._new_segmentation(case_id, ROLE_STUDENT, volume)
            add_segments(student, content.student.layer, content.student.specs)
            show_student(student)
            disagreement = add_volume_node(self.logics.scene, content.disagreement, f"{case_id} disagreement")
            CaseNodes.tag(disagreement, case_id, ROLE_DISAGREEMENT)
            CaseNodes.place_like(disagreement, volume)
            show_disagreement(disagreement, self.logics.scene, content.disagreement_range)
        self.last_prediction_score = result.score
        shown = [node for node in (teacher, student, disagreement) if node is not None]
        self.last_prediction_model = self._mark_model(result, shown)
        self.nodes.show_only(case_id)
        return teacher, student, disagreement

    @staticmethod
    def _mark_model(result: Any, nodes: Sequence[Any]) -> str:
        """Name and tag the prediction nodes with the model that made them (saved with the scene)."""
        model = model_description(result)
        for node in nodes:
            node.SetAttribute(ATTR_MODEL, model)
            node.SetName(f"{result.case_id} {node.GetAttribute(ATTR_ROLE)} ({model})")
        return model

    def copy_student_to_label(self, case_id: str, context: Any = DIRECT) -> Any:
        """Any thread: the case's editable label becomes a copy of the student's prediction (the
        voxels are copied on this thread; the label's segments are replaced on the GUI thread)."""
        return self._copy_to_label(case_id, ROLE_STUDENT, context)

    def _copy_to_label(self, case_id: str, role: str, context: Any) -> Any:
        """Any thread: the case's editable label becomes a copy of its ``role`` segmentation."""
        layers = context.on_main(lambda: self._student_layers(case_id, role))
        copies = {}
        for key, (layer, _specs) in layers.items():
            copies[key] = type(layer)()
            copies[key].DeepCopy(layer)
        return context.on_main(lambda: self._attach_correction(case_id, layers, copies))

    def _student_layers(self, case_id: str, role: str = ROLE_STUDENT) -> dict:
        """Main thread: the student's (or ``role``'s) labelmap layers and the segments each holds."""
        student = self.case_node(case_id, role)
        if student is None or self.case_node(case_id, ROLE_IMAGE) is None:
            raise RuntimeError(f"{'Refine' if role == ROLE_REFINED else 'Predict'} {case_id} first.")
        source = student.GetSegmentation()
        layers: dict = {}
        for i in range(source.GetNumberOfSegments()):
            segment_id = source.GetNthSegmentID(i)
            segment = source.GetSegment(segment_id)
            layer = segment.GetRepresentation(BINARY_LABELMAP)
            spec = SegmentSpec(
                segment_id, segment.GetName(), LABEL_COLORS[i % len(LABEL_COLORS)], segment.GetLabelValue()
            )
            layers.setdefault(layer.__this__, (layer, []))[1].append(spec)
        return layers

    def _attach_correction(self, case_id: str, layers: dict, copies: dict) -> Any:
        """Main thread: the label's segments replaced by the copies of the student's."""
        volume = self.case_node(case_id, ROLE_IMAGE)
        label = self.case_node(case_id, ROLE_LABEL)
        if label is None:
            label = self._new_segmentation(case_id, ROLE_LABEL, volume)
        CaseNodes.place_like(label, volume)
        release_layers(label)  # the old segments go without splitting their shared labelmap
        label.GetSegmentation().RemoveAllSegments()
        for key, (_layer, specs) in layers.items():
            add_segments(label, copies[key], specs)
        self.nodes.show_only(case_id)
        return label

    # ------------------------------------------------------------------ refine from strokes, accept

    def refine(
        self,
        case_id: str,
        model: str = "student",
        seconds: float | None = None,
        context: Any = DIRECT,
        author: str | None = None,
    ) -> Any:
        """Any thread: the case's scribbles, painted over the shown prediction, refine a copy of the
        current round's ``model`` (the service stores them as the case's new partial label, with
        its earlier strokes); the refined map is shown as ``<case> refined (from round N, K
        strokes)`` beside teacher and student. Returns that segmentation (``last_refined``: the
        service's answer). ScribbleError when nothing is painted (nothing is sent)."""
        painted = context.on_main(lambda: self._painted(case_id, True))
        snapshot = painted.copy(context)
        state = context.on_main(lambda: self.case_state(case_id))
        client = self.require_client()
        stored = self._stored_grid(client, case_id, painted.grid)
        strokes, _summary = compose_scribbles(snapshot.masks(painted.classes, stored))
        context.progress(None, f"refining {case_id}")
        folder = self._scratch()
        try:
            path = _write_label(strokes, stored, folder / f"{case_id}_strokes.nrrd")
            result = client.refine(case_id, str(path), model, seconds, out_dir=str(folder), author=author)
            content = refined_content(
                result.labels, painted.grid, state, self.class_count() or 0, REFINED_COLORS
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return context.on_main(lambda: self._attach_refined(case_id, result, content))

    def _attach_refined(self, case_id: str, result: Any, content: Any) -> Any:
        """Main thread: the refined segmentation (filled, greens), named for what made it."""
        volume = self.case_node(case_id, ROLE_IMAGE)
        if volume is None:
            raise RuntimeError(f"The volume of {case_id} left the scene: select the case again.")
        refined = self._new_segmentation(case_id, ROLE_REFINED, volume)
        add_segments(refined, content.layer, content.specs)
        show_refined(refined)
        refined.SetAttribute(ATTR_MODEL, result.name)
        refined.SetName(f"{case_id} {ROLE_REFINED} ({refined_suffix(result.name)})")
        self.last_refined = result
        self.nodes.show_only(case_id)
        return refined

    def accept_refined(self, case_id: str, context: Any = DIRECT, author: str | None = None) -> Any:
        """Any thread: one click: the case's refined map becomes its full label, on the service (a
        new label version, returned) and in the case's label segmentation."""
        version = self.require_client().accept_refined(case_id, author=author)
        self._copy_to_label(case_id, ROLE_REFINED, context)
        return version

    # ------------------------------------------------------------------ retrain by itself

    def auto_retrain_settings(self) -> tuple:
        """Any thread: (K or None when off, minutes, corrections since the latest round, message)."""
        settings = self.require_client().settings()
        keys = ("retrain_after", "retrain_minutes", "corrections", "retrain_message")
        return tuple(settings.get(key) for key in keys)

    def set_auto_retrain(self, after: int | None, minutes: float | None = None) -> tuple:
        """Any thread: retrain by itself (a warm-started round of ``minutes``) after ``after``
        corrections; None: off. Returns ``auto_retrain_settings()``."""
        if after is not None and after < 1:
            raise ValueError(f"Retrain after at least one correction, not {after}.")
        self.require_client().set_auto_retrain(after, minutes)
        return self.auto_retrain_settings()

    # ------------------------------------------------------------------ ranking and training

    def next_case(self, by: str = "disagreement") -> tuple:
        """Any thread: (case_id, score) of the unlabelled case to label next: where teacher and
        student disagree most, or ``by="qa"`` the one with the most QA flags (``last_next_case``
        keeps the whole answer, its ``qa_flags`` among it)."""
        if by not in NEXT_BY:
            raise ValueError(f"Order the next case by one of {NEXT_BY}, not {by!r}.")
        result = self.require_client().next_case(by=by)
        self.last_next_case = result
        return result.case_id, result.score

    def start_training(
        self,
        preset: str = "auto",
        iterations: int | None = None,
        supervised_iterations: int | None = None,
        device: str = "auto",
        warm_start: bool = True,
        minutes: float | None = None,
    ) -> Any:
        """Start a round on the service (returns at once; poll ``training_status``).

        ``minutes``: a time budget for the round (the phases are sized from the measured speed;
        the iterations are then ignored); None or 0: the iterations (or the preset's) decide.
        """
        status = self.require_client().start_training(
            preset=preset,
            iterations=iterations,
            supervised_iterations=supervised_iterations,
            device=device,
            warm_start=warm_start,
            minutes=minutes or None,
        )
        self.training_minutes, self._training_run_id = minutes or None, status.run_id
        if self._learning_curve is not None:  # plain lists, no scene lookup: safe off the main thread
            self._learning_curve.reset()
        return status

    def budget_minutes(self, status: Any) -> float | None:
        """The time budget of the run ``status`` describes, when this loop started it (the
        service's status does not carry it); None for another client's run or no budget."""
        run_id = _field(status, "run_id")
        return self.training_minutes if run_id is not None and run_id == self._training_run_id else None

    def training_status(self) -> Any:
        return self.require_client().training_status()

    def plan(self) -> dict | None:
        """Any thread: the plan an ``auto`` round would run now (``Client.plan()``: values, reasons,
        fingerprint); None when the service has no labelled case to plan from, or no plan yet."""
        from reciprocalseg.client import ServiceError

        client = self.require_client()
        if not hasattr(client, "plan"):
            return None  # a core package from before the plan was exposed (issue 16)
        try:
            return client.plan()
        except ServiceError as error:
            if error.status_code == 404:  # no labelled case yet, or a service without GET /plan
                return None
            raise

    def stop_training(self) -> Any:
        return self.require_client().stop_training()

    def wait_for_training(self, poll: float = 1.0, timeout: float | None = None, callback: Any = None) -> Any:
        return self.require_client().wait_for_training(poll=poll, timeout=timeout, callback=callback)
