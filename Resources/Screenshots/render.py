"""Render the extension's screenshots offscreen with 3D Slicer's own displayable managers.

Slicer's MRML scene, volume and segmentation logics and its slice/3D displayable managers come
from the PyPI package ``slicer-core`` (Slicer's non-Qt libraries); no Slicer application, no Qt.
The pictures show one real left-atrium scan with its reference label, the teacher's prediction
(filled), the student's prediction (outline) and the teacher-student disagreement map (heat
overlay, zero transparent), in axial, sagittal and coronal slices and in 3D.

Usage (see README.md beside this file for the whole recipe, training included)::

    VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow python Resources/Screenshots/render.py \\
        --image CASE_image.nrrd --label CASE_label.nrrd \\
        --teacher preds/CASE_teacher.nii.gz --student preds/CASE_student.nii.gz \\
        --disagreement preds/CASE_disagreement.nii.gz --out Resources/Screenshots

What Qt does in Slicer is done here by hand, in the few lines it takes: the slice view's image
actor (CTK's light-box renderer manager draws the slice logic's blended image in Slicer) and the
camera placement of the 3D view.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # headless: EGL, no X

import slicer  # noqa: E402  (slicer-core)
import vtk  # noqa: E402
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

TEACHER_RGB = (0.15, 0.45, 1.0)  # blue, filled (the module's colours)
STUDENT_RGB = (1.0, 0.55, 0.0)  # orange, outline
LABEL_RGB = (0.2, 0.9, 0.3)  # green, the reference label
ORIENTATIONS = ("Axial", "Sagittal", "Coronal")
MAX_PNG_BYTES = 300 * 1024


class Scene:
    """A real MRML scene with the logics the displayable managers need."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.app_logic.SetSliceLogics(vtk.vtkCollection())
        self.app_logic.SetViewLogics(vtk.vtkCollection())
        self.colors = slicer.vtkSlicerColorLogic()
        self.colors.SetMRMLApplicationLogic(self.app_logic)
        self.colors.SetMRMLScene(self.scene)  # adds Slicer's default colour tables (Grey, ...)
        self.app_logic.SetModuleLogic("Colors", self.colors)  # the volumes logic looks it up by name
        self.volumes = slicer.vtkSlicerVolumesLogic()
        self.volumes.SetMRMLScene(self.scene)
        self.volumes.SetMRMLApplicationLogic(self.app_logic)
        self.segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentations.SetMRMLScene(self.scene)
        self.segmentations.SetMRMLApplicationLogic(self.app_logic)
        # The application registers these at start-up; without them no surface for the 3D view.
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())

    def volume(self, path: Path, name: str, labelmap: bool = False) -> object:
        node = self.volumes.AddArchetypeVolume(str(path), name, 1 if labelmap else 0)
        if node is None:
            raise SystemExit(f"cannot read {path}")
        return node

    def segmentation(
        self, label_path: Path, name: str, rgb: tuple[float, float, float], image: object
    ) -> object:
        labelmap = self.volume(label_path, name + " labelmap", labelmap=True)
        seg = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        seg.SetReferenceImageGeometryParameterFromVolumeNode(image)
        if not self.segmentations.ImportLabelmapToSegmentationNode(labelmap, seg):
            raise SystemExit(f"cannot import {label_path} as a segmentation")
        self.scene.RemoveNode(labelmap)
        seg.CreateDefaultDisplayNodes()
        segmentation = seg.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segmentation.GetNthSegment(i).SetColor(*rgb)
        seg.CreateClosedSurfaceRepresentation()
        return seg


def style_segmentation(
    seg: object, fill: bool, outline: bool, fill_opacity: float, opacity_3d: float
) -> None:
    display = seg.GetDisplayNode()
    display.SetVisibility2DFill(fill)
    display.SetVisibility2DOutline(outline)
    display.SetOpacity2DFill(fill_opacity)
    display.SetOpacity2DOutline(1.0)
    display.SetSliceIntersectionThickness(3 if outline and not fill else 2)
    display.SetOpacity3D(opacity_3d)
    display.SetPreferredDisplayRepresentationName3D("Closed surface")


