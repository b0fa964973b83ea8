"""Atari through ale-py's vector env: ids, spaces, reward clipping, a few hundred real steps."""

import numpy as np
import pytest

from ga3c.config import EnvConfig
from ga3c.envs import EnvError, ale_game, inspect_env, make_vector_env
from ga3c.returns import Transitions, reference_transitions
from tests.test_cli import run_cli
from tests.test_threads import run_agent_until_retired

pytest.importorskip("ale_py")


@pytest.mark.parametrize("env_id, game", [
    ("ALE/Pong-v5", "pong"), ("ALE/Breakout-v5", "breakout"),
    ("ALE/SpaceInvaders-v5", "space_invaders"), ("ALE/MsPacman-v5", "ms_pacman"),
    ("CartPole-v1", None), ("ALE/Pong", None),
])
def test_ale_ids_map_to_rom_names(env_id, game):
    assert ale_game(env_id) == game


def test_pong_spaces_are_the_preprocessed_frames():
    spec = inspect_env("ALE/Pong-v5")
    assert spec.obs_shape == (4, 84, 84) and spec.obs_dtype == np.uint8
    assert spec.num_actions == 6


def test_unknown_rom_is_a_clear_error():
    with pytest.raises(EnvError, match="no_such_game"):
        inspect_env("ALE/NoSuchGame-v5")


def test_pong_vector_env_steps_with_next_step_autoreset_and_real_rewards():
    env = make_vector_env("ALE/Pong-v5", 2, EnvConfig(env_id="ALE/Pong-v5"))
    try:
        assert str(env.metadata["autoreset_mode"]).endswith("NEXT_STEP")
        obs, _ = env.reset(seed=0)
        assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
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


def test_pong_trains_a_few_hundred_steps_through_the_cli(tmp_path):
    proc = run_cli("--env=ALE/Pong-v5", f"--logdir={tmp_path}/pong", "--num_agents=1",
                   "--envs_per_agent=4", "--max_predict_batch=8", "--min_train_batch=16",
                   "--clip_rewards", "--max_env_steps=300", "--log_every_seconds=1",
                   timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped (reached --max_env_steps=300)" in proc.stdout
