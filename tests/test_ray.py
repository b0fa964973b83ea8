"""`--runner=ray`: Ray actor env runners feeding the central predictor and trainers.

The runner's own bookkeeping (`EnvRunner`, a death's count) and the refusals (no ray
package, a bad address, too few --max_agents for --autotune) are checked without Ray; the
tests that start one (`ray_module`) are skipped when the `ray` package is not installed
(`pip install -e '.[ray]'`). Each test that starts a Ray pays its start-up (10-15 s on a
loaded 2-core machine). The ones that run ga3c-train with a Ray: a CartPole run that trains,
a runner killed mid-run (`ray.kill`) and restarted, runners added and retired by
--autotune, and CartPole solved through two runners on a local Ray of 2 CPUs (also `slow`);
and, on an existing cluster of several nodes on this machine (tests/ray_cluster.py), runners
spread over its nodes, and the cluster lost under a run.
"""

import contextlib
import json
import functools
import os
import re
import subprocess
import sys
import threading
import time
import types
from select import select as wait_readable

import numpy as np
import pytest

from ga3c.fakes import FakePredict, FakeVectorEnv
from ga3c import procs
from ga3c.predictor import PredictorGroup
from ga3c.agent import deliver
from ga3c.cli import parse_config
from ga3c.errors import RunError
from ga3c.ray_runner import Call, EnvRunner, RemoteRunner, group_sizes, ray_session
from ga3c.returns import Transitions, reference_transitions
from ga3c.stats import Stats
from ga3c.threads import Failure
from tests.fake_vector_env import LENGTHS, TaggedFakeEnv
from tests.test_cli import (REPO, TINY, Cli, assert_one_line_error, checkpoint_counters,
                            cli_env, train_cli)
from tests.test_learning import best_mean100



@pytest.fixture
def ray_module():
    return pytest.importorskip("ray")


def assert_matches_reference(batch: Transitions, raw, n_step: int, gamma: float,
                             prefix: bool = False) -> None:
    """Every valid step of each env's raw stream is exactly one transition, equal to what
    the slow per-env reference makes of it (as tests/test_threads.py checks agents). With
    `prefix`, the stream's last transitions may be missing (still held when the run
    stopped), none before them."""
    for e, stream in enumerate(raw):
        mine = batch.states[:, 0] == e
        ref = reference_transitions(stream, n_step, gamma)
        if prefix:
            assert len(ref) >= int(mine.sum())
            ref = ref[:int(mine.sum())]
        assert int(mine.sum()) == len(ref) > 0
        np.testing.assert_array_equal(batch.states[mine], [r["state"] for r in ref])
        np.testing.assert_array_equal(batch.actions[mine], [r["action"] for r in ref])
        np.testing.assert_allclose(batch.rewards[mine], [r["reward"] for r in ref], rtol=1e-6)
        np.testing.assert_array_equal(batch.bootstrap_states()[mine],
                                      [r["next_state"] for r in ref])
        np.testing.assert_array_equal(batch.nsteps[mine], [r["n"] for r in ref])
        np.testing.assert_array_equal(batch.masks[mine], [r["mask"] for r in ref])


def select(batch: Transitions, rows) -> Transitions:
    """Rows of a batch (an index array or a mask), each with its own bootstrap state."""
    order = np.arange(len(batch))[rows]
    columns = {f: getattr(batch, f)[order] for f in Transitions._fields
               if f not in ("next_states", "next_index")}
    columns["next_states"] = batch.bootstrap_states()[order]
    columns["next_index"] = np.arange(len(order), dtype=np.int32)
    return Transitions(**columns)


def by_time(batch: Transitions) -> Transitions:
    """Rows in (env, episode, t) order: a group's segments arrive env-interleaved."""
    return select(batch, np.lexsort((batch.states[:, 2], batch.states[:, 1], batch.states[:, 0])))


# -- without Ray ----------------------------------------------------------------------------
def test_group_sizes_split_a_runner_s_envs():
    assert group_sizes(1) == [1]
    assert group_sizes(5) == [3, 2]
    assert group_sizes(96) == [48, 48]
    assert group_sizes(16, 1) == [16] and group_sizes(10, 3) == [4, 3, 3]


