"""Atari through ale-py's vector env: ids, spaces, reward clipping, a few hundred real steps."""

import json

import numpy as np
import pytest

from ga3c.config import EnvConfig
from ga3c.envs import (EnvError, LockStepEnvs, ale_game, frames_last, inspect_env,
                       make_agent_envs, make_vector_env)
from ga3c.returns import Transitions, reference_transitions
from tests.test_cli import REPO, all_finite, checkpoint_counters, tf_latest_checkpoint, train_cli
from tests.test_threads import run_agent_until_retired

pytest.importorskip("ale_py")


@pytest.mark.parametrize("env_id, game", [
    ("ALE/Pong-v5", "pong"), ("ALE/Breakout-v5", "breakout"),
    ("ALE/SpaceInvaders-v5", "space_invaders"), ("ALE/MsPacman-v5", "ms_pacman"),
    ("ALE/TicTacToe3D-v5", "tic_tac_toe_3d"),  # a CamelCase regex made "tic_tac_toe3_d"
    ("CartPole-v1", None), ("ALE/Pong", None), ("ALE/NoSuchGame-v5", None),
])
def test_ale_ids_map_to_rom_names(env_id, game):
    assert ale_game(env_id) == game


def test_pong_spaces_are_the_preprocessed_frames():
    spec = inspect_env("ALE/Pong-v5")
    assert spec.obs_shape == (84, 84, 4) and spec.obs_dtype == np.uint8
    assert spec.num_actions == 6


def test_unknown_rom_is_a_clear_error():
    with pytest.raises(EnvError, match="NoSuchGame"):
        inspect_env("ALE/NoSuchGame-v5")


def test_pong_vector_env_steps_with_next_step_autoreset_and_real_rewards():
    env = make_vector_env("ALE/Pong-v5", 2, EnvConfig(env_id="ALE/Pong-v5"))
    try:
        assert str(env.metadata["autoreset_mode"]).endswith("NEXT_STEP")
        obs, _ = env.reset(seed=0)
        assert obs.shape == (2, 84, 84, 4) and obs.dtype == np.uint8
        rng = np.random.default_rng(0)
        rewards = []
        for _ in range(400):
            obs, r, term, trunc, _ = env.step(rng.integers(0, 6, 2))
            rewards.extend(r.tolist())
        assert set(rewards) <= {-1, 0, 1} and -1 in rewards  # Pong: a point is +-1
    finally:
        env.close()


def test_agent_clips_training_rewards_but_reports_real_scores():
    """Rewards of the fake env are 1 + t + 10 e (> 1): training sees them clipped to 1."""
    lengths, n_step, gamma, steps = [2, 3], 2, 0.5, 8
    env, stats, parts, _ = run_agent_until_retired(lengths, n_step, gamma, steps,
                                                   clip_rewards=True)
    batch = Transitions.concatenate(parts)
    for e in range(len(lengths)):
        clipped = [(s, a, float(np.clip(r, -1, 1)), te, tr, ns) for s, a, r, te, tr, ns
                   in env.raw[e]]
        ref = reference_transitions(clipped, n_step, gamma)
        mine = batch.states[:, 0] == e
        np.testing.assert_allclose(batch.rewards[mine], [r["reward"] for r in ref], rtol=1e-6)
    # Scores for the console and episodes.csv are the raw sums: in 8 steps env 0 ends 3
    # episodes of 1 + 2 = 3, env 1 ends 2 of 11 + 12 + 13 = 36 (clipped they would be 2 and 3).
    assert stats.episodes == 5
    assert stats.mean_score() == pytest.approx((3 * 3 + 2 * 36) / 5)


def test_frames_last_moves_the_stack_axis_without_mixing_frames():
    stack_first = np.arange(2 * 4 * 3 * 5, dtype=np.uint8).reshape(2, 4, 3, 5)
    moved = frames_last(stack_first)
    assert moved.shape == (2, 3, 5, 4) and moved.flags.c_contiguous
    for k in range(4):
        np.testing.assert_array_equal(moved[..., k], stack_first[:, k])


