"""Environment runners in Ray actors (`--runner=ray`): envs on any node of a Ray cluster
feeding the central predictor and trainers of this process.

Inference stays central and batched here; only the env stepping moves out. A runner is a Ray
actor (`EnvRunner`) that owns `envs_per_agent` envs, split into `--runner_groups` vector envs
(groups): for one group at a time it receives actions, steps the envs and returns what they
returned (next observations, rewards, terminated/truncated, lives). Each frame crosses once,
as uint8: an Atari stack whose first frames are the ones the learner already has travels as
its newest frame (`ga3c.frames`), and the n-step transitions are built on the learner side from the
observations it predicted on, so no frame travels again inside a transition. Weights never
travel. (Building the transitions in the actor, as this module first did, sent every frame
twice, and a group's four-frame stacks went through Ray's object store: Pong ran at 0.67 of
the threads runner's env steps/s on this 2-core machine; see docs/scaling-out.md.)

On the learner side each runner is driven by a `RemoteRunner` thread, to the pipeline one more
kind of agent: it keeps each group's bookkeeping (`ga3c.agent.Bookkeeper`, the agents' own
code), passes a group's observations to the predictor group exactly as an `Agent` does,
samples the actions like an agent and sends them back, and puts the transitions on the
training queue and the episodes into `Stats`. The round trip is hidden by keeping every group
in flight: while the actor steps group 0 (a sync actor runs its calls in order), the thread
has group 1's observations predicted, so env stepping overlaps inference and transfer.
`--autotune` adds and retires runners as it does agents: a retired runner hands over its
steps in flight and partial segments, one retired before its actor started just goes.

Ray is imported here only inside functions: `import ga3c.ray_runner` works without it, and
the core install and `--runner=threads` never need it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import signal
import socket
import threading
import time
from typing import Callable, NamedTuple, Sequence

import numpy as np

from ga3c.agent import Bookkeeper, deliver, sample_actions
from ga3c.envs import LockStepEnvs
from ga3c.errors import RunError, UserError, first_line
from ga3c.frames import Packed, StackDecoder, StackEncoder
from ga3c.predictor import PredictorGroup, ReplySlot
from ga3c.threads import POLL_SECONDS, Failure, Worker, log, put_until_stopped

GROUPS = 2  # env groups per runner kept in flight by default (fewer if it has fewer envs)
START_SECONDS = 300.0  # a new actor's first reply: process start, imports, env creation
CALL_SECONDS = 60.0  # any later reply (one vector step of one group)
MAX_RESTARTS = 3  # Ray restarts a runner actor that died this many times, then the run fails
ACTOR_CPUS = 1  # CPUs a runner reserves in Ray's scheduler (spreads runners over nodes)
# Results up to this size go back inline, in the reply itself, not through the object store
# (Ray's default is 100 KiB): a group step of 16 Pong envs (16 newest frames, 113 KB) costs
# half as much CPU inline. Set for a local Ray ga3c starts; a cluster's own setting is the
# env var RAY_max_direct_call_object_size given to `ray start` (see docs/scaling-out.md).
INLINE_BYTES = 1 << 20
WATCH_SECONDS = 1.0  # how often the learner checks that the cluster's GCS still answers
WATCH_MISSES = 3  # checks in a row without an answer that mean the cluster is gone


def require_ray():
    """The `ray` module, or UserError naming the extra that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise UserError(f"--runner=ray needs the 'ray' package ({first_line(exc)}): "
                        "pip install -e '.[ray]' (or pip install 'ray>=2.9')") from None
    return ray