@pytest.mark.parametrize("groups, sizes", [(None, [8, 8]), (1, [16]), (3, [6, 5, 5])])
def test_runner_groups_reach_the_runners(groups, sizes):
    """`--runner_groups` (default 2) splits each runner's envs (no Ray needed to make one)."""
    from ga3c.pipeline import Pipeline

    flags = ["--runner=ray", "--envs_per_agent=16"]
    config = parse_config(flags + ([f"--runner_groups={groups}"] if groups else []))
    pipeline = Pipeline(config, FakePredict(), None, lambda: 0, Stats(), threading.Event(),
                        Failure(), seed=3)
    runner = pipeline._new_agent()
    assert isinstance(runner, RemoteRunner) and runner._sizes == sizes
    assert runner._seeds == [3 + sum(sizes[:g]) for g in range(len(sizes))]


@pytest.mark.parametrize("flag", ["--normalize_reward", "--clip_rewards"])
def test_reward_transforms_reach_the_runners_bookkeeping(flag):
    """The runner's learner-side bookkeeping applies the run's reward transform (it once
    dropped --normalize_reward: training on raw rewards, no error)."""
    from ga3c.pipeline import Pipeline
    from ga3c.ray_runner import EnvRunner

    config = parse_config(["--runner=ray", "--envs_per_agent=4", flag])
    pipeline = Pipeline(config, FakePredict(), None, lambda: 0, Stats(), threading.Event(),
                        Failure(), seed=3)
    runner = pipeline._new_agent()
    runner._makers = [functools.partial(make_fake_envs, n) for n in runner._sizes]
    actor = EnvRunner(runner._makers)
    try:
        runner._begin(0, actor.reset(0, 3))
    finally:
        actor.close()
    book = runner._books[0]
    assert (book._reward_scaler is not None) == (flag == "--normalize_reward")
    if book._reward_scaler is not None:  # the run's statistics, the ones checkpointed
        assert book._reward_scaler.stats is pipeline.return_stats is not None
    assert book._clip_rewards == (flag == "--clip_rewards")


def drive_without_ray(n_step: int, gamma: float, steps: int, seed: int = 1):
    """The actor's code (`EnvRunner`, two groups of fake envs) and the learner side's
    (`RemoteRunner._begin`/`_deliver`: decoding, bookkeeping, delivery) joined directly, the
    groups stepped alternately as the runner thread drives them. Yields after each group step
    (group, the runner, its training queue, the actor's envs)."""
    import queue

    training: queue.Queue = queue.Queue()
    runner = RemoteRunner(0, make_fake_envs, 5, 10, n_step, gamma, None, training, Stats(),
                          threading.Event(), Failure())
    actor = EnvRunner(runner._makers)
    rng = np.random.default_rng(seed)
    for g, s in enumerate(runner._seeds):
        runner._begin(g, actor.reset(g, s))
    try:
        for _ in range(steps):
            for g in range(len(actor.groups)):
                book = runner._books[g]
                actions = book.act(rng.integers(0, 2, len(book.obs)), version=7)
                assert runner._deliver(g, actor.step(g, actions))
                yield g, runner, training, [e.env for e in actor.groups]
    finally:
        actor.close()
        assert all(e.env.closed for e in actor.groups)


def drain(training) -> list[Transitions]:
    parts = []
    while not training.empty():
        parts.append(training.get_nowait())
    return parts


def test_env_runner_groups_make_the_reference_transitions():
    """Actor and learner-side code without Ray: each group's transitions (built on the
    learner side from the observations that travelled) equal the slow reference."""
    n_step, gamma = 3, 0.5
    for _, runner, training, envs in drive_without_ray(n_step, gamma, steps=14):
        pass
    episodes = runner._stats.snapshot().counts["episodes"]
    for book in runner._books:
        training.put(book.flush())
    batch = Transitions.concatenate(drain(training))
    assert [e.reset_seed for e in envs] == [10, 13]  # groups of 3 and 2 envs
    assert episodes == sum(len(e.episodes_ended) for e in envs) > 0
    assert len(batch) == sum(e.valid_steps for e in envs) and np.all(batch.versions == 7)
    for env, seed in zip(envs, [10, 13]):
        rows = select(batch, batch.states[:, 3] == seed)
        assert_matches_reference(by_time(rows), env.raw, n_step, gamma)


def test_each_step_result_counts_the_transitions_its_group_still_holds():
    """`RemoteRunner.unsent`, what a runner's death would drop, is exact at every step: every
    valid env step so far is either in a segment delivered or held, and what a flush returns
    at the end is what the last step said was held."""
    seen = set()
    for g, runner, training, envs in drive_without_ray(4, 0.9, steps=23):
        delivered = sum(int(np.count_nonzero(t.states[:, 3] == envs[g].reset_seed))
                        for t in list(training.queue))
        assert delivered + runner.unsent[g] == envs[g].valid_steps
        seen.add(runner.unsent[g])
    assert len(seen) > 3  # held counts rose and fell with the segments
    held = runner.unsent
    assert [len(b.flush()) for b in runner._books] == held and runner.unsent == [0, 0]


