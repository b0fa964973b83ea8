"""`--runner=ray`: Ray actor env runners feeding the central predictor and trainers.

The runner's own bookkeeping (`EnvRunner`) and the refusals (no ray package, a bad address,
--autotune) are checked without Ray; the tests that start one (`ray_module`) are skipped when
the `ray` package is not installed (`pip install -e '.[ray]'`). Each test that starts a Ray
pays its start-up (10-15 s on a loaded 2-core machine).
"""

import functools
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ga3c.fakes import FakePredict, FakeVectorEnv
from ga3c.predictor import PredictorGroup
from ga3c.errors import RunError
from ga3c.ray_runner import Call, EnvRunner, RemoteRunner, group_sizes, ray_session
from ga3c.returns import Transitions, reference_transitions
from ga3c.stats import Stats
from ga3c.threads import Failure
from tests.test_cli import REPO, TINY, assert_one_line_error, checkpoint_counters, train_cli

LENGTHS = [1, 2, 3, 5, 4]  # FakeVectorEnv episode lengths, env by env


@pytest.fixture
def ray_module():
    return pytest.importorskip("ray")


def assert_matches_reference(batch: Transitions, raw, n_step: int, gamma: float) -> None:
    """Every valid step of each env's raw stream is exactly one transition, equal to what
    the slow per-env reference makes of it (as tests/test_threads.py checks agents)."""
    for e, stream in enumerate(raw):
        mine = batch.states[:, 0] == e
        ref = reference_transitions(stream, n_step, gamma)
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


def test_env_runner_groups_make_the_reference_transitions():
    """The actor's code driven directly: two groups stepped alternately, as the learner-side
    thread drives them, each group's transitions equal to the slow reference."""
    n_step, gamma, steps = 3, 0.5, 14
    runner = EnvRunner([functools.partial(FakeVectorEnv, LENGTHS[:3]),
                        functools.partial(FakeVectorEnv, LENGTHS[3:])], n_step, gamma)
    rng = np.random.default_rng(0)
    parts: list[list[Transitions]] = [[], []]
    episodes = 0
    obs = [runner.reset(g, seed=10 + g) for g in range(2)]
    for _ in range(steps):
        for g in range(2):
            result = runner.step(g, rng.integers(0, 2, len(obs[g])), version=7)
            obs[g] = result.obs
            episodes += len(result.returns)
            if result.segment is not None:
                parts[g].append(result.segment)
    for g, part in enumerate(runner.flush()):
        parts[g].append(part)
    envs = [group.envs.env for group in runner.groups]
    assert [e.reset_seed for e in envs] == [10, 11]
    assert episodes == sum(len(e.episodes_ended) for e in envs)
    for g, env in enumerate(envs):
        batch = Transitions.concatenate(parts[g])
        assert len(batch) == env.valid_steps and np.all(batch.versions == 7)
        assert_matches_reference(by_time(batch), env.raw, n_step, gamma)
    runner.close()
    assert all(e.closed for e in envs)


def test_each_step_result_counts_the_transitions_its_group_still_holds():
    """`StepResult.unsent`, what a runner's death would drop, is exact at every step: every
    valid env step so far is either in a segment returned or held, and what a flush returns
    at the end is what the last step said was held."""
    n_step, gamma = 4, 0.9
    runner = EnvRunner([functools.partial(FakeVectorEnv, LENGTHS[:3]),
                        functools.partial(FakeVectorEnv, LENGTHS[3:])], n_step, gamma)
    rng = np.random.default_rng(1)
    obs = [runner.reset(g, seed=g) for g in range(2)]
    delivered, unsent = [0, 0], [0, 0]
    seen = set()
    for _ in range(23):
        for g in range(2):
            result = runner.step(g, rng.integers(0, 2, len(obs[g])), version=0)
            obs[g] = result.obs
            delivered[g] += 0 if result.segment is None else len(result.segment)
            unsent[g] = result.unsent
            assert delivered[g] + unsent[g] == runner.groups[g].envs.env.valid_steps
            seen.add(unsent[g])
    assert len(seen) > 3  # held counts rose and fell with the segments
    assert [len(part) for part in runner.flush()] == unsent
    runner.close()


