"""How ga3c turns an exception into the one line a user sees (no TensorFlow here)."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, or its type name if it has none."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


class RunError(Exception):
    """A failure that ends a run as one line on stderr and exit code 1, without a traceback:
    the message says what happened and where (not a bug in ga3c, so the stack adds nothing)."""


class NonFiniteError(RunError):
    """A loss term, the gradient norm or a weight is NaN or infinite: the run diverged."""


class CheckpointWriteError(RunError):
    """A checkpoint or policy.keras could not be written (disk full, permission lost...)."""
