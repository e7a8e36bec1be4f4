"""Exceptions with messages meant for the user: each names the problem and what to do."""

from __future__ import annotations

import sys
from collections.abc import Callable

# Exit codes of the commands (`reciprocalseg ...`, `python -m reciprocalseg.training.distributed`):
# 0 success, 1 an error (message on stderr), 2 a usage error (a bad argument, a path that cannot
# be read or written), 3 cancelled.
EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 1, 2, 3


class ReciprocalSegError(Exception):
    """Base class of every error this package raises on purpose."""


class DataError(ReciprocalSegError, ValueError):
    """An input file or array is unusable (unreadable, wrong grid, bad label values...)."""


class TrainingError(ReciprocalSegError, RuntimeError):
    """Training cannot start or continue (bad configuration, out of memory...)."""


class CancelledError(ReciprocalSegError):
    """Training was cancelled by a signal or a cancel flag; a checkpoint was written."""


class UsageError(ReciprocalSegError):
    """A command-line argument that cannot work (the command prints one line and exits with 2)."""


def os_error_text(exc: OSError) -> str:
    """``<path>: <reason>; what to check`` for an error from the operating system."""
    where = f"{exc.filename}: " if exc.filename else ""
    reason = exc.strerror or str(exc)
    return f"{where}{reason} (check the path: does its folder exist, and may you write there?)"


def exit_code_of(command: Callable[[], int], *, os_errors_are_usage: bool = False) -> int:
    """Run a command; its exit code, or the code of how it failed with the message on stderr.

    ``os_errors_are_usage``: a path the user gave that cannot be read or written is one line and
    exit code 2 (the CLI); elsewhere an OSError is a fault and keeps its traceback.
    """
    try:
        return command()
    except CancelledError as exc:
        print(f"cancelled: {exc}. Rerun the same command to resume.", file=sys.stderr)
        return EXIT_CANCELLED
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ReciprocalSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        if not os_errors_are_usage:
            raise
        print(f"error: {os_error_text(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CANCELLED
