"""TensorBoard scalars written as plain event protos, one event per console window.

`tf.summary.scalar` runs an eager TensorFlow op per value: with the training instruments a
window has ~60 scalars, and at CartPole's rates those ops took 5.6% of the process's samples
(py-spy), on the main thread, holding the GIL the agents' per-step Python needs. Here a window
is one `Event` holding every value (`simple_value`, which TensorBoard's scalar dashboard reads
as it reads `tf.summary.scalar`'s), queued to TensorBoard's own writer thread.
"""

from __future__ import annotations

import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

FLUSH_SECONDS = 10  # how stale TensorBoard may be; tf.summary's default was 120


class ScalarWriter:
    """Scalars into an event file under `logdir`. A failed write (full disk) raises from
    `write`, `flush` or `close`: the writer thread's error is raised at the next call."""

    def __init__(self, logdir: str) -> None:
        self._writer = EventFileWriter(logdir, max_queue_size=100, flush_secs=FLUSH_SECONDS)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                  for k, v in scalars.items()]
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                               summary=summary_pb2.Summary(value=values)))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