def test_an_actor_s_death_counts_and_logs_what_it_dropped(capsys):
    """Without Ray: the first error of a death counts the transitions the groups held (their
    latest replies' `unsent`) and the steps in flight, in the runner and in Stats, and logs
    them; past max_restarts the run fails with one line saying the same."""
    stats, stop = Stats(), threading.Event()
    runner = RemoteRunner(1, make_fake_envs, 4, 0, 3, 0.9, None, None, stats, stop, Failure(),
                          max_restarts=2)
    lost = [Call(0, None, 0.0, step=True), Call(1, None, 0.0, step=True),
            Call(0, None, 0.0, step=False)]
    runner.unsent = [5, 7]
    runner._after_actor_error(None, RuntimeError("actor died\ndetails"), None, lost)
    line = capsys.readouterr().out.strip()
    assert line.endswith("runner-1: its Ray actor died (actor died); 12 unsent "
                         "transitions dropped, 2 group steps in flight lost; Ray restarts it "
                         "(1 of at most 2)"), line
    assert (runner.dropped, runner.lost_steps, runner.unsent) == (12, 2, [0, 0])
    assert stats.dropped_transitions == 12
    runner.unsent = [0, 3]
    runner._after_actor_error(None, RuntimeError("again"), None, lost[2:])
    runner.unsent = [1, 1]
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
    (["--autotune"], "autotune=True: must be false with --runner=ray"),
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


class TaggedFakeEnv(FakeVectorEnv):
    """FakeVectorEnv whose observations carry the seed of the last reset in column 3: the
    two groups of a runner step the same lengths, and this tells their rows apart."""

    def reset(self, seed=None):
        self.tag = float(seed)
        return super().reset(seed)

    def _obs(self) -> np.ndarray:
        obs = super()._obs()
        obs[:, 3] = self.tag
        return obs


def make_fake_envs(num_envs: int) -> FakeVectorEnv:
    return TaggedFakeEnv(LENGTHS[:num_envs])


class KeepingRunner(RemoteRunner):
    """Fetches its actor's raw env streams before the actor is killed."""

    raw = None

    def _loop(self, ray) -> None:
        super()._loop(ray)
        self.raw = ray.get(self.actor.__ray_call__.remote(
            lambda runner: [g.envs.env.raw for g in runner.groups]), timeout=60)


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
    parents, starts = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(entry)], starts[int(entry)] = int(fields[1]), fields[19]
    found, frontier = {}, [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                found[child] = starts[child]
                frontier.append(child)
    return found


def alive(pid: int, start: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == start


@pytest.mark.ray
def test_cartpole_through_ray_runners_trains_and_leaves_no_ray_process(tmp_path, ray_module):
    """`ga3c-train --runner=ray --num_runners=2`: a local Ray started for the run, two runner
    actors, a checkpoint with updates; at the end every process Ray started is gone."""
    before = descendants(os.getpid())
    seen: dict[int, str] = {}
    watching = threading.Event()

    def watch():  # Ray's processes (GCS, raylet, workers) are this process's descendants
        while not watching.is_set():
            seen.update({p: s for p, s in descendants(os.getpid()).items() if p not in before})
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    logdir = tmp_path / "run"
    try:
        proc = train_cli(*TINY, f"--logdir={logdir}", "--runner=ray", "--num_runners=2",
                         "--max_env_steps=2000")
    finally:
        watching.set()
        watcher.join(5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "with 2 Ray runners x 4 envs" in proc.stdout
    env_steps, episodes, updates = checkpoint_counters(logdir)
    assert env_steps >= 2000 and episodes > 0 and updates > 0
    assert not ray_module.is_initialized()
    assert len(seen) >= 3, seen  # at least GCS, raylet and a runner's worker
    deadline = time.monotonic() + 30
    while any(alive(p, s) for p, s in seen.items()) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {p: open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:120]
            for p, s in seen.items() if alive(p, s)}
    assert not left, left
