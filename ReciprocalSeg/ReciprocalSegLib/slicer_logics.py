"""The scene and the module logics the scene code needs, looked up in one place.

Inside the Slicer application they are ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``;
with ``slicer-core`` (no application, no ``slicer.modules``) a test builds them itself with
``SlicerLogics.standalone()``. Nothing else in the package reaches for a global.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SlicerLogics:
    """``scene`` (vtkMRMLScene), ``volumes`` (vtkSlicerVolumesLogic), ``colors`` (vtkMRMLColorLogic)."""

    scene: Any
    volumes: Any
    colors: Any
    application: Any = None

    @classmethod
    def from_application(cls) -> SlicerLogics:
        """The running Slicer application's scene and module logics."""
        import slicer

        return cls(
            scene=slicer.mrmlScene,
            volumes=slicer.modules.volumes.logic(),
            colors=slicer.modules.colors.logic(),
            application=slicer.app.applicationLogic(),
        )

    @classmethod
    def standalone(cls, scene: Any = None) -> SlicerLogics:
        """A scene with the logics wired the way Slicer's application wires them (for slicer-core).

        The application logic holds the module logics by name (the volumes logic finds the
        colour logic through ``GetModuleLogic("Colors")``) and the segmentation converter
        rules are registered, as ``qSlicerSegmentationsModule::setup()`` does at start-up.
        """
        import slicer

        register_segmentation_converters()
        scene = scene if scene is not None else slicer.vtkMRMLScene()
        application = slicer.vtkSlicerApplicationLogic()
        application.SetMRMLScene(scene)
        colors = slicer.vtkSlicerColorLogic()
        colors.SetMRMLApplicationLogic(application)
        colors.SetMRMLScene(scene)
        volumes = slicer.vtkSlicerVolumesLogic()
        volumes.SetMRMLApplicationLogic(application)
        volumes.SetMRMLScene(scene)
        segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        segmentations.SetMRMLApplicationLogic(application)
        segmentations.SetMRMLScene(scene)
        application.SetModuleLogic("Colors", colors)
        application.SetModuleLogic("Volumes", volumes)
        application.SetModuleLogic("Segmentations", segmentations)
        # slicer.util's array helpers look nodes up in slicer.mrmlScene.
        slicer.mrmlScene = scene
        logics = cls(scene=scene, volumes=volumes, colors=colors, application=application)
        logics._keep = segmentations  # type: ignore[attr-defined]  # keeps the logic alive
        return logics


_CONVERTERS_REGISTERED = False


def register_segmentation_converters() -> None:
    """Binary labelmap <-> closed surface rules (the application registers them at start-up)."""
    global _CONVERTERS_REGISTERED
    if _CONVERTERS_REGISTERED:
        return
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    for rule in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
    ):
        factory.RegisterConverterRule(rule())
    _CONVERTERS_REGISTERED = True
