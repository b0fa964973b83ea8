"""What a run needs before its service is built, for the library and the command line alike:
a logdir proven writable, and TensorFlow imported with its C++ start-up lines hidden.

No TensorFlow at import time (it is imported by `import_tensorflow_quietly`, on purpose).
"""

from __future__ import annotations

import os
import sys

from ga3c.errors import UserError


def check_writable_dir(directory: str, what: str = "logdir") -> list[str]:
    """Create `directory` if needed and prove a file can be written there; else UserError.
    Returns the directories it created, outermost first."""
    created = []
    parent = os.path.abspath(directory)
    while not os.path.exists(parent):
        created.insert(0, parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".ga3c-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"{what} {directory!r} is not writable: {exc.strerror or exc}") from None
    return created


def import_tensorflow_quietly(intra_op_threads: int = 0):
    """Import TensorFlow and initialise its devices with C++ start-up chatter hidden.

    TensorFlow's native libraries print lines such as "Could not find cuda drivers" straight
    to file descriptor 2 before any log level applies; on a CPU machine they are noise that
    looks like an error. Python exceptions are unaffected: they are raised after fd 2 is back.
    `GA3C_TF_VERBOSE=1` shows the lines.

    If the caller imported TensorFlow before ga3c did, its start-up lines were printed then
    and cannot be taken back; and once TensorFlow has run, its thread count can no longer be
    changed (a different `intra_op_threads` raises RuntimeError).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    if os.environ.get("GA3C_TF_VERBOSE"):
        import tensorflow as tf

        _configure_tf(tf, intra_op_threads)
        return tf
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf

            _configure_tf(tf, intra_op_threads)
            # e.g. "checkpoint being deleted with unrestored values" after a refused restore:
            # the refusal itself is reported as one clear line.
            tf.get_logger().setLevel("ERROR")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf


def _configure_tf(tf, intra_op_threads: int) -> None:
    if intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    for gpu in tf.config.list_physical_devices("GPU"):
        # Grow GPU memory as needed instead of grabbing it all at start.
        tf.config.experimental.set_memory_growth(gpu, True)
    tf.config.list_logical_devices()