def held(*counts) -> list:
    """Stand-ins for a runner's per-group bookkeeping holding `counts` transitions."""
    return [types.SimpleNamespace(held=n) for n in counts]


def test_an_actor_s_death_counts_and_logs_what_it_dropped(capsys):
    """Without Ray: the first error of a death counts the transitions the groups held (their
    latest replies' `unsent`) and the steps in flight, in the runner and in Stats, and logs
    them; past max_restarts the run fails with one line saying the same."""
    stats, stop = Stats(), threading.Event()
    runner = RemoteRunner(1, make_fake_envs, 4, 0, 3, 0.9, None, None, stats, stop, Failure(),
                          max_restarts=2)
    lost = [Call(0, None, 0.0, step=True), Call(1, None, 0.0, step=True),
            Call(0, None, 0.0, step=False)]
    runner._books = held(5, 7)
    runner._after_actor_error(None, RuntimeError("actor died\ndetails"), None, lost)
    line = capsys.readouterr().out.strip()
    assert line.endswith("runner-1: its Ray actor died (actor died); 12 unsent "
                         "transitions dropped, 2 group steps in flight lost; Ray restarts it "
                         "(1 of at most 2)"), line
    assert (runner.dropped, runner.lost_steps, runner.unsent) == (12, 2, [0, 0])
    assert runner._books == [None, None]  # (a retire now must not flush what was dropped)
    assert stats.dropped_transitions == 12
    runner._books = held(0, 3)
    runner._after_actor_error(None, RuntimeError("again"), None, lost[2:])
    runner._books = held(1, 1)
    with pytest.raises(RunError, match=r"^runner-1: its Ray actor died 3 times, the last: "
                       r"lost \(2 unsent transitions dropped, 0 group steps"):
        runner._after_actor_error(None, RuntimeError("lost"), None, [])
    assert (runner.dropped, runner.lost_steps, stats.dropped_transitions) == (17, 2, 17)


def test_ray_runner_module_imports_without_ray():
    code = ("import sys; sys.modules['ray'] = None\n"
            "import ga3c.pipeline, ga3c.ray_runner\n"
            "from ga3c.errors import UserError\n"
            "try:\n    ga3c.ray_runner.require_ray()\nexcept UserError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr
    assert "pip install -e '.[ray]'" in proc.stdout


def test_runner_ray_without_the_package_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    proc = train_cli(*TINY, f"--logdir={tmp_path / 'run'}", "--runner=ray")
    assert_one_line_error(proc, "--runner=ray needs the 'ray' package", "[ray]")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, needle", [
    (["--num_runners=0"], "num_runners=0"),
    (["--runner_groups=0"], "runner_groups=0: must be >= 1"),
    (["--autotune", "--num_runners=3", "--max_agents=2"],
     "max_agents=2: must be >= num_runners=3 (with --autotune)"),
])
def test_runner_ray_bad_config_is_one_line(tmp_path, args, needle):
    proc = train_cli(*TINY, f"--logdir={tmp_path / 'run'}", "--runner=ray", *args)
    assert_one_line_error(proc, needle)


# -- with Ray -------------------------------------------------------------------------------
@pytest.mark.parametrize("address, needle", [
    ("127.0.0.1:1", "cannot reach a Ray cluster there"),
    ("nonsense", "must be host:port"),
])
def test_bad_ray_address_is_one_line_and_exit_2(tmp_path, ray_module, address, needle):
    proc = train_cli(*TINY, f"--logdir={tmp_path / 'run'}", "--runner=ray",
                     f"--ray_address={address}", "--max_env_steps=100")
    assert_one_line_error(proc, f"--ray_address={address!r}", needle)
    assert not ray_module.is_initialized()


def make_fake_envs(num_envs: int) -> FakeVectorEnv:
    return TaggedFakeEnv(LENGTHS[:num_envs])


class KeepingRunner(RemoteRunner):
    """Fetches its actor's raw env streams before the actor is killed."""

    raw = None

    def _loop(self, ray) -> None:
        super()._loop(ray)
        self.raw = ray.get(self.actor.__ray_call__.remote(
            lambda runner: [g.env.raw for g in runner.groups]), timeout=60)