class RecordingEnvs(LockStepEnvs):
    """Wraps an agent's envs (lock step or async) and records each env's stream as
    `reference_transitions` takes it, lost lives included."""

    def __init__(self, inner: LockStepEnvs) -> None:
        self.inner = inner
        self.num_envs = inner.num_envs
        self.single_observation_space = inner.single_observation_space
        self.raw = [[] for _ in range(self.num_envs)]
        self._obs, self._lives = {}, {}

    def _arrive(self, ids, obs, info, rewards=None, term=None, trunc=None):
        for k, e in enumerate(ids):
            lives = int(info["lives"][k])
            if e in self._obs:  # a step of env e (else its first, reset, observation)
                self.raw[e].append((self._obs[e], int(self._actions[e]), float(rewards[k]),
                                    bool(term[k]), bool(trunc[k]), obs[k].copy(),
                                    lives < self._lives[e]))
            self._obs[e], self._lives[e] = obs[k].copy(), lives
        self._ids = ids

    def reset(self, seed):
        ids, obs, info = self.inner.reset(seed)
        self._actions = {}
        self._arrive(ids, obs, info)
        return ids, obs, info

    def send(self, actions):
        self._actions.update(zip(self._ids.tolist(), actions))
        self.inner.send(actions)

    def recv(self):
        ids, obs, rewards, term, trunc, info = self.inner.recv()
        self._arrive(ids, obs, info, rewards, term, trunc)
        return ids, obs, rewards, term, trunc, info

    def close(self):
        self.inner.close()


def transition_keys(rows):
    """Order-free fingerprints of transitions (frames hashed), for multiset comparison."""
    return sorted((hash(s.tobytes()), int(a), round(float(r), 4), hash(ns.tobytes()), int(n),
                   float(m)) for s, a, r, ns, n, m in rows)


@pytest.mark.parametrize("backend, batch", [("threads", 0), ("ale_vector", 0),
                                            ("ale_vector", 2)])
def test_atari_backends_make_the_same_transitions_as_the_reference(backend, batch):
    """A few hundred real Breakout steps through an agent, with lost lives (episodic life),
    terminations (game over) and truncations (a short frame cap): every transition the agent
    puts on the training queue, and only those, is what the slow reference makes of the
    recorded stream, with clipped rewards. `batch=2`: ale-py's async mode, 2 of the 3 envs
    per recv(), so each env keeps its own segment clock."""
    config = EnvConfig(env_id="ALE/Breakout-v5", env_backend=backend, max_episode_frames=900,
                       clip_rewards=True, episodic_life=True, ale_batch_size=batch,
                       envs_per_agent=3)
    env = RecordingEnvs(make_agent_envs(config.env_id, 3, config))
    n_step, gamma = 5, 0.9
    steps = 400 if batch == 0 else 600  # async: each recv() steps 2 of the 3 envs
    _, stats, parts, _ = run_agent_until_retired(env, n_step, gamma, steps, timeout=60.0,
                                                 num_actions=4, clip_rewards=True,
                                                 episodic_life=True)
    batch = Transitions.concatenate(parts)
    expected = []
    for raw in env.raw:
        clipped = [(s, a, float(np.clip(r, -1, 1)), *rest) for s, a, r, *rest in raw]
        expected += [(t["state"], t["action"], t["reward"], t["next_state"], t["n"], t["mask"])
                     for t in reference_transitions(clipped, n_step, gamma)]
    got = list(zip(batch.states, batch.actions, batch.rewards, batch.bootstrap_states(), batch.nsteps,
                   batch.masks))
    assert transition_keys(got) == transition_keys(expected)
    steps_seen = [step for raw in env.raw for step in raw]
    assert sum(s[3] for s in steps_seen) >= 1, "no game ended: the test lost its point"
    assert sum(s[4] for s in steps_seen) >= 1, "no episode was truncated"
    assert sum(s[6] and not s[3] for s in steps_seen) >= 3, "no life was lost mid-game"
    # Scores count whole games (truncated or over), not lives.
    assert stats.episodes == sum(s[3] or s[4] for s in steps_seen)


