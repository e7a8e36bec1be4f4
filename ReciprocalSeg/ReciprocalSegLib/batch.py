"""What a batch add (*Add all loaded*, *Add folder*) did: all-or-clear.

A batch goes on past a volume that fails (NaN voxels, a refused file): every volume uploaded is
tagged with its case in the scene at once, so a retry skips it; the ones that failed are named
(by their node name, or file name for a folder) with the service's reason, and a retry sends
only them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BatchResult:
    """added: case IDs uploaded now; existing: cases the service had already (skipped);
    failed: (volume or file name, reason) for each one not added; skipped: volumes that cannot
    be cases (vector, RGB, ...), with the reason; cancelled: stopped before the end."""

    added: list = field(default_factory=list)
    existing: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    cancelled: bool = False

    def failure_text(self) -> str:
        """One line per volume that was not added: ``CT 3: the image has NaN voxels ...``."""
        return "\n".join(f"{name}: {reason}" for name, reason in self.failed)

    def message(self) -> str:
        """The status line: ``Added 3 cases (2 already there); 1 failed: CT 3.``"""
        text = f"Added {len(self.added)} case{'' if len(self.added) == 1 else 's'}"
        if self.existing:
            text += f" ({len(self.existing)} already there)"
        if self.failed:
            text += f"; {len(self.failed)} failed: " + ", ".join(name for name, _ in self.failed)
        return text + ("; cancelled." if self.cancelled else ".")


class BatchAddError(RuntimeError):
    """Some volumes of a batch were not added (the others were, and are tagged)."""

    def __init__(self, result: BatchResult) -> None:
        super().__init__(
            f"{len(result.failed)} of the volumes could not be added (the other "
            f"{len(result.added) + len(result.existing)} are cases now; fix these and add again):\n"
            + result.failure_text()
        )
        self.result = result
