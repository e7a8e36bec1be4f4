"""Exceptions with messages meant for the user: each names the problem and what to do."""

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
