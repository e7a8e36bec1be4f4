"""Exceptions with messages meant for the user: each names the problem and what to do."""

from __future__ import annotations

import sys
from collections.abc import Callable

# Exit codes of the commands (`reciprocalseg ...`, `python -m reciprocalseg.training.distributed`):
# 0 success, 1 an error (message on stderr), 2 a usage error (argparse), 3 cancelled.
EXIT_ERROR, EXIT_CANCELLED = 1, 3


class ReciprocalSegError(Exception):
    """Base class of every error this package raises on purpose."""


class DataError(ReciprocalSegError, ValueError):
    """An input file or array is unusable (unreadable, wrong grid, bad label values...)."""


class TrainingError(ReciprocalSegError, RuntimeError):
    """Training cannot start or continue (bad configuration, out of memory...)."""


class CancelledError(ReciprocalSegError):
    """Training was cancelled by a signal or a cancel flag; a checkpoint was written."""


def exit_code_of(command: Callable[[], int]) -> int:
    """Run a command; its exit code, or the code of how it failed with the message on stderr."""
    try:
        return command()
    except CancelledError as exc:
        print(f"cancelled: {exc}. Rerun the same command to resume.", file=sys.stderr)
        return EXIT_CANCELLED
    except ReciprocalSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CANCELLED