def group_sizes(num_envs: int, groups: int = GROUPS) -> list[int]:
    """`num_envs` split into at most `groups` near-equal groups (none empty)."""
    g = max(1, min(groups, num_envs))
    return [num_envs // g + (i < num_envs % g) for i in range(g)]


def _unreachable(host: str, port: int, seconds: float) -> str | None:
    """Why a TCP connection to host:port fails within `seconds`, or None if it succeeds."""
    try:
        socket.create_connection((host, port), timeout=seconds).close()
    except OSError as exc:
        return exc.strerror or first_line(exc)
    return None


def _check_reachable(address: str, seconds: float = 3.0) -> None:
    """A `host:port` address must accept a TCP connection: Ray's own client retries an
    unreachable GCS for a long time and prints C++ warnings meanwhile, instead of failing."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--ray_address={address!r}: must be host:port, 'auto' (a cluster "
                        "started on this machine) or ray://host:port")
    why = _unreachable(host, int(port), seconds)
    if why:
        raise UserError(f"--ray_address={address!r}: cannot reach a Ray cluster there ({why})")


class ClusterLost(RunError):
    """The Ray cluster went away under the run; the model, here, is intact and saved."""

    keeps_model = True


def gcs_address(ray) -> str | None:
    """The connected cluster's GCS host:port; None in Ray Client mode (ray://)."""
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - Ray Client mode, or a Ray without it
        return None


def cluster_lost(address: str | None, stop: threading.Event) -> ClusterLost | None:
    """ClusterLost if the GCS at `address` refuses WATCH_MISSES connections in a row,
    WATCH_SECONDS apart; None as soon as one succeeds (or no address, or `stop` is set)."""
    if not address:
        return None
    host, _, port = address.rpartition(":")
    for miss in range(1, WATCH_MISSES + 1):
        why = _unreachable(host, int(port), WATCH_SECONDS)
        if not why:
            return None
        if miss == WATCH_MISSES or stop.wait(WATCH_SECONDS):
            break
    return ClusterLost(f"the Ray cluster is gone: its GCS at {address} has not answered "
                       f"{miss} check{'s' * (miss > 1)} in a row ({why})")


class ClusterWatch(Worker):
    """Checks every WATCH_SECONDS that the cluster's GCS accepts a connection, and fails the
    run with one line (ClusterLost: exit 1, after a final checkpoint) once it has not for
    WATCH_MISSES checks in a row. Without it a lost cluster looks like runners that stopped
    answering, until Ray's core worker gives up on the GCS (60 s) and ends this process from
    C++, with no checkpoint and a log line about gcs_server.out. (A runner whose actor died
    asks the same question before it fails the run.)"""

    def __init__(self, stop: threading.Event, failure: Failure) -> None:
        super().__init__("ray-cluster-watch", stop, failure)

    def work(self) -> None:
        import ray

        address = gcs_address(ray)
        while address and not self.stop_event.wait(WATCH_SECONDS):
            lost = cluster_lost(address, self.stop_event)
            if lost is not None:
                raise lost


@contextlib.contextmanager
def ray_session(address: str, num_runners: int):
    """Ray connected for the run: `address` "" starts a local Ray (shut down at the end, so no
    raylet, GCS or worker process of it outlives the run); otherwise connects to a running
    cluster ("auto", host:port, ray://...) and disconnects at the end. A Ray already
    initialised in this process (a notebook's) is used as it is and left running.

    ray.init sets its own SIGTERM handler in the main thread; ga3c's (see `ga3c.cli`) is put
    back at once, and a SIGTERM during the init itself is passed on to it after Ray is down.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address and address != "auto" and "://" not in address:
        _check_reachable(address)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    in_main = threading.current_thread() is threading.main_thread()
    kwargs = dict(include_dashboard=False, logging_level="WARNING", configure_logging=True)
    if address:
        kwargs["address"] = address
    else:
        # "local": a new instance even if RAY_ADDRESS names a cluster. Each runner reserves
        # ACTOR_CPUS, so a small machine still fits all of them (oversubscribed, as threads).
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        kwargs.update(address="local", num_cpus=max(os.cpu_count() or 1, num_runners),
                      runtime_env={"env_vars": {"PYTHONPATH": path}},
                      _system_config={"max_direct_call_object_size": INLINE_BYTES})
    try:
        ray.init(**kwargs)
    except SystemExit as exc:  # Ray's SIGTERM handler fired during the init
        with contextlib.suppress(Exception):
            ray.shutdown()
        handler = saved[signal.SIGTERM]
        if in_main and callable(handler):
            handler(signal.SIGTERM, None)
        raise exc
    except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError, RuntimeError...
        with contextlib.suppress(Exception):
            ray.shutdown()
        where = f"--ray_address={address!r}" if address else "a local Ray"
        raise UserError(f"{where}: cannot start or connect to Ray: {first_line(exc)}") from None
    finally:
        if in_main:
            for s, handler in saved.items():
                if handler is not None:
                    signal.signal(s, handler)
    try:
        yield ray
    finally:
        ray.shutdown()


class Observed(NamedTuple):
    """A runner actor's reply for one group: what its envs returned (`LockStepEnvs.recv`'s
    values, or `reset`'s), the observations coded by `ga3c.frames` and of the info only the
    lives (episodic life needs them)."""

    ids: np.ndarray
    obs: Packed
    rewards: np.ndarray | None = None  # None: a reset's
    terminated: np.ndarray | None = None
    truncated: np.ndarray | None = None
    lives: np.ndarray | None = None

    @property
    def info(self) -> dict:
        return {} if self.lives is None else {"lives": self.lives}


def _lives(info: dict) -> np.ndarray | None:
    return None if "lives" not in info else np.asarray(info["lives"])


class EnvRunner:
    """What a runner actor holds (plain Python: `ray.remote` wraps it in `RemoteRunner`, and
    tests drive it directly): its groups' envs, each with the encoder of its observations.
    `make_envs[g]()` builds group g's envs in the actor's process."""

    def __init__(self, make_envs: Sequence[Callable]) -> None:
        self.groups: list[LockStepEnvs] = []
        try:
            for make in make_envs:
                self.groups.append(LockStepEnvs.of(make()))
        except BaseException:
            self.close()
            raise
        self.encoders = [StackEncoder(g.num_envs) for g in self.groups]

    def where(self) -> str:
        """The host, Ray node and process this actor runs in (for the runner's log line)."""
        import ray

        node = ray.get_runtime_context().get_node_id() or "?"
        return f"{socket.gethostname()} (node {node[:8]}, pid {os.getpid()})"

    def reset(self, group: int, seed: int) -> Observed:
        ids, obs, info = self.groups[group].reset(seed)
        return Observed(ids, self.encoders[group].encode(ids, obs, whole=True),
                        lives=_lives(info))

    def step(self, group: int, actions: np.ndarray) -> Observed:
        envs = self.groups[group]
        envs.send(actions)
        ids, obs, rewards, terminated, truncated, info = envs.recv()
        return Observed(ids, self.encoders[group].encode(ids, obs), rewards, terminated,
                        truncated, _lives(info))

    def close(self) -> None:
        for g in self.groups:
            with contextlib.suppress(Exception):
                g.close()


class Call(NamedTuple):
    """A call to the actor in flight: group `group`'s reset (`step` False) or step."""

    group: int
    ref: object  # its ray.ObjectRef
    sent: float  # time.monotonic() when it was sent
    step: bool


class RemoteRunner(Worker):
    """A learner-side thread that drives one `EnvRunner` actor (see the module docstring).

    `make_envs` builds one group's envs from its size (it is pickled to the actor's node).
    Group g of runner `index` is seeded `seed + (envs before it)`, so a runner's envs get the
    seeds an agent with the same envs would give them. An actor that dies (its process or
    node lost) is counted, logged and restarted by Ray up to MAX_RESTARTS times; its groups
    start new episodes with fresh seeds. Its groups' unfinished segments are dropped (their
    episodes cannot go on), and counted: their transitions (each group's bookkeeping's
    `held`, as of its latest reply: built from env steps already counted, never delivered;
    `dropped`, also in `Stats`), and the group steps in flight (`lost_steps`: their env steps
    were never counted, and whether the actor took them before it died is unknown). Nothing
    else: every segment completed is on the training queue. Any other exception (an env's,
    in the actor) fails the run like an agent's.
    """

    def __init__(self, index: int, make_envs: Callable[[int], object], num_envs: int,
                 seed: int, n_step: int, gamma: float, predictors: PredictorGroup,
                 training_queue, stats, stop: threading.Event, failure: Failure,
                 clip_rewards: bool = False, episodic_life: bool = False,
                 max_restarts: int = MAX_RESTARTS, groups: int = GROUPS,
                 return_stats=None) -> None:
        super().__init__(f"runner-{index}", stop, failure)
        self._sizes = sizes = group_sizes(num_envs, groups)
        self._makers = [functools.partial(make_envs, n) for n in sizes]
        self._seeds = [seed + int(o) for o in np.cumsum([0, *sizes[:-1]])]
        self._n_step, self._gamma = n_step, gamma
        self._clip_rewards, self._episodic_life = clip_rewards, episodic_life
        self._return_stats = return_stats  # the run's, under --normalize_reward
        self._predictors = predictors
        self._training_queue = training_queue
        self._stats = stats
        self.max_restarts = max_restarts
        self.deaths = 0  # actor deaths seen (each one restarted by Ray, up to max_restarts)
        self.dropped = 0  # transitions lost with dead actors (see the class docstring)
        self.lost_steps = 0  # group steps in flight when an actor died
        self.rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        # per group, made at each reset reply: its bookkeeping and its observations' decoder
        self._books: list[Bookkeeper | None] = [None] * len(sizes)
        self._decoders: list[StackDecoder | None] = [None] * len(sizes)
        self.actor = None
        self._where = None  # the ref of where(), asked of each new (or restarted) actor
        self._gcs = None  # the cluster's GCS address (see `_failed`)
        self.started = threading.Event()  # its actor answered (started, envs made)

    def work(self) -> None:
        import ray

        self._gcs = gcs_address(ray)
        remote = ray.remote(num_cpus=ACTOR_CPUS, max_restarts=self.max_restarts)(EnvRunner)
        self.actor = remote.remote(self._makers)
        try:
            self._loop(ray)
        finally:
            self._stats.end_source(self.name)
            with contextlib.suppress(Exception):
                ray.get(self.actor.close.remote(), timeout=2.0)
            with contextlib.suppress(Exception):
                ray.kill(self.actor, no_restart=True)

    def _loop(self, ray) -> None:
        slot = ReplySlot()
        # Calls in flight, oldest first; the actor answers them in this order.
        pending = collections.deque(self._resets(0))
        seconds = START_SECONDS
        recovering_until = None  # after an actor's death: until its groups are reset again
        while True:
            call = pending.popleft()
            try:
                # A reset's reply brings nothing to hand over: a runner retired meanwhile (one
                # the autotuner added whose actor has not started yet) does not wait for it.
                result = self._get(ray, call.ref, seconds, or_retired=not call.step)
            except ray.exceptions.RayActorError as exc:
                recovering_until = self._after_actor_error(ray, exc, recovering_until,
                                                           [call, *pending])
                pending = collections.deque(self._resets(self.deaths))
                seconds = START_SECONDS
                continue
            if result is None:
                if self.stop_event.is_set():
                    return
                break  # retired while a reset was in flight
            self.started.set()
            seconds, recovering_until = CALL_SECONDS, None
            if self._where is not None:  # answered before the reset: the actor's calls
                where, self._where = self._where, None  # run in order
                log(f"{self.name}: its actor runs on {ray.get(where, timeout=CALL_SECONDS)}")
            if call.step:
                self._stats.add_round_trip(time.monotonic() - call.sent)
                if not self._deliver(call.group, result):
                    return
            else:
                self._begin(call.group, result)
            if self.stopping:
                break
            book = self._books[call.group]
            reply = self._predictors.predict(book.obs, slot, self)
            if reply is None:
                return
            actions = book.act(sample_actions(reply.logits, self.rng), reply.version)
            pending.append(Call(call.group, self.actor.step.remote(call.group, actions),
                                time.monotonic(), step=True))
        if not self.stop_event.is_set():
            self._retire(ray, pending)

    @property
    def unsent(self) -> list[int]:
        """Per group: the transitions its bookkeeping holds in unfinished segments, as of its
        latest reply (what the actor's death drops: its episodes cannot go on)."""
        return [0 if book is None else book.held for book in self._books]

    def _begin(self, group: int, reset: Observed) -> None:
        """A (re)started actor's first observations of `group`: new bookkeeping for it."""
        size = self._sizes[group]
        self._decoders[group] = decoder = StackDecoder(size)
        obs = decoder.decode(reset.ids, reset.obs)
        self._books[group] = book = Bookkeeper(size, obs.shape[1:], obs.dtype, self._n_step,
                                               self._gamma, self._clip_rewards,
                                               self._episodic_life,
                                               return_stats=self._return_stats)
        book.begin(reset.ids, obs, reset.info)

    def _deliver(self, group: int, step: Observed) -> bool:
        """A group step's reply: its transitions and episodes to the training queue and
        Stats; False if the runner was stopped meanwhile."""
        obs = self._decoders[group].decode(step.ids, step.obs)
        result = self._books[group].observe(step.ids, obs, step.rewards, step.terminated,
                                            step.truncated, step.info)
        return deliver(result, self._stats, self._training_queue, self, self.name)

    def _resets(self, round_: int) -> list[Call]:
        """Reset calls for every group; after a restart (`round_` > 0) with new seeds, so the
        restarted envs do not replay the episodes they played before."""
        shift = round_ * 1_000_003
        self._where = self.actor.where.remote()
        return [Call(g, self.actor.reset.remote(g, (s + shift) % 2**31), time.monotonic(),
                     step=False) for g, s in enumerate(self._seeds)]

    def _after_actor_error(self, ray, exc: BaseException, recovering_until: float | None,
                           lost: list[Call]) -> float:
        """A call failed because the actor died or is restarting; `lost`: it and the calls
        sent after it. The first error of a death counts it and what it took with it (see
        the class docstring; RunError past max_restarts); the calls that fail while Ray
        restarts the actor are sent again, for at most START_SECONDS. Returns the time
        recovery gives up at."""
        now = time.monotonic()
        if recovering_until is None:
            self.deaths += 1
            what = self._drop(lost)
            if self.deaths > self.max_restarts:
                raise self._failed(f"{self.name}: its Ray actor died {self.deaths} times, "
                                   f"the last: {first_line(exc)} ({what})")
            log(f"{self.name}: its Ray actor died ({first_line(exc)}); {what}; Ray restarts "
                f"it ({self.deaths} of at most {self.max_restarts})")
            return now + START_SECONDS
        # ActorDiedError (Rays since 2024): gone for good. Older ones raise a plain RayActorError
        # while the actor restarts too: asked again until recovery gives up.
        if (isinstance(exc, getattr(ray.exceptions, "ActorDiedError", ()))
                or now > recovering_until):
            raise self._failed(f"{self.name}: its Ray actor did not come back after dying: "
                               f"{first_line(exc)}")
        self.stop_event.wait(POLL_SECONDS)  # restarting: ask again shortly
        return recovering_until

    def _failed(self, message: str) -> RunError:
        """The error that ends the run when this runner's actor is gone for good: ClusterLost
        if the whole cluster went (see `ClusterWatch`), else a RunError with `message`."""
        return cluster_lost(self._gcs, self.stop_event) or RunError(message)

    def _drop(self, lost: list[Call]) -> str:
        """The actor died: count what it took with it (its groups' unsent transitions, the
        steps among the `lost` calls), in this runner and in Stats; says what for the log."""
        dropped, steps = sum(self.unsent), sum(c.step for c in lost)
        # a restarted actor's groups start afresh (new bookkeeping at their reset replies)
        self._books = [None] * len(self._books)
        self._decoders = [None] * len(self._decoders)
        self.dropped += dropped
        self.lost_steps += steps
        self._stats.add_dropped(dropped)
        return f"{dropped} unsent transitions dropped, {steps} group steps in flight lost"

    def _get(self, ray, ref, seconds: float, or_retired: bool = False):
        """The call's result, or None if the service stopped first (or, `or_retired`, this
        runner was retired); RunError if the actor does not answer within `seconds`."""
        deadline = time.monotonic() + seconds
        while not (self.stopping if or_retired else self.stop_event.is_set()):
            try:  # (one call, not ray.wait then ray.get: this is once per group step)
                return ray.get(ref, timeout=POLL_SECONDS)
            except ray.exceptions.GetTimeoutError:
                pass
            if time.monotonic() > deadline:
                raise RunError(f"{self.name}: its Ray actor did not answer within {seconds:g} s "
                               "(not enough free CPUs in the cluster for the runners, or a "
                               "node lost?)")
        return None

    def _retire(self, ray, pending) -> None:
        """Retired while the service runs on: the steps in flight and the partial segments
        still reach training. Resets in flight are not waited for: they carry no
        transitions (a runner retired before its actor started has only those, and nothing
        to flush). An actor that dies meanwhile is counted and logged as at any death, and
        the runner ends: nothing to restart it for."""
        steps = collections.deque(c for c in pending if c.step)
        try:
            while steps:
                result = self._get(ray, steps[0].ref, CALL_SECONDS)
                if result is None or not self._deliver(steps.popleft().group, result):
                    return
        except ray.exceptions.RayActorError as exc:
            log(f"{self.name}: its Ray actor died as the runner retired ({first_line(exc)}); "
                f"{self._drop(list(steps))}")
            return
        for book in self._books:
            part = book.flush() if book is not None else None
            if part is not None and not put_until_stopped(self._training_queue, part, self):
                return
