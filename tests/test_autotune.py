"""The autotune controller on a simulated pipeline, and thread churn on the real one."""

import threading
import time
from types import SimpleNamespace

import numpy as np

from ga3c.autotune import Autotuner
from ga3c.config import Config
from ga3c.fakes import FakePredict, FakeTrain
from ga3c.stats import Stats
from ga3c.threads import Failure

BOUNDS = {"agents": (1, 6), "predictors": (1, 3), "trainers": (1, 3)}


class SimulatedPipeline:
    """Env steps accumulate at `rate(layout)` per second of real time."""

    def __init__(self, rate, layout=None) -> None:
        self.rate = rate
        self.layout = dict(layout or {"agents": 1, "predictors": 1, "trainers": 1})
        self.lock = threading.Lock()
        self.steps, self.t = 0.0, time.monotonic()
        self.history = [dict(self.layout)]

    def _advance(self) -> None:
        now = time.monotonic()
        self.steps += self.rate(self.layout) * (now - self.t)
        self.t = now

    def snapshot(self) -> tuple[float, int]:
        with self.lock:
            self._advance()
            return self.t, int(self.steps)

    @staticmethod
    def window(a, b) -> SimpleNamespace:
        return SimpleNamespace(throughput=(b[1] - a[1]) / max(b[0] - a[0], 1e-9))

    def counts(self) -> dict[str, int]:
        with self.lock:
            return dict(self.layout)

    def resize(self, knob: str, delta: int) -> None:
        with self.lock:
            self._advance()
            self.layout[knob] += delta
            self.history.append(dict(self.layout))


def peaked(layout) -> float:
    """Best at 4 agents, 2 trainers, 1 predictor."""
    return (10_000 - 1_500 * abs(layout["agents"] - 4) - 2_000 * abs(layout["trainers"] - 2)
            - 1_000 * abs(layout["predictors"] - 1))


def run_tuner(pipeline, seconds, bounds=BOUNDS, margin=0.05):
    stop, failure, lines = threading.Event(), Failure(), []
    tuner = Autotuner(pipeline, pipeline, bounds, window_seconds=0.15, margin=margin,
                      log=lines.append, stop=stop, failure=failure, settle_seconds=0.02)
    tuner.start()
    time.sleep(seconds)
    tuner.freeze()  # ends tuning; a trial in progress is undone
    stop.set()
    assert not tuner.is_alive() and not failure, failure.traceback
    return tuner, lines


def test_climbs_to_the_best_layout_and_stays():
    pipeline = SimulatedPipeline(peaked)
    tuner, lines = run_tuner(pipeline, 8.0)
    assert pipeline.counts() == {"agents": 4, "predictors": 1, "trainers": 2}
    kept = [d for d in tuner.decisions if d.kept]
    # It got there by kept moves of one knob by one each, every one logged.
    assert [(d.knob, d.after - d.before) for d in kept].count(("agents", 1)) == 3
    assert [(d.knob, d.after - d.before) for d in kept].count(("trainers", 1)) == 1
    assert len(lines) == len(tuner.decisions) and all(ln.startswith("autotune: ") for ln in lines)
    assert "kept" in lines[0] and "agents 1 -> 2" in lines[0]
    # Once there, every trial is undone.
    last_kept = max(i for i, d in enumerate(tuner.decisions) if d.kept)
    assert len(tuner.decisions) - last_kept > 6


def test_respects_bounds():
    pipeline = SimulatedPipeline(lambda layout: 1_000 * layout["agents"])  # more is better
    run_tuner(pipeline, 3.0, bounds={**BOUNDS, "agents": (1, 3)})
    assert pipeline.counts()["agents"] == 3
    for layout in pipeline.history:
        for knob, (low, high) in BOUNDS.items():
            top = 3 if knob == "agents" else high
            assert low <= layout[knob] <= top, pipeline.history


def test_keeps_nothing_when_no_change_helps_by_the_margin():
    # 3% better with more agents, but the margin asks for 5%: noise-sized gains are not taken.
    pipeline = SimulatedPipeline(lambda layout: 10_000 * 1.03 ** layout["agents"])
    tuner, _ = run_tuner(pipeline, 2.0)
    assert tuner.decisions and not any(d.kept for d in tuner.decisions)
    assert pipeline.counts() == {"agents": 1, "predictors": 1, "trainers": 1}


