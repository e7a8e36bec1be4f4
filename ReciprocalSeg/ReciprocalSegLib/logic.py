"""The annotation loop on a scene: network steps (any thread) and scene steps (main thread).

MRML is not thread-safe and a network call can take minutes, so every operation that talks to
the service is split in two or three steps:

- ``prepare_*`` (main thread): scene -> files in a scratch folder (a disk write, no network);
- ``fetch_*`` / ``upload_*`` / service calls (any thread, the panel runs them on its task
  runner): the client only, never a node;
- ``apply_*`` / ``finish_*`` (main thread): files -> nodes.

The one-call methods (``add_volume``, ``show_case``, ``submit_segmentation``, ``predict``)
chain the steps for scripts, the Python console and the tests. ``NETWORK_METHODS`` lists the
steps that wait on the network or a process; tests/slicer/test_static_gui_thread.py checks that the
widget calls them only through its task runner.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .learning_curve import LearningCurve
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
from .scribbles import ScribbleSummary, add_scribble_segments, export_scribble_node, import_scribble_label
from .segment_export import (
    UNANNOTATED,
    default_class_name,
    export_label_node,
    import_label_node,
    segment_id_for_class,
)
from .slicer_logics import SlicerLogics
from .status_text import model_description
from .submission import Submission
from .volume_files import is_scalar_volume, keep_file, read_volume, write_volume

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
        "upload_volume_files",
        "add_volume",
        "add_all_volumes",
        "add_folder",
        "delete_case_on_service",
        "delete_case",
        "fetch_case",
        "show_case",
        "case_volume",
        "upload_label_file",
        "submit_segmentation",
        "submit_scribbles",
        "upload_submission",
        "plan",
        "fetch_prediction",
        "predict",
        "next_case",
        "class_settings",
        "set_class_count",
        "start_training",
        "stop_training",
        "training_status",
        "wait_for_training",
        "fetch_refined",
        "refine",
        "accept_refined_on_service",
        "accept_refined",
        "auto_retrain_settings",
        "set_auto_retrain",
        "overview",
    }
)


@dataclass
class VolumeUpload:
    """A scene volume written to a file, waiting to be uploaded as ``wanted_id`` (or a free variant)."""

    node_id: str
    wanted_id: str
    path: Path
    case_id: str | None = None


@dataclass
class CaseFiles:
    """A case's image and current label downloaded to files (None: not needed or none on the service)."""

    case_id: str
    image: Path | None = None
    label: Path | None = None


def refined_suffix(name: str) -> str:
    """``from round 3, 2 strokes`` of the service's ``refined from round 3, 2 strokes``."""
    return name[len("refined ") :] if name.startswith("refined ") else name


def _field(obj: Any, name: str, default: Any = None) -> Any:
    value = getattr(obj, name, None)
    return default if value is None else value


