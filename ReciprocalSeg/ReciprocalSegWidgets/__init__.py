"""The Qt side of the ReciprocalSeg panel that does not fit in ReciprocalSeg.py: widgets built in
code (dialogs) and the application-side helpers of the module logic.

Only Slicer's application imports this package (it needs ``qt`` and ``slicer``). Every decision
stays in ReciprocalSegLib (no Qt, tested on Slicer's real MRML); these files only show and forward.
A folder, not files beside ReciprocalSeg.py: Slicer registers every ``.py`` file of a scripted
module's folder as a module (qSlicerScriptedLoadableModuleFactory::isValidFile).
"""
