"""The case table's rows and their order (plain Python, tested on the service's real answers).

The panel sorts the table itself (a header click calls ``sort_cases``) instead of Qt's item
sorting: Qt compares item text, which puts "10" before "9", and cases without a value (never
predicted) must stay last in either direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CASE_COLUMNS = ("Case", "Status", "Disagreement", "QA flags")
COLUMN_QA = CASE_COLUMNS.index("QA flags")


def _score_text(score: float | None) -> str:
    return "" if score is None else f"{score:.4f}"


def _qa_text(flags: int | None) -> str:
    return "" if flags is None else str(int(flags))


def case_row(case: Any) -> tuple[str, str, str, str]:
    """The table's texts for one ``CaseInfo``: ID, status, disagreement score, QA flag count
    (empty: not predicted with the current round, or predicted before QA existed)."""
    return (
        case.id,
        case.status,
        _score_text(getattr(case, "score", None)),
        _qa_text(getattr(case, "qa_flags", None)),
    )


def _sort_key(case: Any, column: int) -> Any:
    if column == 0:
        return case.id
    if column == 1:
        return case.status
    if column == 2:
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