class ReciprocalSegLoop:
    """The loop for one scene and one service connection.

    Args:
        logics: the scene and module logics (``SlicerLogics.from_application()`` in Slicer,
            ``SlicerLogics.standalone()`` with slicer-core); looked up on first use when None.
        keep_dir: where files of nodes loaded for the scene are kept (see volume_files.keep_file);
            a folder of the system's temporary directory when None.
        scratch_dir: parent of the short-lived download/upload folders (the system temp if None).
    """

    def __init__(
        self,
        logics: SlicerLogics | None = None,
        keep_dir: Path | None = None,
        scratch_dir: Path | None = None,
    ) -> None:
        self._logics = logics
        # Never None: a node whose file were left in a deleted download folder would be lost on Save.
        self.keep_dir = (
            Path(keep_dir) if keep_dir is not None else Path(tempfile.gettempdir()) / "ReciprocalSeg-files"
        )
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
        """The roles (image, label, teacher, refined, ...) the case has nodes for in the scene."""
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
        self,
        workspace: Path,
        python: str,
        env: dict | None = None,
        timeout: float = 60.0,
        package_dir: str | None = None,
    ) -> Any:
        """Start a service with ``python`` on a free loopback port and connect to it (blocks);
        ``package_dir`` (the folder that holds the core package) goes first on its PYTHONPATH."""
        import os

        from reciprocalseg.client import LocalService

        if package_dir is not None:
            env = dict(os.environ if env is None else env)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_dir, env.get("PYTHONPATH", "")) if p)
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
        """(scalar volumes of the scene that are no case yet, messages for the volumes skipped)."""
        volumes, skipped = [], []
        collection = self.logics.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        for i in range(collection.GetNumberOfItems()):
            node = collection.GetItemAsObject(i)
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute(ATTR_CASE_ID):
                continue  # label maps and the nodes this module made or already sent
            if not is_scalar_volume(node):
                skipped.append(
                    f"{node.GetName()}: a {node.GetClassName()} is not a single-component scalar volume "
                    "(vector, RGB, diffusion or tensor volumes cannot be trained on); skipped."
                )
                continue
            volumes.append(node)
        return volumes, skipped

    def prepare_volume_uploads(self, volumes: Sequence[Any]) -> list:
        """Main thread: write each volume (its own grid) to a scratch NRRD file."""
        folder = self._scratch()
        uploads = []
        for n, volume in enumerate(volumes):
            if volume is None:
                raise ValueError("No volume selected.")
            if not is_scalar_volume(volume):
                raise ValueError(f"{volume.GetName()} is a {volume.GetClassName()}, not a scalar volume.")
            wanted = case_id_from_name(volume.GetName())
            path = write_volume(volume, folder / f"{n:04d}.nrrd")
            uploads.append(VolumeUpload(volume.GetID(), wanted, path))
        return uploads

    def upload_volume_files(
        self, uploads: Sequence[VolumeUpload], progress: Callable | None = None, cancelled: Callable = bool
    ) -> list:
        """Any thread: upload each file as a case with a free ID (until ``cancelled()``), then delete it."""
        client = self.require_client()
        try:
            known = {c.id for c in client.list_cases()}
            for n, upload in enumerate(uploads):
                if cancelled():
                    break
                if progress is not None:
                    progress(n / max(len(uploads), 1), f"uploading {upload.wanted_id}")
                case_id, k = upload.wanted_id, 2
                while case_id in known:
                    case_id, k = f"{upload.wanted_id[:60]}_{k}", k + 1
                upload.case_id = client.add_case(str(upload.path), case_id=case_id, upload=True).id
                known.add(upload.case_id)
        finally:
            for upload in uploads:
                shutil.rmtree(upload.path.parent, ignore_errors=True)
        return list(uploads)

    def finish_volume_uploads(self, uploads: Sequence[VolumeUpload]) -> list:
        """Main thread: tag the uploaded volumes with their case IDs; returns the IDs."""
        ids = []
        for upload in uploads:
            if upload.case_id is None:
                continue
            node = self.logics.scene.GetNodeByID(upload.node_id)
            if node is not None:
                CaseNodes.tag(node, upload.case_id, ROLE_IMAGE)
            ids.append(upload.case_id)
        return ids

    def add_volume(self, volume: Any) -> str:
        """Send one scene volume to the service; returns its case ID (its existing one if sent before)."""
        if (
            volume is not None
            and volume.GetAttribute(ATTR_ROLE) == ROLE_IMAGE
            and volume.GetAttribute(ATTR_CASE_ID)
        ):
            return volume.GetAttribute(ATTR_CASE_ID)
        uploads = self.upload_volume_files(self.prepare_volume_uploads([volume]))
        return self.finish_volume_uploads(uploads)[0]

    def add_all_volumes(self) -> tuple:
        """Send every scalar volume that is no case yet; returns (case IDs, skipped-volume messages)."""
        volumes, skipped = self.volumes_to_add()
        if not volumes:
            return [], skipped
        uploads = self.upload_volume_files(self.prepare_volume_uploads(volumes))
        return self.finish_volume_uploads(uploads), skipped

    def add_folder(self, path: Path, progress: Callable | None = None, cancelled: Callable = bool) -> list:
        """Any thread: add a folder's images (and ``<ID>_label`` files); a local service reads in place."""
        from reciprocalseg.data.io import discover_cases

        client = self.require_client()
        upload = self.service is None
        cases = list(discover_cases(path))
        added = []
        for n, case in enumerate(cases):
            if cancelled():
                break
            if progress is not None:
                progress(n / max(len(cases), 1), f"adding {case.case_id}")
            case_id = client.add_case(str(case.image), case_id=case.case_id, upload=upload).id
            if case.label is not None:
                client.put_label(case_id, str(case.label))
            added.append(case_id)
        return added

    def list_cases(self) -> list:
        return self.require_client().list_cases()

    def overview(self) -> tuple:
        """Any thread: (cases, class settings, plan, retraining settings): the case list with what
        follows the labels (the class count, the plan, the corrections since the last round)."""
        return self.list_cases(), self.class_settings(), self.plan(), self.auto_retrain_settings()

    def delete_case_on_service(self, case_id: str) -> None:
        self.require_client().delete_case(case_id)

    def remove_case_nodes(self, case_id: str) -> None:
        """Main thread: the case's label, predictions and disagreement map leave the scene."""
        self.nodes.remove_case(case_id)

    def delete_case(self, case_id: str) -> None:
        self.delete_case_on_service(case_id)
        self.remove_case_nodes(case_id)

    # ------------------------------------------------------------------ showing a case

    def fetch_case(self, case_id: str, need_image: bool, need_label: bool) -> CaseFiles:
        """Any thread: download what the scene lacks (the label only if the service has one)."""
        from reciprocalseg.client import ServiceError

        client = self.require_client()
        files = CaseFiles(case_id)
        folder = self._scratch()
        if need_image:
            files.image = client.get_image(case_id, str(folder / f"{case_id}.nrrd"))
        if need_label:
            try:
                files.label = client.get_label(case_id, str(folder / f"{case_id}_label.nrrd"))
            except ServiceError as error:
                if error.status_code != 404:
                    raise
        return files

    def needs(self, case_id: str) -> tuple:
        """(need_image, need_label): what ``fetch_case`` must download for ``apply_case``."""
        return self.case_node(case_id, ROLE_IMAGE) is None, self.case_node(case_id, ROLE_LABEL) is None

    def apply_case(self, case_id: str, files: CaseFiles) -> tuple:
        """Main thread: case volume and label segmentation in the scene, only this case shown."""
        try:
            volume = self.case_node(case_id, ROLE_IMAGE)
            if volume is None:
                if files.image is None:
                    raise RuntimeError(f"The image of {case_id} was not downloaded.")
                volume = read_volume(self.logics.volumes, files.image, case_id)
                CaseNodes.tag(volume, case_id, ROLE_IMAGE)
                keep_file(volume, files.image, self._keep(case_id))
            label = self.case_node(case_id, ROLE_LABEL)
            if label is None:
                label = self._label_from_file(case_id, files.label, volume)
        finally:
            for path in (files.image, files.label):
                if path is not None:
                    shutil.rmtree(Path(path).parent, ignore_errors=True)
        self.nodes.show_only(case_id)
        return volume, label

    def show_case(self, case_id: str) -> tuple:
        """Case volume and editable label in the scene (downloaded when missing); others hidden."""
        need_image, need_label = self.needs(case_id)
        files = (
            self.fetch_case(case_id, need_image, need_label)
            if need_image or need_label
            else CaseFiles(case_id)
        )
        return self.apply_case(case_id, files)

    def case_volume(self, case_id: str) -> Any:
        return self.show_case(case_id)[0]

    def _keep(self, case_id: str) -> Path:
        return self.keep_dir / case_id

    def _class_names(self, count: int) -> list:
        """Names of classes 1..count: the case label's segment names where it has them."""
        names = [default_class_name(k) for k in range(1, count + 1)]
        for node in self.nodes.tagged():
            if node.GetAttribute(ATTR_ROLE) != ROLE_LABEL:
                continue
            segmentation = node.GetSegmentation()
            for k in range(1, count + 1):
                segment = segmentation.GetSegment(segment_id_for_class(k))
                if segment is not None and segment.GetName():
                    names[k - 1] = segment.GetName()
            break
        return names

    def _segmentation_from_label_file(
        self, path: Path | None, case_id: str, role: str, volume: Any, colors: Sequence
    ) -> tuple:
        """(a new segmentation for ``role`` of a case from a label-map file (or empty when None),
        whether the file had unannotated voxels).

        Unannotated voxels (255, a partial label) are in no segment; they never become a class."""
        from slicer.util import arrayFromVolume, arrayFromVolumeModified

        segmentation = self.nodes.replace(
            case_id, role, "vtkMRMLSegmentationNode", f"{case_id} {role}", volume
        )
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        label_node = None
        partial = False
        try:
            present = 0
            if path is not None:
                label_node = read_volume(
                    self.logics.volumes, path, f"{case_id} {role} labelmap", labelmap=True
                )
                # On the scan's local grid, so under the scan's transform (the import resamples
                # across any transform between the label map and the segmentation).
                CaseNodes.place_like(label_node, volume)
                voxels = arrayFromVolume(label_node)
                unannotated = voxels == UNANNOTATED
                partial = bool(unannotated.any())
                if partial:
                    voxels[unannotated] = 0
                    arrayFromVolumeModified(label_node)
                present = int(voxels.max())
            count = max(self.class_count() or 0, present, 1)
            names = self._class_names(count)
            if label_node is None:
                for k in range(1, count + 1):
                    segmentation.GetSegmentation().AddEmptySegment(
                        segment_id_for_class(k), names[k - 1], colors[(k - 1) % len(colors)]
                    )
            else:
                import_label_node(label_node, segmentation, count, colors, names)
        finally:
            self.nodes.remove(label_node)
        return segmentation, partial

    def _label_from_file(self, case_id: str, path: Path | None, volume: Any) -> Any:
        """The case's editable label from the service's label file; a partial label (scribbles
        submitted before) also becomes the case's scribble segmentation, unless it has one."""
        label, partial = self._segmentation_from_label_file(path, case_id, ROLE_LABEL, volume, LABEL_COLORS)
        label.SetName(f"{case_id} label")
        if partial and self.case_node(case_id, ROLE_SCRIBBLES) is None:
            self._scribbles_from_label_file(case_id, path, volume)
        return label

    def _scribbles_from_label_file(self, case_id: str, path: Path, volume: Any) -> Any:
        """Main thread: the strokes of a partial label file back in a new scribble segmentation."""
        from slicer.util import arrayFromVolume

        label_node = read_volume(self.logics.volumes, path, f"{case_id} scribbles labelmap", labelmap=True)
        try:
            CaseNodes.place_like(label_node, volume)  # on the scan's local grid, as the label
            voxels = arrayFromVolume(label_node)
            annotated = voxels[voxels != UNANNOTATED]
            count = max(self.class_count() or 0, int(annotated.max()) if annotated.size else 0, 1)
            scribbles = self.nodes.replace(
                case_id, ROLE_SCRIBBLES, "vtkMRMLSegmentationNode", f"{case_id} scribbles", volume
            )
            scribbles.CreateDefaultDisplayNodes()
            scribbles.SetReferenceImageGeometryParameterFromVolumeNode(volume)
            import_scribble_label(label_node, scribbles, self._class_names(count), LABEL_COLORS)
            return scribbles
        finally:
            self.nodes.remove(label_node)

    # ------------------------------------------------------------------ submitting a label

    def prepare_label_upload(self, case_id: str, segmentation: Any, volume: Any) -> Path:
        """Main thread: the segmentation as a label map (class by segment identity) on the scan's grid."""
        if volume is None or segmentation is None:
            raise RuntimeError(f"Select {case_id} again: its volume or label is no longer in the scene.")
        names = self._class_names(max(self.class_count() or 0, 1))
        label_node = export_label_node(segmentation, volume, self.nodes, names)
        try:
            path = write_volume(label_node, self._scratch() / f"{case_id}_label.nrrd")
        finally:
            self.nodes.remove(label_node)
        if self.case_node(case_id, ROLE_LABEL) is None and not segmentation.GetAttribute(ATTR_ROLE):
            CaseNodes.tag(segmentation, case_id, ROLE_LABEL)
        return path

    def upload_label_file(self, case_id: str, path: Path, author: str | None = None) -> Any:
        """Any thread: upload the label file as the case's new label version, then delete it."""
        try:
            return self.require_client().put_label(case_id, str(path), author=author)
        finally:
            shutil.rmtree(Path(path).parent, ignore_errors=True)

    def submit_segmentation(
        self, case_id: str, segmentation: Any, volume: Any, author: str | None = None
    ) -> Any:
        return self.upload_label_file(
            case_id, self.prepare_label_upload(case_id, segmentation, volume), author
        )

    # ------------------------------------------------------------------ submitting, for the panel

    def prepare_submission(self, case_id: str, scribbles: bool = False, action: str = "upload") -> Submission:
        """Main thread: the case's label (or with ``scribbles`` its strokes) exported for upload;
        ``action="refine"``: its strokes, to refine; ``"accept"``: nothing to export."""
        if action == "accept":
            return Submission(case_id, False, None, action=action)
        if scribbles or action == "refine":
            path, summary = self.prepare_scribble_upload(case_id)
            return Submission(case_id, True, path, summary, action=action)
        segmentation = self.case_node(case_id, ROLE_LABEL)
        path = self.prepare_label_upload(case_id, segmentation, self.case_node(case_id, ROLE_IMAGE))
        return Submission(case_id, False, path)

    def upload_submission(self, submission: Submission, author: str | None = None) -> Any:
        """Any thread: send a prepared submission (a new label version, a refine or an accept)."""
        if submission.action == "refine":
            return self.fetch_refined(submission.case_id, submission.path)
        if submission.action == "accept":
            return self.accept_refined_on_service(submission.case_id)
        return self.upload_label_file(submission.case_id, submission.path, author)

    def finish_submission(self, submission: Submission, result: Any) -> str:
        """Main thread: the answer in the scene (the refined map, the accepted label); the message."""
        if submission.action == "refine":
            self.apply_refined(submission.case_id, result)
            result = self.last_refined
        elif submission.action == "accept":
            self.apply_accepted(submission.case_id)
        submission.result = result
        return submission.done_message()

    @staticmethod
    def discard_submission(submission: Submission) -> None:
        """A submission the user declined: its file goes."""
        if submission.path is not None:
            shutil.rmtree(Path(submission.path).parent, ignore_errors=True)

    # ------------------------------------------------------------------ scribbles (partial labels)

    def scribble_segmentation(self, case_id: str) -> Any:
        """Main thread: the case's scribble segmentation, made when missing: empty segments
        Background and one per class, on the scan's grid and under its transform."""
        volume = self.case_node(case_id, ROLE_IMAGE)
        if volume is None:
            raise RuntimeError(f"Select {case_id} first: its volume is not in the scene.")
        scribbles = self.case_node(case_id, ROLE_SCRIBBLES)
        if scribbles is None:
            scribbles = self.nodes.replace(
                case_id, ROLE_SCRIBBLES, "vtkMRMLSegmentationNode", f"{case_id} scribbles", volume
            )
            scribbles.CreateDefaultDisplayNodes()
            scribbles.SetReferenceImageGeometryParameterFromVolumeNode(volume)
            add_scribble_segments(scribbles, self._class_names(max(self.class_count() or 0, 1)), LABEL_COLORS)
        self.nodes.show_only(case_id)
        return scribbles

    def prepare_scribble_upload(self, case_id: str, scribbles: Any = None) -> tuple:
        """Main thread: (file, ScribbleSummary): the strokes as a partial label map on the scan's
        grid (255 unpainted, 0 background, k class k). ScribbleError when nothing is painted."""
        volume = self.case_node(case_id, ROLE_IMAGE)
        scribbles = scribbles if scribbles is not None else self.case_node(case_id, ROLE_SCRIBBLES)
        if volume is None or scribbles is None:
            raise RuntimeError(f"Select {case_id} and paint its scribbles first.")
        names = self._class_names(max(self.class_count() or 0, 1))
        label_node, summary = export_scribble_node(scribbles, volume, self.nodes, names)
        try:
            path = write_volume(label_node, self._scratch() / f"{case_id}_label.nrrd")
        finally:
            self.nodes.remove(label_node)
        return path, summary

    def submit_scribbles(
        self, case_id: str, scribbles: Any = None, author: str | None = None
    ) -> ScribbleSummary:
        """The case's strokes uploaded as its new (partial) label version; returns what they annotate."""
        path, summary = self.prepare_scribble_upload(case_id, scribbles)
        self.upload_label_file(case_id, path, author)
        return summary

    # ------------------------------------------------------------------ prediction

    def fetch_prediction(self, case_id: str, need_image: bool = False, live: bool = False) -> tuple:
        """Any thread: predict and download teacher, student, disagreement; with the current round,
        or with ``live`` the latest checkpoint of the round in training (the current round if none)."""
        client = self.require_client()
        folder = self._scratch()
        result = client.predict(case_id, out_dir=str(folder), live=live)
        files = self.fetch_case(case_id, need_image, False) if need_image else CaseFiles(case_id)
        return result, files

    def apply_prediction(self, case_id: str, fetched: tuple) -> tuple:
        """Main thread: teacher (filled), student (outline), disagreement (zero transparent) on the scan."""
        result, files = fetched
        try:
            volume = self.case_node(case_id, ROLE_IMAGE)
            if volume is None:
                volume = self.apply_case(case_id, files)[0]
            self.last_prediction_score = result.score
            teacher = self._segmentation_from_label_file(
                result.teacher, case_id, ROLE_TEACHER, volume, TEACHER_COLORS
            )[0]
            student = self._segmentation_from_label_file(
                result.student, case_id, ROLE_STUDENT, volume, STUDENT_COLORS
            )[0]
            show_teacher(teacher)
            show_student(student)
            self.nodes.remove(self.case_node(case_id, ROLE_DISAGREEMENT))
            disagreement = read_volume(self.logics.volumes, result.disagreement, f"{case_id} disagreement")
            CaseNodes.tag(disagreement, case_id, ROLE_DISAGREEMENT)
            CaseNodes.place_like(disagreement, volume)
            keep_file(disagreement, result.disagreement, self._keep(case_id))
            show_disagreement(disagreement, self.logics.scene)
            self.last_prediction_model = self._mark_model(result, (teacher, student, disagreement))
        finally:
            shutil.rmtree(Path(result.teacher).parent, ignore_errors=True)
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

    def predict(self, case_id: str, live: bool = False) -> tuple:
        """Predict a case; returns (teacher segmentation, student segmentation, disagreement volume)."""
        return self.apply_prediction(case_id, self.fetch_prediction(case_id, self.needs(case_id)[0], live))

    def copy_student_to_label(self, case_id: str) -> Any:
        """Main thread: the case's editable label becomes a copy of the student's prediction."""
        student = self.case_node(case_id, ROLE_STUDENT)
        volume = self.case_node(case_id, ROLE_IMAGE)
        if student is None or volume is None:
            raise RuntimeError(f"Predict {case_id} first.")
        return self._copy_into_label(case_id, student, volume)

    def _copy_into_label(self, case_id: str, source_node: Any, volume: Any) -> Any:
        """Main thread: the case's editable label becomes a copy of ``source_node``'s segments."""
        label = self.case_node(case_id, ROLE_LABEL)
        if label is None:
            label = self._label_from_file(case_id, None, volume)
        CaseNodes.place_like(label, volume)
        target, source = label.GetSegmentation(), source_node.GetSegmentation()
        target.RemoveAllSegments()
        for i in range(source.GetNumberOfSegments()):
            segment_id = source.GetNthSegmentID(i)
            target.CopySegmentFromSegmentation(source, segment_id)
            target.GetSegment(segment_id).SetColor(*LABEL_COLORS[i % len(LABEL_COLORS)])
        self.nodes.show_only(case_id)
        return label

    # ------------------------------------------------------------------ refine from strokes, accept

    def prepare_refine(self, case_id: str, scribbles: Any = None) -> tuple:
        """Main thread: (file, ScribbleSummary): the case's strokes, painted over the shown prediction
        in its scribble segmentation, as a partial label map (as ``prepare_scribble_upload``)."""
        return self.prepare_scribble_upload(case_id, scribbles)

    def fetch_refined(
        self,
        case_id: str,
        path: Path,
        model: str = "student",
        seconds: float | None = None,
        need_image: bool = False,
    ) -> tuple:
        """Any thread: refine on the service (a copy of the current round's ``model`` adapted to the
        strokes; they are stored as the case's new partial label) and download the refined map."""
        client = self.require_client()
        try:
            result = client.refine(case_id, str(path), model=model, seconds=seconds, out_dir=self._scratch())
        finally:
            shutil.rmtree(Path(path).parent, ignore_errors=True)
        files = self.fetch_case(case_id, need_image, False) if need_image else CaseFiles(case_id)
        return result, files

    def apply_refined(self, case_id: str, fetched: tuple) -> Any:
        """Main thread: the refined map as the segmentation ``<case> refined (from round N, K strokes)``
        (filled, greens) beside teacher and student; the service's name in ``ReciprocalSeg.Model``."""
        result, files = fetched
        try:
            volume = self.case_node(case_id, ROLE_IMAGE)
            if volume is None:
                volume = self.apply_case(case_id, files)[0]
            refined = self._segmentation_from_label_file(
                result.labels, case_id, ROLE_REFINED, volume, REFINED_COLORS
            )[0]
            show_refined(refined)
            refined.SetAttribute(ATTR_MODEL, result.name)
            refined.SetName(f"{case_id} {ROLE_REFINED} ({refined_suffix(result.name)})")
            self.last_refined = result
        finally:
            shutil.rmtree(Path(result.labels).parent, ignore_errors=True)
        self.nodes.show_only(case_id)
        return refined

    def refine(self, case_id: str, model: str = "student", seconds: float | None = None) -> Any:
        """The case's scribbles (painted over the shown prediction) refine a copy of the current
        round's student (or teacher); returns the segmentation ``<case> refined``."""
        path, _ = self.prepare_refine(case_id)
        return self.apply_refined(
            case_id, self.fetch_refined(case_id, path, model, seconds, self.needs(case_id)[0])
        )

    def accept_refined_on_service(self, case_id: str) -> Any:
        """Any thread: the service stores the case's refined map as its new full label version."""
        return self.require_client().accept_refined(case_id)

    def apply_accepted(self, case_id: str) -> Any:
        """Main thread: the case's editable label becomes the refined map it was accepted as."""
        refined = self.case_node(case_id, ROLE_REFINED)
        volume = self.case_node(case_id, ROLE_IMAGE)
        if refined is None or volume is None:
            raise RuntimeError(f"Refine {case_id} first.")
        return self._copy_into_label(case_id, refined, volume)

    def accept_refined(self, case_id: str) -> Any:
        """One click: the refined map becomes the case's full label, on the service and in the scene;
        returns the new label version."""
        version = self.accept_refined_on_service(case_id)
        self.apply_accepted(case_id)
        return version

    # ------------------------------------------------------------------ retrain by itself

    def auto_retrain_settings(self) -> tuple:
        """Any thread: (K or None when off, minutes, corrections since the latest round, message)."""
        settings = self.require_client().settings()
        return (
            settings.get("retrain_after"),
            settings.get("retrain_minutes"),
            settings.get("corrections"),
            settings.get("retrain_message"),
        )

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
