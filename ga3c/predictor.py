"""Predictor threads: batch the waiting agents' states into one inference call.

The group owns the prediction queue. An agent calls `PredictorGroup.predict(states, slot)`:
its request goes on the queue, one predictor takes it with whatever else is waiting (bounded
wait for the first request, then no waiting, up to `max_batch` rows), runs one inference on
the shared model and hands each requester its rows of policy logits and values through the
requester's `ReplySlot`.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, NamedTuple

import numpy as np

from ga3c.threads import (POLL_SECONDS, Failure, PoolWorker, Worker, WorkerPool,
                          put_until_stopped)


class Reply(NamedTuple):
    logits: np.ndarray
    values: np.ndarray
    version: int  # model version (updates applied) that produced this prediction


class ReplySlot:
    """Where one agent receives its prediction: one outstanding request at a time."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._reply: Reply | None = None

    def deliver(self, reply: Reply) -> None:
        self._reply = reply
        self._event.set()

    def wait(self, worker: Worker) -> Reply | None:
        """The reply, or None if the worker's service stopped first."""
        while not self._event.wait(POLL_SECONDS):
            if worker.stop_event.is_set():
                return None
        self._event.clear()
        reply, self._reply = self._reply, None
        return reply


class _Request(NamedTuple):
    states: np.ndarray
    slot: ReplySlot


PredictFn = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


class PredictorGroup(WorkerPool):
    """Owns the prediction queue and the predictor threads that drain it; the threads use
    its public `predict_fn`, `version_fn` and `stats`."""

    name = "predictor"

    def __init__(self, predict_fn: PredictFn, version_fn: Callable[[], int], stats,
                 max_batch: int, queue_size: int, stop: threading.Event, failure: Failure) -> None:
        super().__init__(queue_size, stop, failure)
        self.predict_fn = predict_fn
        self.version_fn = version_fn
        self.stats = stats
        self.max_batch = max_batch

    def predict(self, states: np.ndarray, slot: ReplySlot, worker: Worker) -> Reply | None:
        """Called by an agent thread: blocks until its reply arrives (None: service stopped)."""
        if not put_until_stopped(self.queue, _Request(states, slot), worker):
            return None
        return slot.wait(worker)


class Predictor(PoolWorker):
    def __init__(self, group: PredictorGroup, name: str, stop: threading.Event,
                 failure: Failure) -> None:
        super().__init__(group, name, stop, failure)
        self._carry: _Request | None = None  # a request that did not fit the previous batch

    def _next_batch(self) -> list[_Request]:
        q, max_batch = self.group.queue, self.group.max_batch
        if self._carry is not None:
            batch, self._carry = [self._carry], None
        else:
            try:
                batch = [q.get(timeout=POLL_SECONDS)]
            except queue.Empty:
                return []
        rows = len(batch[0].states)
        while rows < max_batch:
            try:
                req = q.get_nowait()
            except queue.Empty:
                break
            if rows + len(req.states) > max_batch:
                self._carry = req
                break
            batch.append(req)
            rows += len(req.states)
        return batch

    def work(self) -> None:
        group = self.group
        while not self.stopping:
            batch = self._next_batch()
            if not batch:
                continue
            version = group.version_fn()
            if len(batch) == 1:
                states = batch[0].states
            else:
                states = np.concatenate([r.states for r in batch])
            logits, values = group.predict_fn(states)
            offset = 0
            for req in batch:
                n = len(req.states)
                req.slot.deliver(Reply(logits[offset:offset + n], values[offset:offset + n], version))
                offset += n
            group.stats.add_predictions(len(states))
        if self._carry is not None:  # retired with a request in hand: hand it back
            put_until_stopped(group.queue, self._carry, self)


PredictorGroup.worker_class = Predictor
