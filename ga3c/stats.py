"""Thread-safe cumulative counters, rates between two snapshots, the console line,
episodes.csv.

Counters only ever grow. A reader takes `snapshot()`s and asks for the `window(a, b)` between
two of them; reading changes nothing, so any number of readers (the console, the autotuner,
the benchmark) share one Stats without stealing each other's windows. Throughput, everywhere,
is `throughput()`: min(env steps/s, samples trained/s).

Pure Python + numpy (no TensorFlow): the TensorBoard writer lives in `ga3c.service`.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import os
import resource
import threading
import time

import numpy as np

from ga3c.errors import LogWriteError, write_error_reason

COUNTERS = ("env_steps", "episodes", "predict_calls", "predictions", "train_calls",
            "train_samples", "round_trips", "dropped_transitions")
MAX_LAG_BATCHES = 10_000  # policy lags kept for windows: the latest training batches'
MAX_ROUND_TRIPS = 100_000  # Ray runners' round-trip times kept for windows: the latest


def throughput(env_steps_per_s: float, samples_per_s: float) -> float:
    """What lasts: while the bounded training queue fills, envs run ahead of what is trained
    (and behind it while the queue drains); the slower of the two is the sustained rate."""
    return min(env_steps_per_s, samples_per_s)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The cumulative counters at one moment."""

    time: float  # time.monotonic()
    counts: dict[str, int]
    loss_sums: dict[str, float]
    loss_count: int
    # env steps per source (a Ray runner's name); empty when nothing reports a source
    source_steps: dict[str, int] = dataclasses.field(default_factory=dict)
    ended_sources: frozenset[str] = frozenset()  # runners gone (retired by the autotuner)


@dataclasses.dataclass
class Window:
    """What happened between two snapshots: rates are per second of *this* window."""

    seconds: float
    env_steps: int
    episodes: int
    total_env_steps: int
    total_episodes: int
    env_steps_per_s: float
    predictions_per_s: float
    trainings_per_s: float
    samples_per_s: float
    mean_predict_batch: float
    mean_train_batch: float
    mean_score: float | None  # mean return of the last 100 episodes (None before the first)
    policy_lag_mean: float | None
    policy_lag_p95: float | None
    losses: dict[str, float]
    rss_mib: float  # resident memory now (a long run's should stay flat)
    # Ray runners (empty / None under --runner=threads): each runner's env steps/s, and the
    # round trip of a runner's group step (actions sent -> next observations back, so env
    # stepping, transfer and waiting behind the runner's other group), median and p95 in s.
    source_env_steps_per_s: dict[str, float] = dataclasses.field(default_factory=dict)
    round_trip_p50: float | None = None
    round_trip_p95: float | None = None
    # Transitions lost with Ray runner actors that died (built, never delivered): in this
    # window, and in all of this process's training.
    dropped_transitions: int = 0
    total_dropped_transitions: int = 0
    # The training steps' stability instruments (`ga3c.learner.Learner._probes`): the mean
    # and the largest value of each over the window's updates (empty without updates).
    probes_mean: dict[str, float] = dataclasses.field(default_factory=dict)
    probes_max: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return throughput(self.env_steps_per_s, self.samples_per_s)

    def console_line(self, queue_depths: dict[str, int]) -> str:
        score = "   n/a" if self.mean_score is None else f"{self.mean_score:7.1f}"
        lag = "n/a" if self.policy_lag_mean is None else f"{self.policy_lag_mean:.1f}"
        queues = " ".join(f"{k}={v}" for k, v in queue_depths.items())
        return (f"steps {self.total_env_steps:>10,d}  eps {self.total_episodes:>7,d}  "
                f"score100 {score}  env/s {self.env_steps_per_s:>8,.0f}  "
                f"pred/s {self.predictions_per_s:>6,.0f} (batch {self.mean_predict_batch:5.1f})  "
                f"train/s {self.trainings_per_s:>5,.0f}  samples/s {self.samples_per_s:>8,.0f}  "
                f"lag {lag}  q {queues}  rss {self.rss_mib:,.0f} MiB" + "".join(
                    f"  {short} {self.losses[k]:.2f}" for k, short in
                    (("entropy", "ent"), ("explained_variance", "ev"), ("logit_spread", "spread"))
                    if k in self.losses)) + self.probes_text() + self.runners_text()

    def probes_text(self) -> str:
        """The instruments' part of the console line: the largest fraction of dead ReLU units
        of any layer (window mean) and the largest per-weight step in learning rates."""
        dead = [v for k, v in self.probes_mean.items() if k.startswith("dead_relu/")]
        text = f"  dead {max(dead):.0%}" if dead else ""
        if "max_step" in self.probes_max:
            text += f"  step {self.probes_max['max_step']:.1f}x"
        return text

    def runners_text(self) -> str:
        """The Ray runners' part of the console line ("" under --runner=threads): each
        runner's env steps/s (min/median/max past four runners), the round trip, and the
        transitions dropped with dead actors so far (only once there are some)."""
        text = ""
        rates = self.source_env_steps_per_s
        if len(rates) > 4:
            lo, mid, hi = np.percentile(list(rates.values()), [0, 50, 100])
            text = f"  runner env/s min {lo:,.0f} med {mid:,.0f} max {hi:,.0f} ({len(rates)})"
        elif rates:
            each = " ".join(f"{rates[k]:,.0f}" for k in sorted(rates, key=_natural))
            text = f"  runner env/s {each}"
        if self.round_trip_p50 is not None:
            text += (f"  rtt p50 {self.round_trip_p50 * 1e3:.1f} "
                     f"p95 {self.round_trip_p95 * 1e3:.1f} ms")
        if self.total_dropped_transitions:
            text += f"  dropped {self.total_dropped_transitions:,}"
        return text


