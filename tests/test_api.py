"""The Python API: ga3c.train(config) -> result, ga3c.load_policy(logdir) -> actions, values."""

import numpy as np
import pytest

import ga3c

TINY = dict(env__envs_per_agent=4, pipeline__max_predict_batch=8, pipeline__min_train_batch=16,
            network__hidden=(16,), run__log_every_seconds=60.0)


def test_train_then_load_the_policy_and_act(tmp_path, capsys):
    logdir = str(tmp_path / "nb")
    result = ga3c.train(ga3c.Config().replace(run__logdir=logdir, run__max_env_steps=1500,
                                              **TINY))
    assert result.ok and result.env_steps >= 1500, result
    assert result.stop_reason == "reached --max_env_steps=1,500"
    assert result.checkpoint.endswith(f"ckpt-{result.env_steps}")
    assert "error" not in capsys.readouterr().err
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    policy = ga3c.load_policy(logdir)  # policy.keras
    actions, values = policy.act(obs)
    assert actions.shape == (5,) and values.shape == (5,) and set(actions) <= {0, 1}
    sampled, _ = policy.act(obs, sample=True)
    assert sampled.shape == (5,) and set(sampled) <= {0, 1}
    # The checkpoint's network alone gives the same numbers as policy.keras.
    from_checkpoint = ga3c.load_policy(logdir, checkpoint="latest")
    assert from_checkpoint.checkpoint == result.checkpoint
    for a, b in zip(policy.logits_and_values(obs), from_checkpoint.logits_and_values(obs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_config_lists_every_problem_including_the_envs(tmp_path):
    config = ga3c.Config().replace(env__env_id="CartPole-v1", env__episodic_life=True,
                                   pipeline__num_agents=0, run__logdir=str(tmp_path / "x"))
    with pytest.raises(ga3c.UserError) as info:
        ga3c.train(config)
    assert "num_agents=0" in str(info.value) and "--episodic_life" in str(info.value)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ga3c.UserError, match="no config.json"):
        ga3c.load_policy(str(tmp_path))