def test_a_drifting_machine_is_not_mistaken_for_a_better_layout():
    """The machine speeds up 40% per second whatever the layout; a before/after comparison
    would keep every +1 move. The A-B-A comparison keeps none."""
    t0 = time.monotonic()
    pipeline = SimulatedPipeline(lambda layout: 10_000 * (1 + 0.4 * (time.monotonic() - t0)))
    tuner, _ = run_tuner(pipeline, 2.0)
    assert len(tuner.decisions) >= 3 and not any(d.kept for d in tuner.decisions)


def test_thread_churn_on_the_real_pipeline_loses_no_transitions():
    """Agents, predictors and trainers added and retired under load (CartPole, trivial model):
    every env step reaches training, except what the one trainer left holds while it waits
    for a full batch (fewer than min_train_batch rows)."""
    from ga3c.pipeline import Pipeline

    config = Config().replace(env__envs_per_agent=8, pipeline__min_train_batch=16,
                              pipeline__max_predict_batch=64)
    stop, failure, stats = threading.Event(), Failure(), Stats(None)
    train = FakeTrain(record=False)
    pipeline = Pipeline(config, FakePredict(record=False), train, lambda: 0, stats, stop,
                        failure, seed=0)
    pipeline.start()
    rng = np.random.default_rng(0)
    try:
        for _ in range(60):
            knob = ["agents", "predictors", "trainers"][rng.integers(3)]
            pipeline.resize(knob, int(rng.choice([-1, 1])) if pipeline.counts()[knob] < 4 else -1)
            time.sleep(0.02)
        for knob in ("agents", "predictors", "trainers"):  # down to one each
            while pipeline.counts()[knob] > 1:
                pipeline.resize(knob, -1)
        for agent in pipeline.agents:  # then the last agent too (the pipeline never does)
            agent.retire.set()
        for agent in pipeline.agents:
            agent.join(5)
        time.sleep(0.5)  # the trainer drains the queue
        assert not any(a.is_alive() for a in pipeline.agents)
        steps, in_training = stats.env_steps, train.rows
        queued = sum(len(item) for item in list(pipeline.trainers.queue.queue))
    finally:
        stop.set()
        stuck = pipeline.join()
    assert not failure, failure.traceback
    assert not stuck
    assert pipeline._agents_made > 3  # agents were really added and retired
    assert queued == 0
    assert steps - config.pipeline.min_train_batch < in_training <= steps


def tuner_in_a_trial():
    """A tuner on the peaked simulated pipeline, caught while a trial move is applied."""
    pipeline = SimulatedPipeline(peaked)
    stop, failure = threading.Event(), Failure()
    tuner = Autotuner(pipeline, pipeline, BOUNDS, window_seconds=0.3, margin=0.05,
                      log=lambda line: None, stop=stop, failure=failure, settle_seconds=0.02)
    tuner.start()
    deadline = time.monotonic() + 10
    while tuner.trial is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert tuner.trial is not None
    return pipeline, tuner, stop, failure


def test_freeze_ends_tuning_and_undoes_a_trial_in_progress():
    pipeline, tuner, stop, failure = tuner_in_a_trial()
    tuner.freeze()
    assert not tuner.is_alive() and not failure
    kept = {"agents": 1, "predictors": 1, "trainers": 1}
    for d in tuner.decisions:
        if d.kept:
            kept[d.knob] = d.after
    assert pipeline.counts() == kept
    stop.set()


def test_nothing_to_move_and_freeze_do_not_spin():
    """Every knob at its only allowed value: the tuner waits; freeze ends it at once."""
    pipeline = SimulatedPipeline(peaked)
    stop, failure = threading.Event(), Failure()
    tuner = Autotuner(pipeline, pipeline, {k: (1, 1) for k in BOUNDS},
                      window_seconds=0.1, margin=0.05, log=lambda line: None, stop=stop,
                      failure=failure, settle_seconds=0.01)
    tuner.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    tuner.freeze()
    assert not tuner.is_alive() and time.monotonic() - t0 < 1.0
    assert tuner.decisions == [] and pipeline.history == [pipeline.counts()]
    stop.set()


def test_a_stop_during_a_trial_starts_no_thread():
    pipeline, tuner, stop, failure = tuner_in_a_trial()
    layout = pipeline.counts()
    stop.set()
    tuner.join(5)
    assert not tuner.is_alive()
    assert pipeline.counts() == layout and tuner.trial is not None  # left as it was
