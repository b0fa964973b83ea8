"""Thread plumbing shared by agents, predictors and trainers (no TensorFlow).

Rules every worker follows: each blocking call has a timeout and re-checks the stop event;
an exception in any worker is recorded in the shared `Failure` and stops the whole service.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import traceback

POLL_SECONDS = 0.05  # longest any worker blocks before it looks at the stop event again


def log(message: str) -> None:
    """One timestamped console line (the service's, a worker's): flushed at once, as a
    watched run's output must be."""
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


class Failure:
    """The first exception raised by any worker, with its formatted traceback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.thread_name: str | None = None
        self.traceback: str | None = None
        self.exception: BaseException | None = None

    def record(self, thread_name: str, exc: BaseException) -> None:
        with self._lock:
            if self.traceback is None:
                self.thread_name = thread_name
                self.exception = exc
                self.traceback = "".join(traceback.format_exception(exc))

    def __bool__(self) -> bool:
        return self.traceback is not None


class UpdateGate:
    """Model updates run together (`shared`, Hogwild); a checkpoint write runs alone.

    `exclusive()` lets no new update start, waits for those in flight and holds the next ones
    off until it ends, so what it checks and writes is one model version that nothing changes
    meanwhile. Waits are bounded: an update waits only while a checkpoint is being written,
    and `exclusive()` gives up with TimeoutError if updates in flight do not finish in time.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._exclusive:
                self._cond.wait(POLL_SECONDS)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self, timeout: float):
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._exclusive:  # another exclusive holder (bounded by the same deadline)
                self._wait_until(deadline)
            self._exclusive = True  # from now on no new update starts
            try:
                while self._shared:
                    self._wait_until(deadline)
            except TimeoutError:
                self._exclusive = False
                self._cond.notify_all()
                raise
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()

    def _wait_until(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("model updates did not pause in time")
        self._cond.wait(min(remaining, POLL_SECONDS))


class Worker(threading.Thread):
    """A thread that runs `work()` until `stop` is set; a crash stops everyone."""

    def __init__(self, name: str, stop: threading.Event, failure: Failure) -> None:
        super().__init__(name=name, daemon=True)
        self.stop_event = stop
        self.failure = failure
        # Set to retire just this worker (used when shrinking a pool); `stop` ends them all.
        self.retire = threading.Event()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set() or self.retire.is_set()

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            self.failure.record(self.name, exc)
            self.stop_event.set()

    def work(self) -> None:
        raise NotImplementedError


class WorkerPool:
    """Owns a bounded input queue and the worker threads that drain it.

    Subclasses set `worker_class` (constructed as `worker_class(pool, name, stop, failure)`)
    and `name`; `add_thread()` starts one more worker and `retire_thread()` retires one, so
    pools can grow and shrink while running (a retired worker finishes what it holds).
    """

    worker_class: type[Worker]
    name: str

    def __init__(self, queue_size: int, stop: threading.Event, failure: Failure) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop, self._failure = stop, failure
        self.threads: list[Worker] = []
        self._started = 0

    def add_thread(self) -> Worker:
        self.threads = [t for t in self.threads if t.is_alive()]  # forget retired ones
        t = self.worker_class(self, f"{self.name}-{self._started}", self._stop, self._failure)
        self._started += 1
        self.threads.append(t)
        t.start()
        return t

    def active(self) -> list[Worker]:
        """Workers not asked to retire (the pool's current size)."""
        return [t for t in self.threads if not t.retire.is_set()]

    def retire_thread(self) -> Worker | None:
        """Ask the newest worker to retire (it returns what it holds first); never the last."""
        active = self.active()
        if len(active) <= 1:
            return None
        active[-1].retire.set()
        return active[-1]

    def start(self, count: int) -> None:
        for _ in range(count):
            self.add_thread()


class PoolWorker(Worker):
    """A worker that belongs to a `WorkerPool` (its `group`)."""

    def __init__(self, group: WorkerPool, name: str, stop: threading.Event,
                 failure: Failure) -> None:
        super().__init__(name, stop, failure)
        self.group = group


def put_until_stopped(q: queue.Queue, item, worker: Worker) -> bool:
    """Put on a bounded queue, waiting for room; False if the worker was stopped first."""
    while not worker.stop_event.is_set():
        try:
            q.put(item, timeout=POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False
