"""ReciprocalSeg core: reciprocal learning for semi-supervised 3D segmentation.

Importable without 3D Slicer. See docs/DESIGN.md for how the parts fit together.
"""

__version__ = "0.1.0"