class Stats:
    """Counters shared by all threads. Every method takes the one lock briefly."""

    def __init__(self, episodes_csv: str | None = None, start_env_steps: int = 0,
                 start_episodes: int = 0, start_seconds: float = 0.0,
                 recent_returns: list[float] | None = None) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._counts["env_steps"] = start_env_steps
        self._counts["episodes"] = start_episodes
        self._returns = collections.deque(recent_returns or [], maxlen=100)
        # (train_calls after the batch, its lags): bounded even if nobody reads them
        self._lags: collections.deque = collections.deque(maxlen=MAX_LAG_BATCHES)
        self._probes: collections.deque = collections.deque(maxlen=MAX_LAG_BATCHES)
        self._loss_sums: dict[str, float] = collections.defaultdict(float)
        self._loss_count = 0
        self._source_steps: dict[str, int] = collections.defaultdict(int)
        self._ended_sources: set[str] = set()
        # (round_trips count after it, seconds): bounded even if nobody reads them
        self._round_trips: collections.deque = collections.deque(maxlen=MAX_ROUND_TRIPS)
        self._start_seconds = start_seconds
        self._csv_file = None
        self._csv = None
        self._updates_file = None
        self._updates_csv = None
        self._updates_header = False  # updates.csv still needs its header row
        self.restart_clock()
        if episodes_csv is not None:
            self.log_episodes_to(episodes_csv)

    def restart_clock(self) -> None:
        """This process's training seconds, and `window()`'s default start, count from now."""
        self._t0 = time.monotonic()
        self.started = self.snapshot()

    def log_episodes_to(self, episodes_csv: str) -> None:
        """Append a row per finished episode to `episodes_csv` from now on."""
        new = not os.path.exists(episodes_csv) or os.path.getsize(episodes_csv) == 0
        ends_mid_row = not new and _last_byte(episodes_csv) != b"\n"
        with self._lock:
            self._csv_file = open(episodes_csv, "a", newline="", buffering=1 << 16)
            self._csv = csv.writer(self._csv_file)
            if ends_mid_row:  # a killed run left half a row: end it, so ours start clean
                self._csv_file.write("\n")
            if new:
                self._csv.writerow(CSV_HEADER)
            else:  # a resume: rows past its checkpoint (a killed run's tail) are superseded
                with _writing(self._csv_file):
                    self._csv.writerow([RESUME_MARK, self._counts["env_steps"]])

    def log_updates_to(self, updates_csv: str) -> None:
        """Append a row per training step to `updates_csv` from now on: the update's number
        in this process, env steps, seconds, rows, mean policy lag, loss terms, instruments."""
        new = not os.path.exists(updates_csv) or os.path.getsize(updates_csv) == 0
        with self._lock:
            self._updates_file = open(updates_csv, "a", newline="", buffering=1 << 16)
            self._updates_csv = csv.writer(self._updates_file)
            self._updates_header = new

    # -- written by worker threads --------------------------------------------------------
    def add_env_steps(self, n: int, returns: np.ndarray, lengths: np.ndarray,
                      source: str | None = None) -> None:
        """Count `n` env steps (also as `source`'s, a Ray runner's name, if given), then
        record the episodes that ended in them."""
        with self._lock:
            self._counts["env_steps"] += n
            if source is not None:
                self._source_steps[source] += n
            if len(returns) == 0:
                return
            steps = self._counts["env_steps"]
            wall = self.train_seconds()
            for ret, length in zip(returns.tolist(), lengths.tolist()):
                self._returns.append(ret)
                self._counts["episodes"] += 1
                if self._csv is not None:
                    with _writing(self._csv_file):
                        self._csv.writerow([f"{wall:.3f}", steps, ret, length])

    def end_source(self, source: str) -> None:
        """`source` (a Ray runner) reports no more: windows after its last steps leave it
        out, so runners the autotuner retired do not pile up on the console at 0/s."""
        with self._lock:
            self._ended_sources.add(source)

    def add_round_trip(self, seconds: float) -> None:
        """A Ray runner's group step took `seconds` from sending actions to having the next
        observations back."""
        with self._lock:
            self._counts["round_trips"] += 1
            self._round_trips.append((self._counts["round_trips"], seconds))

    def add_dropped(self, transitions: int) -> None:
        """A Ray runner's actor died holding `transitions` it had built but not delivered."""
        with self._lock:
            self._counts["dropped_transitions"] += transitions

    def add_predictions(self, batch: int) -> None:
        with self._lock:
            self._counts["predict_calls"] += 1
            self._counts["predictions"] += batch

    def add_training(self, batch: int, lags: np.ndarray, losses: dict[str, float],
                     probes: dict[str, float] | None = None) -> None:
        with self._lock:
            self._counts["train_calls"] += 1
            self._counts["train_samples"] += batch
            calls = self._counts["train_calls"]
            self._lags.append((calls, lags))
            for k, v in losses.items():
                self._loss_sums[k] += v
            self._loss_count += 1
            if probes:
                self._probes.append((calls, probes))
            if self._updates_csv is not None:
                row = {"update": calls, "env_steps": self._counts["env_steps"],
                       "seconds": round(self.train_seconds(), 3), "rows": batch,
                       "lag_mean": float(np.mean(lags)) if len(lags) else 0.0,
                       **losses, **(probes or {})}
                with _writing(self._updates_file):
                    if self._updates_header:
                        self._updates_csv.writerow(list(row))
                        self._updates_header = False
                    self._updates_csv.writerow([f"{v:.6g}" if isinstance(v, float) else v
                                                for v in row.values()])

    # -- read by the main thread ----------------------------------------------------------
    def train_seconds(self) -> float:
        """Seconds of training, including those of earlier runs this one resumed from."""
        return self._start_seconds + time.monotonic() - self._t0

    @property
    def env_steps(self) -> int:
        return self._counts["env_steps"]

    @property
    def episodes(self) -> int:
        return self._counts["episodes"]

    @property
    def dropped_transitions(self) -> int:
        return self._counts["dropped_transitions"]

    @property
    def samples_trained(self) -> int:
        return self._counts["train_samples"]

    def mean_score(self) -> float | None:
        with self._lock:
            return float(np.mean(self._returns)) if self._returns else None

    def num_recent(self) -> int:
        return len(self._returns)

    def snapshot(self) -> Snapshot:
        with self._lock:
            if self._csv_file is not None:
                with _writing(self._csv_file):
                    self._csv_file.flush()
            return Snapshot(time.monotonic(), dict(self._counts), dict(self._loss_sums),
                            self._loss_count, dict(self._source_steps),
                            frozenset(self._ended_sources))

    def window(self, since: Snapshot | None = None, until: Snapshot | None = None) -> Window:
        """What happened between two snapshots (default: since `restart_clock()`, until now).
        Reading changes nothing: every reader keeps its own snapshots."""
        since = since or self.started
        until = until or self.snapshot()
        with self._lock:
            lags = [a for calls, a in self._lags
                    if since.counts["train_calls"] < calls <= until.counts["train_calls"]]
            score = float(np.mean(self._returns)) if self._returns else None
            trips = [t for n, t in self._round_trips
                     if since.counts["round_trips"] < n <= until.counts["round_trips"]]
            probes = [p for calls, p in self._probes
                      if since.counts["train_calls"] < calls <= until.counts["train_calls"]]
        lags = np.concatenate(lags) if lags else np.zeros(0)
        dt = max(until.time - since.time, 1e-9)
        d = {k: until.counts[k] - since.counts[k] for k in until.counts}
        loss_count = until.loss_count - since.loss_count
        losses = {k: (v - since.loss_sums.get(k, 0.0)) / loss_count
                  for k, v in until.loss_sums.items()} if loss_count else {}
        return Window(
            seconds=dt,
            env_steps=d["env_steps"],
            episodes=d["episodes"],
            total_env_steps=until.counts["env_steps"],
            total_episodes=until.counts["episodes"],
            env_steps_per_s=d["env_steps"] / dt,
            predictions_per_s=d["predictions"] / dt,
            trainings_per_s=d["train_calls"] / dt,
            samples_per_s=d["train_samples"] / dt,
            mean_predict_batch=d["predictions"] / max(d["predict_calls"], 1),
            mean_train_batch=d["train_samples"] / max(d["train_calls"], 1),
            mean_score=score,
            policy_lag_mean=float(np.mean(lags)) if len(lags) else None,
            policy_lag_p95=float(np.percentile(lags, 95)) if len(lags) else None,
            losses=losses,
            rss_mib=rss_mib(),
            source_env_steps_per_s={
                k: (v - since.source_steps.get(k, 0)) / dt for k, v in until.source_steps.items()
                if k not in until.ended_sources or v > since.source_steps.get(k, 0)},
            round_trip_p50=float(np.percentile(trips, 50)) if trips else None,
            round_trip_p95=float(np.percentile(trips, 95)) if trips else None,
            dropped_transitions=d["dropped_transitions"],
            total_dropped_transitions=until.counts["dropped_transitions"],
            probes_mean={k: float(np.mean([p[k] for p in probes])) for k in probes[0]}
            if probes else {},
            probes_max={k: float(np.max([p[k] for p in probes])) for k in probes[0]}
            if probes else {},
        )

    def close(self) -> None:
        with self._lock:
            if self._csv_file is not None:
                self._csv_file.close()
                self._csv_file = self._csv = None
            if self._updates_file is not None:
                self._updates_file.close()
                self._updates_file = self._updates_csv = None


