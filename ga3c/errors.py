"""How ga3c turns an exception into the one line a user sees (no TensorFlow here)."""

from __future__ import annotations

import re


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, or its type name if it has none."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


class UserError(Exception):
    """A problem with what the user gave (a flag, a flagfile, an env id, a logdir, a
    checkpoint...): the command line ends with one line on stderr and exit code 2. Every
    module raises this (or a subclass); `ga3c.cli` catches it in one place."""


class RunError(Exception):
    """A failure that ends a run as one line on stderr and exit code 1, without a traceback:
    the message says what happened and where (not a bug in ga3c, so the stack adds nothing).
    `keeps_model`: the failure did not touch the model (its source of data went away), so the
    run still saves a final checkpoint, as a stop does, and the same command resumes."""

    keeps_model = False


class NonFiniteError(RunError):
    """A loss term, the gradient norm or a weight is NaN or infinite: the run diverged."""


class WriteError(RunError):
    """A file of the run (checkpoint, policy.keras, a log) could not be written: disk full,
    directory turned read-only, permission lost..."""


class LogWriteError(WriteError):
    """One of the run's logs (episodes.csv, updates.csv, tb/) could not be written; the
    service adds which checkpoint is the latest to the message."""


def write_error_reason(exc: BaseException) -> str:
    """Why a write failed, in a few words: "No space left on device" rather than an OSError's
    repr or TensorFlow's "{{function_node ...}} /path/ckpt-9_temp; No space left on device
    [Op:SaveV2]"."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = re.sub(r"\{\{.*?\}\}\s*", "", first_line(exc))
    text = re.sub(r"\s*\[Op:\w+\]\s*$", "", text)
    path_and_reason = re.fullmatch(r"/\S*; (.+)", text)
    return path_and_reason.group(1) if path_and_reason else text
