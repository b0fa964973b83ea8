"""Dynamic adjustment of the thread layout while training (`--autotune`).

The original GA3C moved agents, predictors and trainers by -1/0/+1 every 20 s and kept a
change if the trainings counted in that window went up. Here a controller thread does it
as a careful hill climb on throughput, each trial an A-B-A measurement. Throughput over a
window is min(env steps/s, samples trained/s): in steady state the two are equal, but while
the bounded training queue fills (more agents than the trainers keep up with) env steps/s
runs ahead of what is trained, and while it drains the trainers run ahead of the envs;
neither is throughput that lasts, and the minimum counts neither.

    before = rate over one window (current layout)
    repeat:
        move one knob by one (within its bounds); after settling, measure a window (trial)
        undo the move; measure a window (after)
        if trial beats the mean of before and after by `margin`, and a second such trial
        agrees: redo the move for good (and measure the new layout's rate), then try the
        same move again
        else go to the next move

Comparing the trial with windows on both sides of it cancels a steady drift of the machine
(here its speed wanders by up to 1.7x within half an hour), which a before/after comparison
would take for an effect of the change. Removing a thread never loses work: a retired agent
finishes its step and sends its partial segment (a retired Ray runner, with `--runner=ray` the
"agents", its steps in flight and partial segments), a retired predictor hands back a request
it holds, a retired trainer puts its batch back on the queue.

Pure Python (no TensorFlow): `pipeline` needs `counts()` and `resize(knob, delta)`, and may
have `settled()` (False while a thread it started is not working yet: a Ray runner's actor
starts a process, imports and makes its envs, seconds or more on a cluster; a window is
measured only once it is True, or after READY_SECONDS), `stats` `snapshot()` and
`window(a, b).throughput` (`ga3c.stats`: the one definition of throughput).
Every time read and every wait goes through a `Clock` (the real one unless given): the tests
run the tuner on `ga3c.fakes.FakeClock`, a minute of tuning in milliseconds, no real sleeps.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, Protocol

from ga3c.threads import Failure, Worker

KNOBS = ("agents", "trainers", "predictors")
MOVES = tuple((knob, delta) for knob in KNOBS for delta in (+1, -1))
WAIT_SECONDS = 0.25  # longest one wait lasts before the tuner looks at freeze and retire
READY_SECONDS = 60.0  # longest the tuner waits for the pipeline's new threads to work


class Clock(Protocol):
    """Where the tuner reads the time and waits; `stats` must count on the same time (the
    real one in the service, a `ga3c.fakes.FakeClock` in the tests)."""

    def monotonic(self) -> float: ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to `seconds`, less if `event` is set; True if it is set."""
        ...


