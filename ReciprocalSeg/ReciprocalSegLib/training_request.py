"""The panel's training choices as the arguments of ``ReciprocalSegLoop.start_training``.

A time budget (minutes > 0) sizes both phases from the measured speed, so the iterations are
then left to the service; 0 in either field means "not set" (the preset's value).
"""

from __future__ import annotations

MAX_MINUTES = 1440.0  # the service's TrainingRequest limit (tests/slicer/test_panel_rules.py checks it)


def training_request(preset: str, minutes: float, iterations: int, device: str, warm_start: bool) -> dict:
    """Keyword arguments for ``start_training``: ``iterations`` per phase (both phases) and
    ``minutes``, each None when 0 (the service ignores the iterations under a budget). ValueError
    names a value out of range."""
    if not 0 <= minutes <= MAX_MINUTES:
        raise ValueError(f"The time budget must be 0 to {MAX_MINUTES:g} minutes, not {minutes:g}.")
    if iterations < 0:
        raise ValueError(f"The iterations must be 0 (the preset's) or more, not {iterations}.")
    budget = float(minutes) if minutes else None
    per_phase = int(iterations) if iterations else None
    return {
        "preset": preset,
        "iterations": per_phase,
        "supervised_iterations": per_phase,
        "device": device,
        "warm_start": bool(warm_start),
        "minutes": budget,
    }