def style_disagreement(node: object, scene: Scene) -> None:
    """Heat colours; values near zero transparent (thresholded out of the foreground layer)."""
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    heat = slicer.vtkMRMLPETProceduralColorNode()
    heat.SetTypeToHeat()
    heat.SetName("disagreement heat")
    scene.scene.AddNode(heat)
    display.SetAndObserveColorNodeID(heat.GetID())
    values = vtk_to_numpy(node.GetImageData().GetPointData().GetScalars())
    top = float(np.percentile(values[values > 0], 99)) if np.any(values > 0) else 1.0
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, top)
    display.SetApplyThreshold(True)
    display.SetAutoThreshold(False)
    display.SetLowerThreshold(0.1 * top)
    display.SetUpperThreshold(float(values.max()) + 1.0)


def label_extent_ras(label: object) -> tuple[tuple[float, float, float], float]:
    """World (RAS) centre of the label's foreground, where the slices are cut, and its largest size."""
    array = vtk_to_numpy(label.GetImageData().GetPointData().GetScalars())
    dims = label.GetImageData().GetDimensions()
    kji = np.argwhere(array.reshape(dims[2], dims[1], dims[0]) > 0)
    ijk_to_ras = vtk.vtkMatrix4x4()
    label.GetIJKToRASMatrix(ijk_to_ras)
    corners = [ijk_to_ras.MultiplyPoint([*p[::-1], 1.0])[:3] for p in (kji.min(axis=0), kji.max(axis=0))]
    centre = ijk_to_ras.MultiplyPoint([*kji.mean(axis=0)[::-1], 1.0])[:3]
    return tuple(centre), float(np.max(np.abs(np.subtract(*corners))))


def offscreen_window(size: int) -> vtk.vtkRenderWindow:
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(size, size)
    window.SetMultiSamples(0)
    window.SetAlphaBitPlanes(1)
    # Displayable managers observe the view's interactor (their widgets); offscreen, a generic one.
    interactor = vtk.vtkGenericRenderWindowInteractor()
    interactor.SetRenderWindow(window)
    interactor.Initialize()
    return window


def grab(window: vtk.vtkRenderWindow) -> np.ndarray:
    window.Render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(window)
    grabber.SetInputBufferTypeToRGB()
    grabber.ReadFrontBufferOff()
    grabber.Update()
    image = grabber.GetOutput()
    w, h, _ = image.GetDimensions()
    rgb = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, 3)
    return np.ascontiguousarray(rgb[::-1])  # VTK's origin is bottom-left


def slice_picture(
    scene: Scene,
    orientation: str,
    background: object,
    foreground: object,
    centre: tuple,
    field_mm: float,
    size: int,
) -> np.ndarray:
    """One slice view: Slice logic + Slicer's 2D displayable managers, background/foreground layers."""
    window = offscreen_window(size)
    renderer = vtk.vtkRenderer()
    renderer.GetActiveCamera().ParallelProjectionOn()
    window.AddRenderer(renderer)
    # In the application CTK's light-box renderer manager draws the slice logic's blended layers.
    mapper = vtk.vtkImageMapper()
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    image_actor = vtk.vtkActor2D()
    image_actor.SetMapper(mapper)
    image_actor.GetProperty().SetDisplayLocationToBackground()
    renderer.AddViewProp(image_actor)

    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(scene.app_logic)
    if not factory.IsDisplayableManagerRegistered("vtkMRMLSegmentationsDisplayableManager2D"):
        factory.RegisterDisplayableManager("vtkMRMLSegmentationsDisplayableManager2D")
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, renderer)

    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(scene.app_logic)
    logic.SetMRMLScene(scene.scene)
    scene.app_logic.GetSliceLogics().AddItem(logic)
    slice_node = logic.AddSliceNode(orientation)
    slice_node.SetOrientation(orientation)
    group.SetMRMLDisplayableNode(slice_node)
    composite = logic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(background.GetID())
    composite.SetForegroundVolumeID(foreground.GetID())
    composite.SetForegroundOpacity(0.6)

    logic.ResizeSliceNode(size, size)
    logic.FitSliceToBackground()
    fov = slice_node.GetFieldOfView()
    slice_node.SetFieldOfView(field_mm, field_mm, fov[2])  # square, around the atrium
    slice_node.JumpSliceByCentering(*centre)
    mapper.SetInputConnection(logic.GetImageDataConnection())
    return grab(window)


