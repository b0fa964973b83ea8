"""Stand-ins for the model and the envs, shared by the tests and the throughput benchmark.

No TensorFlow: `FakePredict` and `FakeTrain` take the places of `Learner.predict` and
`Learner.train` (the benchmark's env-only ceiling runs the real thread layout with them: a
model that costs nothing), `FakeVectorEnv` is a deterministic vector env whose every step
can be checked against `ga3c.returns.reference_transitions`, and `FakeClock` is time that
moves only when something waits on it: the autotuner's tests run the tuner, and the
simulated pipeline it tunes, on one (a minute of tuning in milliseconds, no real sleeps, and
what happens at a given time is the same on every run); `call_at` runs a function at a given
time, e.g. to hold the tuner still there while the test looks at it, freezes or stops it.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import threading
from typing import Callable

import gymnasium as gym
import numpy as np


class FakePredict:
    """logits = 0 (a uniform policy over `num_actions`), values = first number of each state.

    `record`: keep each batch (`batch_sizes`, `batches`); off for long runs (the benchmark).
    `gate`: if given, calls listed in `gated_calls` block on it (bounded) before answering.
    `on_call(n)`: called with the 1-based call number before answering.
    """

    def __init__(self, gate: threading.Event | None = None, gated_calls=(1,), on_call=None,
                 raise_exc: BaseException | None = None, num_actions: int = 2,
                 record: bool = True) -> None:
        self.lock = threading.Lock()
        self.num_actions = num_actions
        self.record = record
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.batches: list[np.ndarray] = []
        self.gate = gate
        self.gated_calls = set(gated_calls)
        self.on_call = on_call
        self.raise_exc = raise_exc
        self.entered = threading.Event()  # set when the first call starts

    def __call__(self, states: np.ndarray):
        with self.lock:
            self.calls += 1
            n = self.calls
            if self.record:
                self.batch_sizes.append(len(states))
                self.batches.append(np.array(states, copy=True))
        self.entered.set()
        if self.raise_exc is not None:
            raise self.raise_exc
        if self.gate is not None and n in self.gated_calls:
            assert self.gate.wait(timeout=5.0), "test never released the gate"
        if self.on_call is not None:
            self.on_call(n)
        flat = states.reshape(len(states), -1)
        return np.zeros((len(states), self.num_actions), np.float32), flat[:, 0].astype(np.float32)


class FakeTrain:
    """Counts (and with `record`, keeps) each training batch; returns a loss and an entropy."""

    Metrics = collections.namedtuple("Metrics", "loss entropy")

    def __init__(self, on_call=None, raise_exc=None, record: bool = True) -> None:
        self.lock = threading.Lock()
        self.record = record
        self.calls = 0
        self.rows = 0
        self.batches: list = []
        self.on_call = on_call
        self.raise_exc = raise_exc

    def __call__(self, batch):
        with self.lock:
            self.calls += 1
            self.rows += len(batch)
            n = self.calls
            if self.record:
                self.batches.append(batch)
        if self.raise_exc is not None:
            raise self.raise_exc
        if self.on_call is not None:
            self.on_call(n)
        return self.Metrics(loss=float(n), entropy=0.5)


class FakeVectorEnv:
    """Deterministic vector env with gymnasium's NEXT_STEP autoreset.

    Observation of env e: [e, episode, t, 0], where t counts steps within the episode (0 after
    reset). Env e's episodes last `lengths[e]` steps; episode k of env e terminates if
    (e + k) is even, else it is truncated. Reward of a step is 1 + t + 10 e. The step after an
    episode's end resets that env, ignores its action, returns reward 0 and not done.

    `raw[e]` records env e's stream as (state, action, reward, terminated, truncated,
    next_state), the format of `ga3c.returns.reference_transitions`.
    """

    def __init__(self, lengths) -> None:
        self.lengths = list(lengths)
        self.num_envs = len(self.lengths)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.closed = False
        self.reset_seed = "not reset"
        self.raw: list[list[tuple]] = [[] for _ in range(self.num_envs)]
        self.episodes_ended: list[tuple[int, int, bool]] = []  # (env, episode, terminated)
        self.valid_steps = 0

    def _obs(self) -> np.ndarray:
        e = np.arange(self.num_envs, dtype=np.float32)
        return np.stack([e, self._episode, self._t, np.zeros_like(e)], axis=1).astype(np.float32)

    def reset(self, seed=None):
        self.reset_seed = seed
        self._t = np.zeros(self.num_envs, np.float32)
        self._episode = np.zeros(self.num_envs, np.float32)
        self._needs_reset = np.zeros(self.num_envs, bool)
        return self._obs(), {}

    def step(self, actions):
        assert not self.closed
        actions = np.asarray(actions)
        assert actions.shape == (self.num_envs,)
        before = self._obs()
        rewards = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        for e in range(self.num_envs):
            if self._needs_reset[e]:
                self._needs_reset[e] = False
                self._t[e] = 0
                self._episode[e] += 1
                continue
            self.valid_steps += 1
            rewards[e] = 1 + self._t[e] + 10 * e
            self._t[e] += 1
            if self._t[e] == self.lengths[e]:
                term = (e + int(self._episode[e])) % 2 == 0
                terminated[e], truncated[e] = term, not term
                self._needs_reset[e] = True
                self.episodes_ended.append((e, int(self._episode[e]), term))
        after = self._obs()
        for e in range(self.num_envs):
            self.raw[e].append((before[e], int(actions[e]), float(rewards[e]),
                                bool(terminated[e]), bool(truncated[e]), after[e]))
        return after, rewards, terminated, truncated, {}

    def close(self):
        self.closed = True


class FakeClock:
    """`ga3c.autotune.Clock` on made-up time that moves only when something waits on it.

    `wait(event, seconds)` moves the time on by `seconds` at once, without sleeping; if the
    event is set, or gets set by a `call_at` function the time passes on the way, it returns
    at that moment instead. Nothing waiting, time stands still: a loop that forgets to wait
    never sees its deadline (run it in a thread with bounded joins). Thread-safe; with several
    threads waiting at once, each wait moves the one time on by its own amount.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._now = start
        self._due: list[tuple[float, int, Callable[[], object]]] = []  # heap of call_at
        self._order = itertools.count()  # ties run in the order they were asked for
        self.waits = 0  # calls of wait(), to check that a loop waits as little as it should

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def call_at(self, when: float, fn: Callable[[], object]) -> None:
        """Run `fn()` when the time reaches `when`, in the thread whose wait gets it there
        (outside the clock's lock: `fn` may read the clock, or block that thread)."""
        with self._lock:
            heapq.heappush(self._due, (when, next(self._order), fn))

    def wait(self, event: threading.Event, seconds: float) -> bool:
        with self._lock:
            self.waits += 1
            end = self._now + max(seconds, 0.0)
        while not event.is_set():
            with self._lock:
                if self._due and self._due[0][0] <= end:
                    when, _, fn = heapq.heappop(self._due)
                    self._now = max(self._now, when)
                else:
                    self._now = max(self._now, end)
                    return False
            fn()
        return True