@contextlib.contextmanager
def _writing(file):
    """A failed write to one of the run's logs (a full disk: the buffer's flush fails in
    whichever thread fills it) raises LogWriteError naming the file, not an OSError."""
    try:
        yield
    except OSError as exc:
        raise LogWriteError(f"cannot write {file.name}: {write_error_reason(exc)}") from exc


# A window's logit spread or explained variance below half the previous window's is reported
# (the collapses seen on Pong went 1.23 -> 0.61 -> 0.00 in three 10 s windows), once the
# previous one is above these floors (early training moves them around by more than half).
COLLAPSE_FLOORS = {"logit_spread": 0.2, "explained_variance": 0.3}


def collapse_warning(before: Window, after: Window) -> str | None:
    """One console line if the policy's dependence on the state (logit spread) or the value
    head's fit (explained variance) fell by more than half from window `before` to `after`,
    with the instruments that tell why; None otherwise."""
    fell = [f"{name.replace('_', ' ')} {before.losses[name]:.2f} -> {after.losses[name]:.2f}"
            for name, floor in COLLAPSE_FLOORS.items()
            if name in before.losses and name in after.losses
            and before.losses[name] >= floor and after.losses[name] < 0.5 * before.losses[name]]
    if not fell:
        return None
    dead = {k.split("/", 1)[1]: (before.probes_mean.get(k, 0.0), v)
            for k, v in after.probes_mean.items() if k.startswith("dead_relu/")}
    why = "".join(f"; dead ReLUs {layer} {a:.0%} -> {b:.0%}" for layer, (a, b) in dead.items()
                  if b - a >= 0.05)
    if "max_step" in after.probes_max:
        why += f"; largest step {after.probes_max['max_step']:.1f}x lr"
    if "max_abs_advantage" in after.probes_max:
        why += f", largest |advantage| {after.probes_max['max_abs_advantage']:.2f}"
    return (f"warning: {' and '.join(fell)} within one window, at {after.total_env_steps:,} "
            f"env steps{why}")