class RealClock:
    """`time.monotonic` and `Event.wait`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(seconds)


@dataclasses.dataclass
class Decision:
    """One trial: what moved, the rates before and after, and whether it was kept."""

    at_seconds: float  # since the tuner started
    knob: str
    before: int
    after: int
    base_rate: float  # mean of the windows before and after the trial
    trial_rate: float
    kept: bool
    layout: dict[str, int]  # the layout after the decision

    def line(self) -> str:
        gain = self.trial_rate / self.base_rate - 1 if self.base_rate > 0 else float("inf")
        verdict = "kept" if self.kept else "undone"
        layout = " ".join(f"{k}={v}" for k, v in self.layout.items())
        return (f"autotune: {self.knob} {self.before} -> {self.after}: throughput/s "
                f"{self.base_rate:,.0f} -> {self.trial_rate:,.0f} ({gain:+.1%}), {verdict}; "
                f"now {layout}")


class Autotuner(Worker):
    def __init__(self, pipeline, stats,
                 bounds: dict[str, tuple[int, int]],
                 window_seconds: float, margin: float, log: Callable[[str], None],
                 stop: threading.Event, failure: Failure, settle_seconds: float | None = None,
                 clock: Clock | None = None) -> None:
        super().__init__("autotune", stop, failure)
        self._pipeline = pipeline
        self._stats = stats  # snapshot() and window(a, b).throughput, as ga3c.stats.Stats
        self._bounds = bounds
        self._window = window_seconds
        self._margin = margin
        self._log = log
        self._clock = clock or RealClock()
        # After a change, threads start (TensorFlow, env creation) before it is measured.
        self._settle = min(3.0, window_seconds / 3) if settle_seconds is None else settle_seconds
        self.decisions: list[Decision] = []
        self.frozen = threading.Event()  # set: tuning ends, the layout kept so far stays
        self.trial: str | None = None  # the move being measured, if any
        self._t0 = self._clock.monotonic()

    def freeze(self, timeout: float = 10.0) -> None:
        """End tuning now and keep the layout kept so far (a trial in progress is undone)."""
        self.frozen.set()
        self.join(timeout)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped, retired or frozen; False if the tuner should end."""
        deadline = self._clock.monotonic() + seconds
        while not (self.stopping or self.frozen.is_set()):
            left = deadline - self._clock.monotonic()
            if left <= 0:
                return True
            self._clock.wait(self.stop_event, min(left, WAIT_SECONDS))
        return False

    def _ready(self) -> bool:
        """Wait until the pipeline's threads all work (see the module docstring), at most
        READY_SECONDS (then a thread that cannot start is measured as it is: not working);
        False if the tuner should end."""
        settled = getattr(self._pipeline, "settled", None)
        deadline = self._clock.monotonic() + READY_SECONDS
        while settled is not None and not settled() and self._clock.monotonic() < deadline:
            if not self._sleep(WAIT_SECONDS):
                return False
        return True

    def _measure(self) -> float | None:
        """Throughput over one window once the pipeline's threads work and have settled
        (None if stopped meanwhile)."""
        if not (self._ready() and self._sleep(self._settle)):
            return None
        before = self._stats.snapshot()
        if not self._sleep(self._window):
            return None
        return self._stats.window(before, self._stats.snapshot()).throughput

    def _allowed(self, knob: str, delta: int) -> bool:
        low, high = self._bounds[knob]
        return low <= self._pipeline.counts()[knob] + delta <= high

    def _trial(self, knob: str, delta: int, base: float) -> tuple[float, float, float] | None:
        """Move, measure, undo, measure: (trial rate, mean of the windows around it, the
        window after), or None if the tuner must end."""
        before = self._pipeline.counts()[knob]
        self.trial = f"{knob} {before} -> {before + delta}"
        self._pipeline.resize(knob, delta)
        trial = self._measure()
        if self.stop_event.is_set():  # stopping: start no thread the stop would miss
            return None
        self._pipeline.resize(knob, -delta)
        self.trial = None
        after = self._measure() if trial is not None else None
        if after is None:
            return None
        return trial, (base + after) / 2, after

    def work(self) -> None:
        base = self._measure()
        move = 0
        blocked = 0
        while base is not None and not (self.stopping or self.frozen.is_set()):
            knob, delta = MOVES[move % len(MOVES)]
            if not self._allowed(knob, delta):
                move += 1
                blocked += 1
                if blocked >= len(MOVES):  # nothing can move (bounds): just wait
                    self._sleep(self._window)
                    blocked = 0
                continue
            blocked = 0
            before = self._pipeline.counts()[knob]
            first = self._trial(knob, delta, base)
            if first is None:
                return
            trial, reference, after = first
            won = trial > reference * (1.0 + self._margin)
            if won:  # a second A-B-A trial must agree: one lucky window is not enough
                second = self._trial(knob, delta, after)
                if second is None:
                    return
                won = second[0] > second[1] * (1.0 + self._margin)
                trial, reference, after = ((trial + second[0]) / 2,
                                           (reference + second[1]) / 2, second[2])
            kept = won and not self.frozen.is_set()
            if kept:
                self._pipeline.resize(knob, delta)
            self.decisions.append(Decision(self._clock.monotonic() - self._t0, knob, before,
                                           before + delta, reference, trial, kept,
                                           self._pipeline.counts()))
            self._log(self.decisions[-1].line())
            if kept:  # measure the new layout, then try the same move again
                base = self._measure()
            else:
                base = after
                move += 1