@pytest.mark.ray
def test_remote_runner_transitions_match_the_reference(ray_module):
    """One runner actor in a local Ray, driven by its learner-side thread with a fake model:
    retired, it hands over everything in flight, and every transition is the reference's."""
    import queue

    n_step, gamma, seed = 3, 0.9, 100
    stop, failure, stats = threading.Event(), Failure(), Stats()
    predictors = PredictorGroup(FakePredict(), lambda: 4, stats, 16, 64, stop, failure)
    training: queue.Queue = queue.Queue()
    with ray_session("", 1):
        runner = KeepingRunner(0, make_fake_envs, 4, seed, n_step, gamma, predictors,
                               training, stats, stop, failure)
        predictors.start(1)
        runner.start()
        deadline = time.monotonic() + 120
        while stats.env_steps < 60 and not failure and time.monotonic() < deadline:
            time.sleep(0.05)
        runner.retire.set()  # hands over its steps in flight and partial segments
        runner.join(90)
        stop.set()
        for t in predictors.threads:
            t.join(5)
    assert not failure, failure.traceback
    assert not runner.is_alive() and runner.raw is not None
    parts = []
    while not training.empty():
        parts.append(training.get_nowait())
    batch = Transitions.concatenate(parts)
    assert len(batch) == stats.env_steps >= 60
    assert np.all(batch.versions == 4)
    assert group_sizes(4) == [2, 2]  # group g: envs seeded seed + 2 g, tagged with it
    for g, raw in enumerate(runner.raw):
        rows = batch.states[:, 3] == seed + 2 * g
        assert_matches_reference(by_time(select(batch, rows)), raw, n_step, gamma)


def descendants(pid: int) -> dict[int, str]:
    """{pid: start time} of every living (not zombie) process below `pid`."""
    return {child: p.start for child, p in procs.descendants(pid).items() if p.state != "Z"}


@contextlib.contextmanager
def new_descendants():
    """{pid: start time} of every process this one starts (Ray's GCS, raylet and workers
    are its descendants) while the block runs, watched in a thread."""
    before = descendants(os.getpid())
    seen: dict[int, str] = {}
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.update({p: s for p, s in descendants(os.getpid()).items() if p not in before})
            done.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join(5)


