"""The case table's rows and their order (plain Python, tested on the service's real answers).

The panel sorts the table itself (a header click calls ``sort_cases``) instead of Qt's item
sorting: Qt compares item text, which puts "10" before "9", and cases without a value (never
predicted) must stay last in either direction.

*Annotation* and *Annotated* come from the service's case fields ``annotation`` ("full",
"partial" or "none") and ``annotated_fraction`` (0..1 of the case's voxels): a case labelled
from scribbles is "partial" with the fraction of voxels its strokes cover. A service from before
partial labels does not send them: the cells then read "?" (sorted last).

*Channels* is the number of images the case holds (1, or 2 for T2 + ADC; the service's ``channels``
lists their names, empty for one image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CASE_COLUMNS = ("Case", "Status", "Channels", "Annotation", "Annotated", "Disagreement", "QA flags")
COLUMN_CHANNELS = CASE_COLUMNS.index("Channels")
COLUMN_ANNOTATION = CASE_COLUMNS.index("Annotation")
COLUMN_ANNOTATED = CASE_COLUMNS.index("Annotated")
COLUMN_SCORE = CASE_COLUMNS.index("Disagreement")
COLUMN_QA = CASE_COLUMNS.index("QA flags")
# A first click on these puts the highest first (the most uncertain or flagged cases on top).
DESCENDING_FIRST = (COLUMN_SCORE, COLUMN_QA)
UNKNOWN = "?"

# The service's ``annotation`` values, as the table shows them, in their sort order.
ANNOTATION_TEXT = {"full": "full", "partial": "partial", "none": "unlabelled"}
ANNOTATION_ORDER = {value: rank for rank, value in enumerate(ANNOTATION_TEXT)}


def _annotation(case: Any) -> str | None:
    value = getattr(case, "annotation", None)
    return value if value in ANNOTATION_TEXT else None


def _fraction(case: Any) -> float | None:
    value = getattr(case, "annotated_fraction", None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        return None
    return float(value)


def annotation_text(case: Any) -> str:
    """``full``, ``partial`` or ``unlabelled``; ``?`` when the service does not say."""
    value = _annotation(case)
    return UNKNOWN if value is None else ANNOTATION_TEXT[value]


def fraction_text(case: Any) -> str:
    """The annotated share of the voxels in percent, three significant digits (a scribbled case is
    often well under 1 %): ``100 %``, ``0.52 %``, ``0 %``; ``?`` when the service does not say."""
    value = _fraction(case)
    return UNKNOWN if value is None else f"{100 * value:.3g} %"


def _score_text(score: float | None) -> str:
    return "" if score is None else f"{score:.4f}"


def _qa_text(flags: int | None) -> str:
    return "" if flags is None else str(int(flags))


def channel_count(case: Any) -> int:
    """How many images the case holds (a service from before several images per case: one)."""
    return max(1, len(getattr(case, "channels", None) or []))


def case_row(case: Any) -> tuple:
    """The table's texts for one ``CaseInfo``: ID, status, channel count, annotation, annotated
    fraction, disagreement score, QA flag count (empty: not predicted with the current round, or
    predicted before QA existed)."""
    return (
        case.id,
        case.status,
        str(channel_count(case)),
        annotation_text(case),
        fraction_text(case),
        _score_text(getattr(case, "score", None)),
        _qa_text(getattr(case, "qa_flags", None)),
    )


def _sort_key(case: Any, column: int) -> Any:
    if column == 0:
        return case.id
    if column == 1:
        return case.status
    if column == COLUMN_CHANNELS:
        return channel_count(case)
    if column == COLUMN_ANNOTATION:
        value = _annotation(case)
        return None if value is None else ANNOTATION_ORDER[value]
    if column == COLUMN_ANNOTATED:
        return _fraction(case)
    if column == COLUMN_SCORE:
        return getattr(case, "score", None)
    if column == COLUMN_QA:
        return getattr(case, "qa_flags", None)
    raise ValueError(f"The case table has no column {column}; it has {len(CASE_COLUMNS)}.")


def sort_cases(cases: Sequence[Any], column: int, descending: bool = False) -> list:
    """Cases ordered by one column (numbers as numbers; ties by case ID); no value always last."""
    known = [c for c in cases if _sort_key(c, column) is not None]
    missing = [c for c in cases if _sort_key(c, column) is None]
    known.sort(key=lambda c: c.id)  # stable sorts: equal values keep the ID order
    known.sort(key=lambda c: _sort_key(c, column), reverse=descending)
    missing.sort(key=lambda c: c.id)
    return known + missing


def next_sort(previous: tuple, column: int) -> tuple:
    """(column, descending) after a header click: the same column flips its direction; another one
    starts ascending, or descending for disagreement and QA flags."""
    previous_column, descending = previous
    if column == previous_column:
        return column, not descending
    return column, column in DESCENDING_FIRST


def labelled_summary(cases: Sequence[Any]) -> str:
    """``"2 fully and 1 partially labelled of 6 cases"``; from the status alone (``"3 labelled of
    6 cases"``) when the service does not report the annotation."""
    if cases and all(_annotation(c) is not None for c in cases):
        full = sum(1 for c in cases if _annotation(c) == "full")
        partial = sum(1 for c in cases if _annotation(c) == "partial")
        return f"{full} fully and {partial} partially labelled of {len(cases)} cases"
    labelled = sum(1 for c in cases if c.status == "labelled")
    return f"{labelled} labelled of {len(cases)} cases"
