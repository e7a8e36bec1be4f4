"""Installing the packages the service needs into Slicer's Python (the one Lib file that needs the
application: its dialogs, Slicer's pip installer and the PyTorch extension).

Which packages, and which never to touch, is decided by ``reciprocalseg.service.slicer_requirements``.
torch comes from the PyTorch extension (the CUDA or CPU build that fits the machine); the rest
from pip with Slicer's bundled packages pinned so that pip cannot replace them. pip must run on
the main thread (docs/SLICER.md), so this is the one blocking step of *Start / connect*, behind
a confirmation and Slicer's own progress display.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from reciprocalseg.service import slicer_requirements


def ensure_requirements(scratch: Path, askConfirmation: bool = True) -> bool:
    """Install the missing packages (after confirmation); False if the user declined."""
    import slicer

    missing = slicer_requirements.missing_requirements()
    if not missing:
        return True
    torch_requirement, others = slicer_requirements.split_torch(missing)
    if askConfirmation:
        text = "ReciprocalSeg needs Python packages that this Slicer does not have yet:\n\n"
        text += "\n".join("  " + spec for spec in missing)
        if torch_requirement is not None:
            text += (
                "\n\nPyTorch is installed by the PyTorch extension, which picks the build that fits your GPU "
                "(it asks for its own confirmation)."
            )
        text += "\n\nInstall now? This can take several minutes."
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle="ReciprocalSeg: install packages"):
            return False
    if torch_requirement is not None:
        try:
            import PyTorchUtils
        except ImportError as error:
            raise RuntimeError(
                "ReciprocalSeg needs the PyTorch extension: install it (Extensions Manager), restart."
            ) from error
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=askConfirmation, torchVersionRequirement=torch_requirement or None
        )
        if torch is None:
            return False
    if others:
        constraints = slicer_requirements.constraints_for_bundled()
        constraints_file = None
        if constraints:
            path = Path(scratch) / "slicer-bundled-constraints.txt"
            path.write_text("\n".join(constraints) + "\n", encoding="utf-8")
            constraints_file = str(path)
        # slicer.packaging.pip_ensure on Slicer >= 5.12, slicer.util.pip_install before.
        slicer_requirements.install_with_slicer(others, constraints_file)
    importlib.invalidate_caches()
    still_missing = slicer_requirements.missing_requirements()
    if still_missing:
        raise RuntimeError("Still missing after installation: " + ", ".join(still_missing))
    return True
