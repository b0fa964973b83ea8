"""Predictor, trainer and agent threads without TensorFlow.

The model is replaced by small fake functions (`FakePredict`, `FakeTrain`) and the vector env
by `FakeVectorEnv`, which follows gymnasium's NEXT_STEP autoreset (all from `ga3c.fakes`).
Every wait is bounded: a hung thread fails the test instead of hanging the run.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from ga3c.agent import Agent
from ga3c.fakes import FakePredict, FakeTrain, FakeVectorEnv
from ga3c.predictor import PredictorGroup, ReplySlot
from ga3c.returns import Transitions, reference_transitions
from ga3c.stats import Stats
from ga3c.threads import Failure, Worker
from ga3c.trainer import TrainerGroup

JOIN_S = 2.0  # generous bound for a thread that should exit "promptly" (POLL_SECONDS is 0.05)


# -- helpers --------------------------------------------------------------------------------

def wait_until(pred, timeout=2.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def join_all(threads, timeout=JOIN_S):
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"threads still alive: {alive}"


class CountingVersion:
    """version_fn returning base, base+1, ... one per call, remembering what it returned."""

    def __init__(self, base: int = 100) -> None:
        self.lock = threading.Lock()
        self.next = base
        self.returned: list[int] = []

    def __call__(self) -> int:
        with self.lock:
            v = self.next
            self.next += 1
            self.returned.append(v)
            return v


class Requester(Worker):
    """Sends each of `requests` (arrays of states) in turn through the predictor group."""

    def __init__(self, name, group: PredictorGroup, requests, stop, failure) -> None:
        super().__init__(name, stop, failure)
        self.group = group
        self.requests = list(requests)
        self.replies: list = []
        self.got_none = False
        self.done = threading.Event()

    def work(self) -> None:
        slot = ReplySlot()
        try:
            for states in self.requests:
                reply = self.group.predict(states, slot, self)
                if reply is None:
                    self.got_none = True
                    return
                self.replies.append(reply)
        finally:
            self.done.set()

    @classmethod
    def spawn(cls, started: list, name, group, requests, stop, failure) -> "Requester":
        """Start one and append it to `started` (so the test's cleanup joins it)."""
        r = cls(name, group, requests, stop, failure)
        r.start()
        started.append(r)
        return r


def make_group(predict_fn, version_fn=lambda: 0, max_batch=8, queue_size=64):
    stop, failure, stats = threading.Event(), Failure(), Stats(None)
    group = PredictorGroup(predict_fn, version_fn, stats, max_batch=max_batch,
                           queue_size=queue_size, stop=stop, failure=failure)
    return group, stop, failure, stats


def rows(tag: int, n: int, width: int = 3) -> np.ndarray:
    """n distinctive rows: column 0 is tag*100 + row, other columns are tag."""
    out = np.full((n, width), float(tag), dtype=np.float32)
    out[:, 0] = tag * 100 + np.arange(n)
    return out


# -- PredictorGroup -------------------------------------------------------------------------

def test_predictor_batches_pending_requests_and_carries_overflow():
    gate = threading.Event()
    fake = FakePredict(gate=gate, gated_calls=(1,))
    version = CountingVersion(base=100)
    group, stop, failure, stats = make_group(fake, version, max_batch=8)
    try:
        group.start(1)
        # The primer's 1-row request occupies the predictor (blocked on the gate) ...
        primer = Requester("primer", group, [rows(9, 1)], stop, failure)
        primer.start()
        assert fake.entered.wait(2.0)
        # ... while four 3-row requests queue up, in a known order.
        reqs = []
        for k in range(4):
            r = Requester.spawn(reqs, f"req-{k}", group, [rows(k + 1, 3)], stop, failure)
            wait_until(lambda: group.queue.qsize() == k + 1, what=f"request {k} queued")
        gate.set()
        for r in [primer, *reqs]:
            assert r.done.wait(2.0), f"{r.name} got no reply"
        # 3 + 3 = 6 fits max_batch 8; the third request (would make 9) is carried to the next
        # batch, which then takes the fourth.
        assert fake.batch_sizes == [1, 6, 6]
        assert max(fake.batch_sizes) <= group.max_batch
        assert np.array_equal(fake.batches[1], np.concatenate([rows(1, 3), rows(2, 3)]))
        assert np.array_equal(fake.batches[2], np.concatenate([rows(3, 3), rows(4, 3)]))
        # Each requester receives exactly its own rows, and the version of its batch.
        assert version.returned[:3] == [100, 101, 102]
        expected_version = {"primer": 100, "req-0": 101, "req-1": 101, "req-2": 102, "req-3": 102}
        for r in [primer, *reqs]:
            assert not r.got_none
            (reply,) = r.replies
            assert np.array_equal(reply.values, r.requests[0][:, 0])
            assert reply.logits.shape == (len(r.requests[0]), 2)
            assert reply.version == expected_version[r.name]
        w = stats.window()
        assert w.mean_predict_batch == pytest.approx(13 / 3)
        assert not failure
    finally:
        gate.set()
        stop.set()
        join_all(group.threads + [primer, *reqs])


def test_predictor_carried_request_keeps_fifo_order_and_never_overflows():
    # Requests of 5, 4, 4, 1 rows with max_batch 8: [5], [4, 4], [1] -- the 4 that overflows
    # the first batch is carried, so no batch exceeds 8 and nobody is reordered.
    gate = threading.Event()
    fake = FakePredict(gate=gate, gated_calls=(1,))
    group, stop, failure, _ = make_group(fake, max_batch=8)
    sizes = [5, 4, 4, 1]
    reqs = []
    try:
        group.start(1)
        Requester.spawn(reqs, "primer", group, [rows(9, 2)], stop, failure)
        assert fake.entered.wait(2.0)
        for k, n in enumerate(sizes):
            r = Requester.spawn(reqs, f"req-{k}", group, [rows(k + 1, n)], stop, failure)
            wait_until(lambda: group.queue.qsize() == k + 1, what=f"request {k} queued")
        gate.set()
        for r in reqs:
            assert r.done.wait(2.0), f"{r.name} got no reply"
        assert fake.batch_sizes == [2, 5, 8, 1]
        assert all(b <= group.max_batch for b in fake.batch_sizes)
        assert np.array_equal(fake.batches[2], np.concatenate([rows(2, 4), rows(3, 4)]))
        for r in reqs:
            (reply,) = r.replies
            assert np.array_equal(reply.values, r.requests[0][:, 0])
        assert not failure
    finally:
        gate.set()
        stop.set()
        join_all(group.threads + reqs)


def test_predictor_routing_under_concurrency():
    # Two predictors, six requesters, 25 requests each of varying size: every reply carries
    # exactly the requester's own rows, and no batch exceeds max_batch.
    fake = FakePredict()
    group, stop, failure, stats = make_group(fake, version_fn=lambda: 42, max_batch=6,
                                             queue_size=4)
    rng = np.random.default_rng(0)
    reqs = []
    for k in range(6):
        requests = [rows(k * 1000 + i, int(rng.integers(1, 5))) for i in range(25)]
        reqs.append(Requester(f"req-{k}", group, requests, stop, failure))
    try:
        group.start(2)
        for r in reqs:
            r.start()
        for r in reqs:
            assert r.done.wait(5.0), f"{r.name} did not finish"
        assert not failure, failure.traceback
        for r in reqs:
            assert not r.got_none
            assert len(r.replies) == len(r.requests)
            for states, reply in zip(r.requests, r.replies):
                assert np.array_equal(reply.values, states[:, 0])
                assert reply.logits.shape == (len(states), 2)
                assert reply.version == 42
        assert max(fake.batch_sizes) <= 6
        total = sum(len(s) for r in reqs for s in r.requests)
        assert sum(fake.batch_sizes) == total
        w = stats.window()
        assert w.predictions_per_s * w.seconds == pytest.approx(total)
    finally:
        stop.set()
        join_all(group.threads + reqs)


def test_predictor_stop_while_idle():
    fake = FakePredict()
    group, stop, failure, _ = make_group(fake)
    group.start(2)
    assert len(group.threads) == 2 and all(t.is_alive() for t in group.threads)
    time.sleep(0.1)
    t0 = time.monotonic()
    stop.set()
    join_all(group.threads, timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    assert fake.batch_sizes == []
    assert not failure


def test_predictor_stop_while_requests_pending():
    # One request is inside the (blocked) predict fn, one waits on the queue, and a third
    # requester is blocked putting on the full queue: stop makes every one of them return
    # None, and once the model call returns every thread has exited.
    gate = threading.Event()
    fake = FakePredict(gate=gate, gated_calls=(1,))
    group, stop, failure, _ = make_group(fake, queue_size=1)
    reqs = []
    try:
        group.start(1)
        Requester.spawn(reqs, "in-model", group, [rows(1, 2)], stop, failure)
        assert fake.entered.wait(2.0)
        Requester.spawn(reqs, "queued", group, [rows(2, 2)], stop, failure)
        wait_until(lambda: group.queue.qsize() == 1, what="second request queued")
        c = Requester.spawn(reqs, "blocked-put", group, [rows(3, 2)], stop, failure)
        time.sleep(0.1)  # c is now retrying put on the full queue
        assert not c.done.is_set()
        stop.set()
        join_all(reqs, timeout=1.0)
        assert all(r.got_none and r.replies == [] for r in reqs)
    finally:
        gate.set()
        stop.set()
    join_all(group.threads, timeout=1.0)
    assert fake.batch_sizes == [2]
    assert not failure


def test_predictor_failure_is_recorded_and_stops_everything():
    fake = FakePredict(raise_exc=ValueError("model exploded"))
    group, stop, failure, _ = make_group(fake)
    group.start(1)
    r = Requester("req", group, [rows(1, 2)], stop, failure)
    r.start()
    assert stop.wait(2.0), "a crashing predictor must set the stop event"
    join_all(group.threads + [r])
    assert failure
    assert failure.thread_name == "predictor-0"
    assert "Traceback" in failure.traceback
    assert "ValueError: model exploded" in failure.traceback
    assert "__call__" in failure.traceback  # the frame that raised
    assert r.got_none


def test_failure_keeps_only_the_first():
    f = Failure()
    assert not f
    f.record("a", RuntimeError("first"))
    f.record("b", RuntimeError("second"))
    assert f.thread_name == "a" and "first" in f.traceback and "second" not in f.traceback


# -- TrainerGroup ---------------------------------------------------------------------------

class RecordingStats(Stats):
    """A real Stats that also keeps each add_training call (for exact lag checks)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.training_calls: list[tuple[int, np.ndarray, dict]] = []

    def add_training(self, batch, lags, losses, probes=None) -> None:
        super().add_training(batch, lags, losses, probes)
        self.training_calls.append((batch, np.array(lags), dict(losses)))


def transitions(tag: int, n: int, version: int) -> Transitions:
    s = rows(tag, n, width=2)
    return Transitions(
        states=s,
        actions=np.arange(n, dtype=np.int32) + tag,
        rewards=np.full(n, tag, np.float32),
        next_states=s + 0.5,
        next_index=np.arange(n, dtype=np.int32),
        nsteps=np.ones(n, np.int32),
        masks=np.ones(n, np.float32),
        versions=np.full(n, version, np.int64),
    )


def make_trainers(train_fn, version_fn, min_batch, stats=None, queue_size=64):
    stop, failure = threading.Event(), Failure()
    stats = stats if stats is not None else Stats(None)
    group = TrainerGroup(train_fn, version_fn, stats, min_batch=min_batch,
                         queue_size=queue_size, stop=stop, failure=failure)
    return group, stop, failure, stats


def assert_transitions_equal(a: Transitions, b: Transitions) -> None:
    for name, x, y in zip(Transitions._fields, a, b):
        assert x.dtype == y.dtype, name
        assert np.array_equal(x, y), name


def test_trainer_gathers_min_batch_in_order_and_reports_stats_and_lag():
    current = [7]
    fake = FakeTrain(on_call=lambda n: current.__setitem__(0, current[0] + 1))  # an update
    stats = RecordingStats()
    group, stop, failure, _ = make_trainers(fake, lambda: current[0], min_batch=10, stats=stats)
    first = [transitions(1, 4, version=5), transitions(2, 4, version=6), transitions(3, 4, 7)]
    second = [transitions(4, 6, version=7), transitions(5, 5, version=8)]
    try:
        for item in first:  # 4 + 4 < 10, so the third item is needed too
            group.queue.put(item)
        group.start(1)
        wait_until(lambda: len(stats.training_calls) == 1, what="first training step")
        for item in second:
            group.queue.put(item)
        wait_until(lambda: len(stats.training_calls) == 2, what="second training step")
    finally:
        stop.set()
        join_all(group.threads)
    assert not failure, failure.traceback
    assert len(fake.batches) == 2
    assert_transitions_equal(fake.batches[0], Transitions.concatenate(first))
    assert_transitions_equal(fake.batches[1], Transitions.concatenate(second))
    # Lag = version at the start of the step (before train_fn applies its update) - versions.
    (n1, lags1, losses1), (n2, lags2, losses2) = stats.training_calls
    assert (n1, n2) == (12, 11)
    assert np.array_equal(lags1, 7 - np.repeat([5, 6, 7], 4))
    assert np.array_equal(lags2, 8 - np.repeat([7, 8], [6, 5]))
    assert losses1 == {"loss": 1.0, "entropy": 0.5} and losses2["loss"] == 2.0
    w = stats.window()
    assert w.trainings_per_s * w.seconds == pytest.approx(2)
    assert w.samples_per_s * w.seconds == pytest.approx(23)
    assert w.mean_train_batch == pytest.approx(11.5)
    all_lags = np.concatenate([lags1, lags2])
    assert w.policy_lag_mean == pytest.approx(all_lags.mean())
    assert w.policy_lag_p95 == pytest.approx(np.percentile(all_lags, 95))
    assert w.losses == {"loss": 1.5, "entropy": 0.5}
    assert group.queue.empty()


def test_trainer_single_item_at_least_min_batch_is_trained_alone():
    fake = FakeTrain()
    group, stop, failure, stats = make_trainers(fake, lambda: 3, min_batch=4)
    item = transitions(1, 9, version=3)
    try:
        group.start(1)
        group.queue.put(item)
        wait_until(lambda: len(fake.batches) == 1, what="training step")
    finally:
        stop.set()
        join_all(group.threads)
    assert_transitions_equal(fake.batches[0], item)
    assert not failure


def test_trainer_stop_while_idle():
    fake = FakeTrain()
    group, stop, failure, _ = make_trainers(fake, lambda: 0, min_batch=4)
    group.start(2)
    time.sleep(0.1)
    t0 = time.monotonic()
    stop.set()
    join_all(group.threads, timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    assert fake.batches == [] and not failure


def test_retired_trainer_puts_partial_gather_back():
    fake = FakeTrain()
    group, stop, failure, stats = make_trainers(fake, lambda: 0, min_batch=100)
    items = [transitions(1, 5, 0), transitions(2, 5, 0), transitions(3, 7, 0)]
    try:
        t = group.add_thread()
        for item in items:
            group.queue.put(item)
        wait_until(group.queue.empty, what="trainer to take the items")
        time.sleep(0.1)  # it is now waiting for more rows
        t.retire.set()
        join_all([t], timeout=1.0)
        assert not stop.is_set()
        assert fake.batches == []
        back = [group.queue.get_nowait() for _ in range(group.queue.qsize())]
        assert len(back) == len(items)
        for got, want in zip(back, items):
            assert_transitions_equal(got, want)
        assert not failure
    finally:
        stop.set()
        join_all(group.threads)


def test_trainer_failure_is_recorded_and_stops_everything():
    fake = FakeTrain(raise_exc=RuntimeError("nan loss"))
    group, stop, failure, _ = make_trainers(fake, lambda: 0, min_batch=1)
    group.start(2)
    group.queue.put(transitions(1, 2, 0))
    assert stop.wait(2.0)
    join_all(group.threads)
    assert failure.thread_name in ("trainer-0", "trainer-1")
    assert "RuntimeError: nan loss" in failure.traceback


# -- Agent ----------------------------------------------------------------------------------

def run_agent(env, n_step, gamma, retire_after=None, seed=3, num_actions=2, **agent_kwargs):
    """One agent + one predictor thread; returns (env, agent, stop, failure, stats, queue).

    `env`: a vector env, or episode lengths for a FakeVectorEnv. With `retire_after=N` the
    agent is retired inside its N-th prediction, so it makes exactly N vector steps and then
    flushes its partial segment.
    """
    if isinstance(env, (list, tuple)):
        env = FakeVectorEnv(env)
    stop, failure, stats = threading.Event(), Failure(), Stats(None)
    holder = {}

    def on_call(n):
        if retire_after is not None and n == retire_after:
            holder["agent"].retire.set()

    fake = FakePredict(on_call=on_call, num_actions=num_actions)
    group = PredictorGroup(fake, lambda: 5, stats, max_batch=env.num_envs, queue_size=4,
                           stop=stop, failure=failure)
    training_queue: queue.Queue = queue.Queue()
    agent = Agent(0, lambda: env, seed, n_step, gamma, group, training_queue, stats, stop,
                  failure, **agent_kwargs)
    holder["agent"] = agent
    return env, agent, group, stop, failure, stats, training_queue, fake


def run_agent_until_retired(env, n_step, gamma, steps, timeout=3.0, **kwargs):
    """Run one agent for exactly `steps` vector steps (then it flushes its partial segment).

    Returns (env, stats, parts put on the training queue, the fake predict fn)."""
    env, agent, group, stop, failure, stats, tq, fake = run_agent(
        env, n_step, gamma, retire_after=steps, **kwargs)
    try:
        group.start(1)
        agent.start()
        join_all([agent], timeout=timeout)
    finally:
        stop.set()
        join_all(group.threads + [agent])
    assert not failure, failure.traceback
    return env, stats, drain(tq), fake


def drain(q: queue.Queue) -> list[Transitions]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def test_agent_end_to_end_with_fake_vector_env():
    lengths = [1, 2, 3, 5]  # env 0's episodes end on their first step
    n_step, gamma, steps = 3, 0.5, 14  # 14 is not a multiple of 3: a partial segment at the end
    env, stats, parts, fake = run_agent_until_retired(lengths, n_step, gamma, steps)
    assert env.closed and env.reset_seed == 3
    assert len(fake.batch_sizes) == steps and all(b == len(lengths) for b in fake.batch_sizes)
    assert all(len(r) == steps for r in env.raw)

    assert all(len(p) > 0 for p in parts)
    assert len(parts) == -(-steps // n_step)  # 4 full segments + the flushed partial one
    batch = Transitions.concatenate(parts)

    # Every valid env step became exactly one transition, and Stats counted the same steps.
    assert stats.env_steps == env.valid_steps == len(batch)
    assert stats.episodes == len(env.episodes_ended)

    # No transition starts from a reset step's state (an episode's final observation).
    for s in batch.states:
        e, t = int(s[0]), int(s[2])
        assert t < lengths[e], f"transition from final obs {s}"
    assert np.all(batch.versions == 5)
    assert batch.states.dtype == np.float32

    # Each episode's last step is a transition with n=1 and mask 0 iff it terminated.
    keys = {(int(s[0]), int(s[1]), int(s[2])): k for k, s in enumerate(batch.states)}
    for e, ep, terminated in env.episodes_ended:
        k = keys[(e, ep, lengths[e] - 1)]
        assert batch.masks[k] == (0.0 if terminated else 1.0)
        assert batch.nsteps[k] == 1
        assert np.array_equal(batch.bootstrap_states()[k], [e, ep, lengths[e], 0])
    assert any(term for *_, term in env.episodes_ended)
    assert any(not term for *_, term in env.episodes_ended)

    # Exactly what the slow per-env reference produces from the env's raw stream.
    for e in range(len(lengths)):
        mine = batch.states[:, 0] == e
        ref = reference_transitions(env.raw[e], n_step, gamma)
        assert int(mine.sum()) == len(ref)
        np.testing.assert_array_equal(batch.states[mine], [r["state"] for r in ref])
        np.testing.assert_array_equal(batch.actions[mine], [r["action"] for r in ref])
        np.testing.assert_allclose(batch.rewards[mine], [r["reward"] for r in ref], rtol=1e-6)
        np.testing.assert_array_equal(batch.bootstrap_states()[mine], [r["next_state"] for r in ref])
        np.testing.assert_array_equal(batch.nsteps[mine], [r["n"] for r in ref])
        np.testing.assert_array_equal(batch.masks[mine], [r["mask"] for r in ref])


def test_agent_stop_exits_promptly_and_closes_env():
    env, agent, group, stop, failure, stats, tq, fake = run_agent([2, 3], n_step=4, gamma=0.9)
    try:
        group.start(1)
        agent.start()
        wait_until(lambda: stats.env_steps >= 20, what="agent to make steps")
    finally:
        stop.set()
        join_all(group.threads + [agent], timeout=1.0)
    assert not failure, failure.traceback
    assert env.closed
    got = sum(len(p) for p in drain(tq))
    # On stop at most one segment (the unflushed one, or a full one whose put saw the stop)
    # of n_step vector steps is not emitted.
    assert 0 <= stats.env_steps - got <= 4 * env.num_envs
    assert stats.env_steps == env.valid_steps