def assert_all_gone(seen: dict[int, str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while any(procs.alive(p, s) for p, s in seen.items()) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {p: procs.process(p) for p, s in seen.items() if procs.alive(p, s)}
    assert not left, left


@pytest.mark.ray
def test_cartpole_through_ray_runners_trains_and_leaves_no_ray_process(tmp_path, ray_module):
    """`ga3c-train --runner=ray --num_runners=2`: a local Ray started for the run, two runner
    actors, a checkpoint with updates; at the end every process Ray started is gone."""
    logdir = tmp_path / "run"
    with new_descendants() as seen:
        proc = train_cli(*TINY, f"--logdir={logdir}", "--runner=ray", "--num_runners=2",
                         "--max_env_steps=2000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "with 2 Ray runners x 4 envs" in proc.stdout
    env_steps, episodes, updates = checkpoint_counters(logdir)
    assert env_steps >= 2000 and episodes > 0 and updates > 0
    assert not ray_module.is_initialized()
    assert len(seen) >= 3, seen  # at least GCS, raylet and a runner's worker
    assert_all_gone(seen)


@pytest.mark.ray
@pytest.mark.slow
def test_cartpole_solves_through_ray_runners_on_a_local_ray_of_2_cpus(tmp_path, ray_module,
                                                                       monkeypatch):
    """configs/cartpole.cfg with `--runner=ray --num_runners=2` (2 x 96 envs in two runner
    actors) on a local Ray of 2 CPUs, whatever the machine has: solved (the mean of 100
    episodes >= 475) within its 120 s, and no process of that Ray left. Here (2 cores, a
    Pong training beside it) it solved in 25-26 s of training, 3 of 3 seeds."""
    import ga3c.cli

    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # ray_session: max(CPUs, num_runners)
    cpus = []
    original = ga3c.cli.StopSignals.hand_over

    def hand_over(signals, service):  # inside the run's Ray session, before training
        original(signals, service)
        cpus.append(ray_module.cluster_resources().get("CPU"))

    monkeypatch.setattr(ga3c.cli.StopSignals, "hand_over", hand_over)
    logdir = str(tmp_path / "solve")
    with new_descendants() as seen:
        proc = train_cli(f"--flagfile={REPO}/configs/cartpole.cfg", f"--logdir={logdir}",
                         "--runner=ray", "--num_runners=2", "--seed=0", "--max_seconds=120")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cpus == [2.0]
    assert "with 2 Ray runners x 96 envs" in proc.stdout
    assert "solved: mean of last 100 episodes" in proc.stdout, proc.stdout[-3000:]
    assert best_mean100(logdir) >= 475
    assert not ray_module.is_initialized()
    assert len(seen) >= 3, seen
    assert_all_gone(seen)


class RecordingRunner(RemoteRunner):
    """A runner that keeps every segment it puts on the training queue (and any the stop
    kept off it) with its actor's deaths before it, and, before its actor is killed at the
    end, its last actor's raw env streams. Put in place of `ga3c.ray_runner.RemoteRunner`
    (where the pipeline finds it), with `recording_deliver` in place of its `deliver`."""

    made: list["RecordingRunner"] = []  # every one made, in order (reset by the test)
    progress = threading.Condition()  # notified at each segment

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.segments: list[tuple[int, Transitions, bool]] = []  # (deaths, segment, put)
        self.raw = None
        self.retired = False  # its loop ended before the run's stop (it was retired)
        self._training_queue = _Recording(self._training_queue, self)
        with RecordingRunner.progress:
            RecordingRunner.made.append(self)

    def _loop(self, ray) -> None:
        super()._loop(ray)
        self.retired = not self.stop_event.is_set()
        self.raw = ray.get(self.actor.__ray_call__.remote(
            lambda runner: [g.env.raw for g in runner.groups]), timeout=30)

    def record(self, segment: Transitions, put: bool) -> None:
        with RecordingRunner.progress:
            self.segments.append((self.deaths, segment, put))
            RecordingRunner.progress.notify_all()

    def rows(self, deaths: int) -> Transitions:
        """The transitions put on the training queue after `deaths` deaths."""
        return Transitions.concatenate([t for d, t, put in self.segments if d == deaths and put])

    def built(self) -> int:
        """Transitions in the segments it put on the queue, or the stop kept off it."""
        return sum(len(t) for _, t, _ in self.segments)


class _Recording:
    """A runner's training queue, as the runner sees it."""

    def __init__(self, queue, runner: RecordingRunner) -> None:
        self._queue, self._runner = queue, runner

    def put(self, item, timeout=None) -> None:
        self._queue.put(item, timeout=timeout)  # queue.Full: not put, not recorded
        self._runner.record(item, put=True)


def recording_deliver(result, stats, training_queue, worker, source=None) -> bool:
    put = deliver(result, stats, training_queue, worker, source)
    if not put and result.segment is not None:  # the run stopped before it was put
        worker.record(result.segment, put=False)
    return put


@pytest.mark.ray
def test_a_runner_killed_mid_run_is_restarted_and_nothing_else_is_lost(tmp_path, ray_module,
                                                                         monkeypatch):
    """`ray.kill` one of two runners' actors mid-run (Ray restarts it). The run goes on and
    ends cleanly with a checkpoint; the death is logged once, with the transitions it
    dropped, and those are exactly what is missing: for each runner, env steps counted =
    transitions delivered to the training queue + dropped + held at the end. The other runner's
    transitions are intact (the slow reference's, every one up to those held at the end),
    and the restarted runner contributes again, its new episodes' transitions intact too."""
    import ga3c.cli

    monkeypatch.setattr("ga3c.ray_runner.RemoteRunner", RecordingRunner)
    monkeypatch.setattr("ga3c.ray_runner.deliver", recording_deliver)
    monkeypatch.setattr(RecordingRunner, "made", [])
    n_step, gamma = 10, 0.9  # long segments: a death almost always drops some
    progress, made = RecordingRunner.progress, RecordingRunner.made
    killed_at: dict = {}
    problems: list[str] = []
    services = []

    def drive():
        """Kill runner-1's actor once both runners contributed; stop the run once the
        restarted runner and the other one contributed again."""
        def wait_for(what, predicate) -> bool:
            deadline = time.monotonic() + 120
            with progress:
                while not predicate():
                    if services[0].stop_event.is_set() or time.monotonic() > deadline:
                        problems.append(f"the run ended or timed out before {what}")
                        return False
                    progress.wait(0.5)  # notified at each segment; the stop is not
            return True

        try:
            if not wait_for("both runners' segments", lambda: len(made) == 2 and all(
                    len(r.segments) >= 10 for r in made)):
                return
            with progress:
                killed_at.update(segments=len(made[0].segments),
                                 steps=dict(services[0].stats.snapshot().source_steps))
            ray_module.kill(made[1].actor, no_restart=False)
            wait_for("the restarted runner's segments and the other's", lambda: sum(
                d == 1 for d, _, _ in made[1].segments) >= 10 and len(
                    made[0].segments) >= killed_at["segments"] + 10)
        finally:
            services[0].request_stop("test: done")

    driver = threading.Thread(target=drive, daemon=True)
    logdir = tmp_path / "run"
    args = [*TINY, f"--logdir={logdir}", "--env=tests.fake_vector_env:TaggedFakeVector-v0",
            "--runner=ray", "--num_runners=2", f"--n_step={n_step}", f"--gamma={gamma}",
            "--max_seconds=150"]
    original = ga3c.cli.StopSignals.hand_over

    def hand_over(signals, service):  # the service, just before it starts
        original(signals, service)
        services.append(service)
        driver.start()

    monkeypatch.setattr(ga3c.cli.StopSignals, "hand_over", hand_over)
    proc = train_cli(*args)
    driver.join(30)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not problems, (problems, proc.stdout[-3000:])
    assert "stopped (test: done)" in proc.stdout
    assert checkpoint_counters(logdir)[0] > 0
    assert not ray_module.is_initialized()
    stats = proc.service.stats
    steps = stats.snapshot().source_steps
    survivor, victim = made
    assert survivor.raw is not None and victim.raw is not None

    # The death: logged once, with what it dropped; counted in Stats
    deaths = re.findall(r"runner-(\d+): its Ray actor died \(.*\); (\d+) unsent transitions "
                        r"dropped, (\d+) group steps in flight lost; Ray restarts it "
                        r"\(1 of at most 3\)", proc.stdout)
    assert deaths == [("1", str(victim.dropped), str(victim.lost_steps))], proc.stdout[-3000:]
    assert (victim.deaths, survivor.deaths) == (1, 0)
    assert stats.dropped_transitions == victim.dropped
    # Nothing lost but that: env steps counted = delivered + dropped + held at the end
    # (every segment delivered is put on the queue but one the stop may have kept off)
    for runner in made:
        assert steps[runner.name] == runner.built() + runner.dropped + sum(runner.unsent)
        assert sum(not put for _, _, put in runner.segments) <= 1
    # The survivor's transitions, before and after the kill, are all the reference's
    assert len(survivor.segments) >= killed_at["segments"] + 10
    assert steps[survivor.name] > killed_at["steps"][survivor.name]
    group_seeds = [0, 2]  # runner 0: seed 0, groups of 2 envs (seeds s, s + 2)
    for raw, seed in zip(survivor.raw, group_seeds):
        rows = survivor.rows(0)
        assert_matches_reference(by_time(select(rows, rows.states[:, 3] == seed)), raw,
                                 n_step, gamma, prefix=True)
    # The restarted runner contributes again: new episodes (new seeds), intact
    assert steps[victim.name] > killed_at["steps"][victim.name]
    rows = victim.rows(1)
    new_seeds = [4 + seed + 1_000_003 for seed in group_seeds]  # runner 1: seed 4, shifted
    assert set(np.unique(rows.states[:, 3])) == set(new_seeds)
    for raw, seed in zip(victim.raw, new_seeds):
        assert_matches_reference(by_time(select(rows, rows.states[:, 3] == seed)), raw,
                                 n_step, gamma, prefix=True)


@pytest.mark.ray
def test_a_runner_retired_before_its_actor_starts_just_goes(ray_module, monkeypatch):
    """A runner the autotuner adds and retires before its actor could start (here: an actor
    that needs more CPUs than the cluster has) ends at once, without an error, instead of
    waiting START_SECONDS for an actor that brings nothing to hand over."""
    import queue

    monkeypatch.setattr("ga3c.ray_runner.ACTOR_CPUS", 64)  # never scheduled on 2 CPUs
    stop, failure, stats = threading.Event(), Failure(), Stats()
    predictors = PredictorGroup(FakePredict(), lambda: 0, stats, 16, 64, stop, failure)
    training: queue.Queue = queue.Queue()
    with ray_session("", 1):
        runner = RemoteRunner(0, make_fake_envs, 4, 0, 3, 0.9, predictors, training, stats,
                              stop, failure)
        predictors.start(1)
        runner.start()
        deadline = time.monotonic() + 60
        while runner.actor is None and time.monotonic() < deadline:  # its resets sent
            time.sleep(0.05)
        assert runner.actor is not None
        retired_at = time.monotonic()
        runner.retire.set()
        runner.join(15)
        took = time.monotonic() - retired_at
        stop.set()
        for t in predictors.threads:
            t.join(5)
    assert not runner.is_alive() and took < 15
    assert not failure, failure.traceback
    assert stats.env_steps == 0 and training.empty() and runner.unsent == [0, 0]


@pytest.mark.ray
def test_autotune_adds_and_retires_ray_runners(tmp_path, ray_module, monkeypatch):
    """`--runner=ray --autotune` from one runner, at most two: the tuner's first trial adds
    runner-1, measures it once its actor works, and retires it (its undo), which hands over
    everything it built (env steps = transitions on the training queue, none held, none
    dropped); the run ends cleanly with the tuner's decision logged and no process of its
    Ray left."""
    monkeypatch.setattr("ga3c.ray_runner.RemoteRunner", RecordingRunner)
    monkeypatch.setattr("ga3c.ray_runner.deliver", recording_deliver)
    monkeypatch.setattr(RecordingRunner, "made", [])
    made, services = RecordingRunner.made, []
    import ga3c.cli

    original = ga3c.cli.StopSignals.hand_over

    def hand_over(signals, service):
        original(signals, service)
        services.append(service)
        driver.start()

    def drive():  # stop once the tuner decided on its first trial (runner-1 came and went)
        service = services[0]
        deadline = time.monotonic() + 150
        while not service.autotuner.decisions and time.monotonic() < deadline:
            if service.stop_event.wait(0.2):
                return
        service.request_stop("test: done")

    driver = threading.Thread(target=drive, daemon=True)
    monkeypatch.setattr(ga3c.cli.StopSignals, "hand_over", hand_over)
    logdir = tmp_path / "run"
    with new_descendants() as seen:
        proc = train_cli(*TINY, f"--logdir={logdir}",
                         "--env=tests.fake_vector_env:TaggedFakeVector-v0", "--runner=ray",
                         "--num_runners=1", "--autotune", "--max_agents=2",
                         "--autotune_window_seconds=2", "--num_trainers=1", "--max_trainers=1",
                         "--max_predictors=1", "--max_seconds=180")
    driver.join(10)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped (test: done)" in proc.stdout, proc.stdout[-3000:]
    assert re.search(r"autotune: agents 1 -> 2: throughput/s .* (kept|undone); now agents=",
                     proc.stdout), proc.stdout[-3000:]
    assert "autotune: final layout agents=" in proc.stdout
    assert checkpoint_counters(logdir)[0] > 0
    steps = proc.service.stats.snapshot().source_steps
    assert [r.name for r in made[:2]] == ["runner-0", "runner-1"]
    added = made[1]
    assert added.retired and steps.get(added.name, 0) > 0  # it ran, then was retired
    assert added.unsent == [0, 0] and added.dropped == 0
    assert all(put for _, _, put in added.segments)
    assert steps[added.name] == added.built()
    for runner in made:  # the others: nothing lost but what they held at the stop
        assert steps.get(runner.name, 0) == runner.built() + sum(runner.unsent)
    assert not ray_module.is_initialized()
    assert_all_gone(seen)


class RayCluster:
    """tests/ray_cluster.py in a subprocess: an existing Ray cluster of `nodes` worker nodes
    (each its own raylet and object store, as separate machines would be) and a head node
    with no CPUs, which ga3c-train joins with --ray_address. `ask` sends it a command."""

    def __init__(self, tmp_path, nodes: int = 2, cpus: int = 1) -> None:
        self.stderr = open(tmp_path / "cluster.err", "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "ray_cluster.py"), str(nodes),
             str(cpus)], cwd=REPO, env=cli_env(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        started = self._answer(120)
        self.address, self.nodes = started["address"], started["nodes"]

    def _answer(self, seconds: float):
        ready, _, _ = wait_readable([self.proc.stdout], [], [], seconds)
        assert ready, f"tests/ray_cluster.py did not answer in {seconds} s"
        line = self.proc.stdout.readline()
        assert line, open(self.stderr.name).read()[-3000:]
        return json.loads(line)

    def ask(self, command: str, seconds: float = 60):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer(seconds)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.stderr.close()


@pytest.fixture
def ray_cluster(tmp_path, ray_module):
    """A RayCluster of 2 worker nodes x 1 CPU; at the end every process it started is gone
    (and the address file Ray leaves for `ray.init()` names no dead cluster)."""
    with new_descendants() as seen:
        cluster = RayCluster(tmp_path)
        try:
            yield cluster
        finally:
            cluster.close()
    assert_all_gone(seen)


def actor_nodes(stdout: str) -> list[str]:
    """The node ids (first 8 hex digits) of the runner actors' log lines, in order."""
    return re.findall(r"runner-\d+: its actor runs on \S+ \(node ([0-9a-f]{8}), pid \d+\)",
                      stdout)


@pytest.mark.ray
def test_runners_spread_over_the_nodes_of_an_existing_cluster(tmp_path, ray_cluster):
    """`--ray_address=auto` (as after `ray start --head` on this machine) joins a running
    cluster of two worker nodes (1 CPU each, none on the head): each runner's actor is
    placed on a node of its own and says where it runs, the run trains through both, and the
    cluster is left as it was: its nodes alive, no runner actor of the run holding its CPU.
    (The lost-cluster test below gives the address as host:port.)"""
    logdir = tmp_path / "run"
    cli = Cli(*TINY, f"--logdir={logdir}", "--runner=ray", "--num_runners=2",
              "--ray_address=auto", "--max_env_steps=3000")
    try:
        cli.proc.wait(240)
    finally:
        cli.kill()
    assert cli.proc.returncode == 0, (cli.stdout[-2000:], cli.stderr[-3000:])
    nodes = actor_nodes(cli.stdout)
    assert len(nodes) == 2 and set(nodes) == {n[:8] for n in ray_cluster.nodes}, cli.stdout
    env_steps, episodes, updates = checkpoint_counters(logdir)
    assert env_steps >= 3000 and episodes > 0 and updates > 0
    assert len(ray_cluster.ask("nodes")) == 3  # the head and both workers
    assert ray_cluster.ask("free_cpus") == [2, 2]  # no runner actor holds one


@pytest.mark.ray
def test_a_lost_cluster_is_one_line_exit_1_and_a_checkpoint(tmp_path, ray_cluster):
    """The cluster's head node is killed under a run (its GCS and raylet; the worker nodes,
    the runners' actors on them, are left cut off from it): within seconds, before Ray's core worker would end the process on its own (60 s without its
    GCS), the run stops with one line naming the lost cluster, exit 1, and a final
    checkpoint it resumes from."""
    logdir = tmp_path / "run"
    cli = Cli(*TINY, f"--logdir={logdir}", "--runner=ray", "--num_runners=2",
              f"--ray_address={ray_cluster.address}", "--max_seconds=300",
              "--target_score=100000", "--checkpoint_every_seconds=1000")
    try:
        for runner in ("runner-0", "runner-1"):
            cli.wait_for(f"{runner}: its actor runs on", timeout=180)
        cli.wait_for("ev ", timeout=60)  # trained
        assert ray_cluster.ask("kill") == "killed"
        t0 = time.monotonic()
        cli.proc.wait(60)
        seconds = time.monotonic() - t0
    finally:
        cli.kill()
    print(f"the run ended {seconds:.1f} s after its cluster's head node was killed")
    assert cli.proc.returncode == 1, (cli.stdout[-2000:], cli.stderr[-3000:])
    assert seconds < 30, seconds
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in cli.stderr, cli.stderr[-3000:]
    assert lines[0].startswith("ga3c: error: the Ray cluster is gone: its GCS at "
                               f"{ray_cluster.address} has not answered 3 checks"), lines[0]
    assert "(the same command resumes from it)" in lines[0], lines[0]
    env_steps, episodes, updates = checkpoint_counters(logdir)
    assert env_steps > 0 and updates > 0
    assert f"ckpt-{env_steps}" in lines[0], lines[0]


def test_cluster_lost_only_after_the_gcs_misses_every_check(monkeypatch):
    """Without Ray: a GCS address that accepts connections is not lost; one that refuses
    them is, after WATCH_MISSES checks in a row (the message names it and how many); a
    stop during the checks ends them."""
    import socket

    from ga3c import ray_runner

    monkeypatch.setattr(ray_runner, "WATCH_SECONDS", 0.01)
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        assert ray_runner.cluster_lost(address, stop) is None
    lost = ray_runner.cluster_lost(address, stop)  # the port is closed now
    assert isinstance(lost, ray_runner.ClusterLost) and lost.keeps_model
    assert str(lost).startswith(f"the Ray cluster is gone: its GCS at {address} has not "
                                f"answered {ray_runner.WATCH_MISSES} checks in a row ("), lost
    stop.set()
    assert "has not answered 1 check in a row" in str(ray_runner.cluster_lost(address, stop))
    assert ray_runner.cluster_lost(None, stop) is None  # Ray Client mode: not watched
