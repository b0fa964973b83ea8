"""Optimizer threads: gather at least `min_batch` transitions, run one training step.

The group owns the bounded training queue. Agents put `Transitions` on it; each trainer
takes items until it holds `min_batch` rows, concatenates them and calls `train_fn`, which
applies one RMSProp step to the shared model. The policy lag of every row (model updates
between choosing the action and training on it) is reported to the stats.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable


from ga3c.returns import Transitions
from ga3c.threads import POLL_SECONDS, Failure, PoolWorker, WorkerPool, put_until_stopped


class TrainerGroup(WorkerPool):
    """Owns the training queue and the optimizer threads that drain it; the threads use its
    public `train_fn`, `version_fn` and `stats`."""

    name = "trainer"

    def __init__(self, train_fn: Callable[[Transitions], object], version_fn: Callable[[], int],
                 stats, min_batch: int, queue_size: int, stop: threading.Event,
                 failure: Failure) -> None:
        super().__init__(queue_size, stop, failure)
        self.train_fn = train_fn
        self.version_fn = version_fn
        self.stats = stats
        self.min_batch = min_batch


class Trainer(PoolWorker):

    def _gather(self) -> list[Transitions]:
        parts: list[Transitions] = []
        rows = 0
        while rows < self.group.min_batch and not self.stopping:
            try:
                item = self.group.queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            parts.append(item)
            rows += len(item)
        return parts

    def work(self) -> None:
        group = self.group
        while not self.stopping:
            parts = self._gather()
            if self.stopping:
                if not self.stop_event.is_set():  # retired alone: others train on these
                    for part in parts:
                        put_until_stopped(group.queue, part, self)
                break
            batch = Transitions.concatenate(parts)
            lags = group.version_fn() - batch.versions
            metrics = group.train_fn(batch)
            losses = metrics._asdict() if hasattr(metrics, "_asdict") else {}
            probes = losses.pop("probes", None)
            group.stats.add_training(len(batch), lags, losses, probes)


TrainerGroup.worker_class = Trainer