def threed_picture(scene: Scene, size: int) -> np.ndarray:
    """The 3D view: View logic + Slicer's 3D displayable managers (segment surfaces, camera)."""
    window = offscreen_window(size)
    renderer = vtk.vtkRenderer()
    renderer.SetUseDepthPeeling(True)
    window.AddRenderer(renderer)
    factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(scene.app_logic)
    for manager in (
        "vtkMRMLCameraDisplayableManager",
        "vtkMRMLViewDisplayableManager",
        "vtkMRMLSegmentationsDisplayableManager3D",
    ):
        if not factory.IsDisplayableManagerRegistered(manager):
            factory.RegisterDisplayableManager(manager)
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, renderer)
    logic = slicer.vtkMRMLViewLogic()
    logic.SetMRMLApplicationLogic(scene.app_logic)
    scene.app_logic.GetViewLogics().AddItem(logic)
    logic.SetMRMLScene(scene.scene)
    view = logic.AddViewNode("1")
    view.SetBoxVisible(False)
    view.SetAxisLabelsVisible(False)
    view.SetBackgroundColor(1.0, 1.0, 1.0)
    view.SetBackgroundColor2(0.85, 0.88, 0.95)
    group.SetMRMLDisplayableNode(view)
    window.Render()
    camera_node = group.GetDisplayableManagerByClassName("vtkMRMLCameraDisplayableManager").GetCameraNode()
    camera_node.RotateTo(slicer.vtkMRMLCameraNode.Anterior)
    renderer.ResetCamera()
    camera = renderer.GetActiveCamera()
    camera.Azimuth(-40)  # from the left-anterior side, where the pulmonary veins show
    camera.Elevation(20)
    camera.OrthogonalizeViewUp()
    renderer.ResetCamera()
    camera.Zoom(1.05)
    renderer.ResetCameraClippingRange()
    return grab(window)


def compose(pictures: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """2 x 2 grid."""
    h, w, _ = pictures[0].shape
    out = np.full((2 * h + gap, 2 * w + gap, 3), 255, np.uint8)
    for k, pic in enumerate(pictures):
        r, c = divmod(k, 2)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = pic
    return out


def write_png(rgb: np.ndarray, path: Path) -> int:
    """Write a PNG under MAX_PNG_BYTES (a 256-colour palette if the full-colour one is larger)."""
    from PIL import Image

    image = Image.fromarray(rgb)
    for candidate in (image, image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)):
        buffer = io.BytesIO()
        candidate.save(buffer, format="PNG", optimize=True)
        if buffer.tell() < MAX_PNG_BYTES:
            break
    path.write_bytes(buffer.getvalue())
    return buffer.tell()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("image", "label", "teacher", "student", "disagreement"):
        p.add_argument(f"--{name}", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=420, help="pixels per view (square)")
    args = p.parse_args(argv)

    scene = Scene()
    image = scene.volume(args.image, "case")
    label = scene.segmentation(args.label, "case label", LABEL_RGB, image)
    teacher = scene.segmentation(args.teacher, "case teacher", TEACHER_RGB, image)
    student = scene.segmentation(args.student, "case student", STUDENT_RGB, image)
    disagreement = scene.volume(args.disagreement, "case disagreement")
    style_segmentation(label, fill=False, outline=True, fill_opacity=0.0, opacity_3d=0.35)
    style_segmentation(teacher, fill=True, outline=False, fill_opacity=0.45, opacity_3d=0.6)
    style_segmentation(student, fill=False, outline=True, fill_opacity=0.0, opacity_3d=0.5)
    style_disagreement(disagreement, scene)
    reference = scene.volume(args.label, "case reference", labelmap=True)
    centre, largest = label_extent_ras(reference)

    args.out.mkdir(parents=True, exist_ok=True)
    pictures = []
    for orientation in ORIENTATIONS:
        pic = slice_picture(scene, orientation, image, disagreement, centre, 1.1 * largest, args.size)
        pictures.append(pic)
        n = write_png(pic, args.out / f"{orientation.lower()}.png")
        print(f"{orientation.lower()}.png: {pic.shape[1]}x{pic.shape[0]}, {n} bytes")
    pic = threed_picture(scene, args.size)
    pictures.append(pic)
    n = write_png(pic, args.out / "3d.png")
    print(f"3d.png: {pic.shape[1]}x{pic.shape[0]}, {n} bytes")
    overview = compose(pictures)
    n = write_png(overview, args.out / "overview.png")
    print(f"overview.png: {overview.shape[1]}x{overview.shape[0]}, {n} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