def _natural(name: str):
    """runner-2 before runner-10."""
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def rss_mib() -> float:
    """Resident memory of this process now, in MiB (Linux /proc; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mib()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _last_byte(path: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


CSV_HEADER = ["wall_time", "env_steps", "episode_return", "episode_length"]
# A resumed run's first row: `resumed_at,<env steps of its checkpoint>`. The episodes a killed
# run logged past its last checkpoint stay in the file, but the resumed run replays those
# steps, so readers drop them there (the curve is the checkpoints' history).
RESUME_MARK = "resumed_at"


def read_episode_rows(episodes_csv: str) -> np.ndarray:
    """The complete rows of an episodes.csv as an (N, 4) float array, in env-step order.

    The header and rows cut short by a killed run are skipped; so are rows a resumed run
    superseded: those past its checkpoint's env steps, before its `resumed_at` row (files
    written before that row existed: before the first row whose env steps went back). Every
    reader of the file (resume, ga3c-plot, learning tables) goes through here, so they agree.
    """
    rows: list[list[float]] = []

    def rewind(env_steps: float) -> None:
        while rows and rows[-1][1] > env_steps:
            rows.pop()

    with open(episodes_csv, newline="") as f:
        for row in csv.reader(f):
            if len(row) == 2 and row[0] == RESUME_MARK:
                try:
                    rewind(float(row[1]))
                except ValueError:
                    pass
                continue
            if len(row) != len(CSV_HEADER):
                continue
            try:
                values = [float(x) for x in row]
            except ValueError:
                continue  # the header, or a row whose last field was cut short
            rewind(values[1])
            rows.append(values)
    return np.array(rows, dtype=np.float64).reshape(-1, len(CSV_HEADER))


def read_recent_returns(episodes_csv: str, max_env_steps: int, count: int = 100) -> list[float]:
    """The last `count` episode returns in episodes.csv that the checkpoint covers.

    Rows past `max_env_steps` (written after the last checkpoint by a run that was killed)
    stay in the file but are not counted.
    """
    if not os.path.exists(episodes_csv):
        return []
    rows = read_episode_rows(episodes_csv)
    return rows[rows[:, 1] <= max_env_steps, 2][-count:].tolist()
