"""Numbers as a person reads them: no binary float noise, units attached.

ITK computes spacings and origins in double precision, so a 10 mm spacing read from a file
often comes back as 9.999999999999998. Six significant digits are far finer than any scan's
geometry and hide that noise.
"""

from __future__ import annotations

from collections.abc import Iterable

SIGNIFICANT_DIGITS = 6


def clean_number(value: float, digits: int = SIGNIFICANT_DIGITS) -> float | int:
    """``value`` rounded to ``digits`` significant digits; an int when it is whole (10.0 -> 10)."""
    rounded = float(f"{float(value):.{digits}g}")
    return int(rounded) if rounded.is_integer() and abs(rounded) < 2**53 else rounded


def format_numbers(values: Iterable[float], unit: str = "") -> str:
    """``(10, 1.25, 0.625) mm``: a vector without float noise."""
    text = "(" + ", ".join(str(clean_number(v)) for v in values) + ")"
    return f"{text} {unit}" if unit else text


def format_size(size_xyz: Iterable[int]) -> str:
    """``64x64x48``: an image size in voxels."""
    return "x".join(str(int(n)) for n in size_xyz)


EXCERPT_CHARS = 60


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long it was: error messages quote
    what a user sent without echoing a megabyte of it back."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
