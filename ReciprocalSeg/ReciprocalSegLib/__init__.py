"""ReciprocalSeg's scene logic, without Qt (Slicer's ``<Module>Lib/`` convention).

Everything here runs on Slicer's MRML classes, ``slicer.util`` array helpers, vtk and the core
package ``reciprocalseg``; the same code runs in the Slicer application and on the PyPI wheel
``slicer-core`` (tests/slicer/test_mrml_*.py). ReciprocalSeg.py keeps Qt, layouts and views.

- ``slicer_logics``: the module logics (segmentations, volumes, colours) and the scene, found in one place.
- ``scene_cases``: node attributes that tie nodes to cases, lookup, placement, show/hide, removal.
- ``volume_files``: volumes to and from NRRD files through storage nodes and the volumes logic.
- ``segment_export``: segmentation <-> label map, class values by segment identity.
- ``scribbles``: strokes per class and background -> a partial label map (255 where unpainted).
- ``prediction_display``: teacher (filled), student (outline), disagreement (zero transparent).
- ``learning_curve``: the losses table and plot nodes.
- ``case_table``, ``status_text``: the case table's rows and the panel's texts (plain Python).
- ``tasks``: a worker thread + queue so that the GUI never waits on the network or a process.
- ``logic``: the annotation loop, split into network steps (any thread) and scene steps (main thread).
"""