@pytest.fixture(scope="module")
def pong_run(tmp_path_factory):
    """configs/pong.cfg as shipped, through `ga3c-train`'s entry function (the test run's one
    Pong run through the CLI), for 480 agent steps (6 segments of 80); games capped at 600 frames (150 agent
    steps) so that the evaluation below plays whole ones quickly. (logdir, CliRun)"""
    logdir = tmp_path_factory.mktemp("pong") / "run"
    proc = train_cli(f"--flagfile={REPO}/configs/pong.cfg", f"--logdir={logdir}",
                     "--max_env_steps=480", "--max_episode_frames=600", "--log_every_seconds=1")
    return logdir, proc


def test_pong_cfg_trains_through_the_cli(pong_run):
    logdir, proc = pong_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped (reached --max_env_steps=480)" in proc.stdout
    steps, _, updates = checkpoint_counters(logdir)
    assert steps >= 480 and updates >= 1  # the model trained, not only the envs stepped
    assert all_finite(tf_latest_checkpoint(logdir))


def test_breakout_cfg_trains_on_ale_async_batches(tmp_path):
    """configs/breakout.cfg on ale-py's async batches (2 of 4 envs per recv; one agent: the
    backend is what is tested, not the layout). The gymnasium-in-threads backend trains
    CartPole in every run here, and steps Breakout against the reference above."""
    logdir = tmp_path / "run"
    proc = train_cli(f"--flagfile={REPO}/configs/breakout.cfg", f"--logdir={logdir}",
                     "--num_agents=1", "--envs_per_agent=4", "--min_train_batch=20",
                     "--max_env_steps=200", "--ale_batch_size=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps, _, updates = checkpoint_counters(logdir)
    assert steps >= 200 and updates >= 1


def test_eval_plays_a_trained_pong_run_on_its_backend_and_a_video_of_the_real_screen(
        pong_run, tmp_path, capsys, monkeypatch):
    """Without video, episodes are played on the training backend (ale-py's C++ vector env:
    its frames are not pixel-equal to gymnasium's opencv ones); with --video_dir through
    gymnasium, which renders the real screen, and the console says so."""
    from ale_py.vector_env import AtariVectorEnv

    import ga3c.evaluate
    from ga3c.cli import eval_main

    logdir, proc = pong_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = []
    real_make_vector_env = ga3c.evaluate.make_vector_env

    def spy(*args, **kwargs):
        made.append(real_make_vector_env(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(ga3c.evaluate, "make_vector_env", spy)
    capsys.readouterr()
    assert eval_main([f"--logdir={logdir}", "--episodes=3", f"--json={tmp_path / 'e.json'}"]) == 0
    played = json.loads((tmp_path / "e.json").read_text())
    assert played["backend"] == "ale_vector" and len(played["returns"]) == 3
    assert [type(v.unwrapped).__name__ for v in made] == [AtariVectorEnv.__name__]
    assert made[0].num_envs == 3  # the episodes as one vector
    assert all(140 <= n <= 150 for n in played["lengths"])  # ale-py: cap counted after no-ops
    assert "note:" not in capsys.readouterr().out
    videos = tmp_path / "videos"
    code = eval_main([f"--logdir={logdir}", "--episodes=1", f"--video_dir={videos}",
                      f"--json={tmp_path / 'eval.json'}"])
    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads((tmp_path / "eval.json").read_text())
    # The run's frame cap applies: 600 frames = 150 agent steps of 4 frames, less the
    # up-to-30 no-op frames and the FIRE step of the reset.
    assert summary["env"] == "ALE/Pong-v5" and 140 <= summary["lengths"][0] < 150
    assert summary["backend"] == "threads" and "gymnasium's Atari preprocessing" in out.out
    [video] = summary["videos"]
    clip = pytest.importorskip("moviepy").VideoFileClip(video)
    try:
        assert tuple(clip.size) == (160, 210)  # the raw screen, not the 84x84 frames
    finally:
        clip.close()
