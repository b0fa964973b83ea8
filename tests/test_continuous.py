"""Box action spaces and what control tasks need: the Gaussian head's log-probability and
entropy against hand-written formulas, the clipping rule (the env sees the clipped action,
training the sample), the running statistics' parallel merge against numpy, observation
statistics through checkpoint, resume, ga3c-eval and load_policy, reward scaling, and the
refusal and validation lines."""

import math
import os

import gymnasium as gym
import numpy as np
import pytest

from ga3c.agent import Bookkeeper, EnvStepper
from ga3c.distributions import GaussianHead, head_for
from ga3c.normalize import ReturnStats, RewardScaler, RunningMeanStd, merge_batch
from tests.test_cli import assert_one_line_error, train_cli
from tests import target_env

TARGET = "--env=tests.target_env:Target-v0"
SMALL = [TARGET, "--num_agents=1", "--envs_per_agent=4", "--max_predict_batch=8",
         "--min_train_batch=16", "--hidden=16", "--log_every_seconds=0.5",
         "--checkpoint_every_seconds=600"]


def by_hand_log_prob(mean, log_std, a):
    """log of prod_i exp(-(a_i - mu_i)^2 / (2 s_i^2)) / (s_i sqrt(2 pi)), term by term."""
    total = np.zeros(len(a))
    for row in range(len(a)):
        for i in range(a.shape[1]):
            s = math.exp(log_std[row, i])
            density = math.exp(-(a[row, i] - mean[row, i]) ** 2 / (2 * s * s)) / (
                s * math.sqrt(2 * math.pi))
            total[row] += math.log(density)
    return total


# -- the Gaussian head ---------------------------------------------------------------------
def test_gaussian_log_prob_and_entropy_match_the_formulas():
    from ga3c.learner import gaussian_entropy, gaussian_log_prob

    mean = np.array([[0.0, 1.0], [-0.5, 2.0], [0.3, -0.3]], np.float32)
    log_std = np.array([[0.0, -1.0], [0.5, 0.0], [-2.0, 0.2]], np.float32)
    a = np.array([[0.0, 1.0], [1.5, 0.0], [0.31, 1.0]], np.float32)
    got = np.asarray(gaussian_log_prob(mean, log_std, a))
    np.testing.assert_allclose(got, by_hand_log_prob(mean, log_std, a), rtol=1e-5, atol=1e-5)
    # A standard normal at its mean, per dim: -log(2 pi) / 2 = -0.918939.
    np.testing.assert_allclose(
        np.asarray(gaussian_log_prob(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)))),
        [-0.9189385], rtol=1e-6)
    # Entropy of N(mu, s^2) per dim: log(s sqrt(2 pi e)); 1.4189385 for s = 1.
    want = [sum(math.log(math.exp(ls) * math.sqrt(2 * math.pi * math.e)) for ls in row)
            for row in log_std]
    np.testing.assert_allclose(np.asarray(gaussian_entropy(log_std)), want, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gaussian_entropy(np.zeros((1, 1)))), [1.4189385],
                               rtol=1e-6)


def test_the_loss_uses_the_gaussian_terms():
    from ga3c.learner import a3c_loss

    mean = np.array([[0.2], [-0.4], [0.0], [1.0]], np.float32)
    log_std = np.full((4, 1), -0.5, np.float32)
    actions = np.array([[0.5], [-0.1], [2.5], [0.7]], np.float32)  # 2.5: outside [-1, 1]
    values = np.array([0.0, 1.0, -1.0, 0.5], np.float32)
    targets = np.array([1.0, 0.0, 0.0, 2.0], np.float32)
    terms = a3c_loss(mean, values, actions, targets, 0.5, 0.01, log_std=log_std)
    logp = by_hand_log_prob(mean, log_std, actions)
    adv = targets - values
    entropy = 0.5 * math.log(2 * math.pi * math.e) - 0.5
    np.testing.assert_allclose(float(terms.policy_loss), -np.mean(logp * adv), rtol=1e-5)
    np.testing.assert_allclose(float(terms.entropy), entropy, rtol=1e-6)
    np.testing.assert_allclose(float(terms.total), -np.mean(logp * adv)
                               + 0.5 * np.mean(adv ** 2) - 0.01 * entropy, rtol=1e-5)


def test_bound_penalty_is_the_squared_distance_outside_the_bounds():
    import tensorflow as tf

    from ga3c.learner import a3c_loss, bound_penalty

    low, high = (-2.0, 0.0), (2.0, 1.0)
    mean = np.array([[0.0, 0.5], [3.0, 0.5], [-2.5, -1.0], [2.0, 1.0]], np.float32)
    # row 0 inside; row 1: (3 - 2)^2; row 2: (-2 - -2.5)^2 + (0 - -1)^2; row 3 on the bounds
    want = [0.0, 1.0, 0.25 + 1.0, 0.0]
    np.testing.assert_allclose(np.asarray(bound_penalty(mean, low, high)), want, rtol=1e-6)
    log_std = np.zeros((4, 2), np.float32)
    actions, values = mean.copy(), np.zeros(4, np.float32)
    targets = np.array([1.0, -1.0, 0.5, 0.0], np.float32)
    plain = a3c_loss(mean, values, actions, targets, 0.5, 0.01, log_std=log_std)
    bounded = a3c_loss(mean, values, actions, targets, 0.5, 0.01, log_std=log_std,
                       bounds=(low, high), bound_coef=0.1)
    np.testing.assert_allclose(float(bounded.total), float(plain.total) + 0.1 * np.mean(want),
                               rtol=1e-6)
    assert float(bounded.policy_loss) == float(plain.policy_loss)
    # its gradient pulls each mean outside back towards its bound: 2 (mu - bound) / batch
    x = tf.Variable(mean)
    with tf.GradientTape() as tape:
        penalty = tf.reduce_mean(bound_penalty(x, low, high))
    np.testing.assert_allclose(tape.gradient(penalty, x).numpy(),
                               [[0, 0], [0.5, 0], [-0.25, -0.5], [0, 0]], atol=1e-7)


def test_a_train_step_adds_the_penalty_for_means_beyond_the_bounds():
    """Through Learner.for_run and a real train step: the same weights and batch, with the
    policy's mean held at 5 (bounds [-2, 2]), cost (5 - 2)^2 = 9 more at bound_coef 1."""
    import dataclasses

    from ga3c.config import AlgoConfig, Config
    from ga3c.envs import EnvSpec
    from ga3c.learner import Learner
    from ga3c.returns import Transitions

    spec = EnvSpec((3,), np.dtype(np.float32), 1, True, (-2.0,), (2.0,))

    def learner(coef):
        algo = dataclasses.replace(AlgoConfig(), bound_coef=coef)
        return Learner.for_run(dataclasses.replace(Config(), algo=algo), spec)

    plain, bounded = learner(0.0), learner(1.0)
    head = plain.model.get_layer("mean")
    head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
    head.bias.assign(np.array([5.0], np.float32))
    bounded.model.set_weights(plain.model.get_weights())
    rng = np.random.default_rng(0)
    n = 6
    batch = Transitions(rng.normal(size=(n, 3)).astype(np.float32),
                        rng.normal(5.0, 1.0, (n, 1)).astype(np.float32),
                        rng.normal(size=n).astype(np.float32),
                        rng.normal(size=(1, 3)).astype(np.float32), np.zeros(n, np.int32),
                        np.ones(n, np.int32), np.zeros(n, np.float32), np.zeros(n, np.int64))
    a, b = plain.train(batch), bounded.train(batch)
    assert b.loss - a.loss == pytest.approx(9.0, rel=1e-4)
    assert b.policy_loss == pytest.approx(a.policy_loss, rel=1e-6)
    assert Learner.for_run(Config(), EnvSpec((3,), np.dtype(np.float32), 2)).action_bounds is None


def test_head_sampling_mode_and_bounds():
    head = head_for(gym.spaces.Box(np.array([-2.0, 0.0], np.float32),
                                   np.array([2.0, 1.0], np.float32)))
    assert isinstance(head, GaussianHead) and head.action_shape == (2,)
    params = np.array([[3.0, 0.5, -20.0, -20.0], [0.1, -0.2, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(head.mode(params), [[2.0, 0.5], [0.1, 0.0]])
    draws = head.sample(np.tile(np.array([[0.5, 0.2, math.log(0.3), math.log(2.0)]],
                                         np.float32), (200_000, 1)),
                        np.random.default_rng(0))
    np.testing.assert_allclose(draws.mean(0), [0.5, 0.2], atol=0.02)
    np.testing.assert_allclose(draws.std(0), [0.3, 2.0], rtol=0.01)


# -- clipping: the env sees the clipped action, training the sample --------------------------
def test_env_gets_the_clipped_action_and_training_the_sample():
    head = GaussianHead((-1.0,), (1.0,))
    book = Bookkeeper(2, (1,), np.float32, 2, 0.9, head=head)
    book.begin(np.arange(2), np.zeros((2, 1), np.float32), {})
    samples = [np.array([[2.5], [-0.3]], np.float32), np.array([[-7.0], [0.9]], np.float32)]
    for drawn in samples:
        sent = book.act(drawn, version=0)
        np.testing.assert_array_equal(sent, np.clip(drawn, -1, 1))
        result = book.observe(np.arange(2), np.zeros((2, 1), np.float32), np.zeros(2),
                              np.zeros(2, bool), np.zeros(2, bool), {})
    batch = result.segment
    assert batch.actions.dtype == np.float32 and batch.actions.shape == (4, 1)
    # rows are (step, env) in time order: the samples as drawn, 2.5 and -7.0 included
    np.testing.assert_array_equal(batch.actions, np.concatenate(samples))


def test_a_real_env_is_sent_actions_inside_its_bounds():
    vec = gym.vector.SyncVectorEnv([target_env.Target for _ in range(3)])
    stepper = EnvStepper(vec, n_step=4, gamma=0.9)
    assert isinstance(stepper.book.head, GaussianHead)
    stepper.reset(seed=0)
    rng = np.random.default_rng(0)
    drawn = []
    for _ in range(4):
        a = stepper.book.sample(np.tile([[0.0, math.log(3.0)]], (3, 1)), rng)
        drawn.append(a)
        result = stepper.step(a, version=0)
    sent = np.concatenate([np.stack(e.sent) for e in vec.envs])
    assert np.abs(sent).max() <= 1.0  # Target raises on an action outside the bounds
    drawn = np.concatenate(drawn)
    assert np.abs(drawn).max() > 1.0  # std 3: some samples fell outside
    np.testing.assert_array_equal(np.sort(result.segment.actions.ravel()),
                                  np.sort(drawn.ravel()))
    stepper.close()


# -- running statistics --------------------------------------------------------------------
def test_parallel_merge_matches_numpy_over_the_concatenated_data():
    rng = np.random.default_rng(1)
    parts = [rng.normal(3.0, 2.0, (n, 3)) * [1, 10, 0.1] for n in (1, 7, 256, 3, 1000)]
    mean, var, count = np.zeros(3), np.ones(3), 0.0
    stats = RunningMeanStd((3,))
    for part in parts:
        mean, var, count = merge_batch(mean, var, count, part)
        stats.update(part)
    data = np.concatenate(parts)
    assert count == len(data)
    np.testing.assert_allclose(mean, data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(var, data.var(0), rtol=1e-10)
    np.testing.assert_allclose(stats.mean, data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.var, data.var(0), rtol=1e-10)


def test_learner_obs_statistics_follow_the_batches():
    from ga3c.config import AlgoConfig, NetworkConfig
    from ga3c.learner import Learner

    learner = Learner((2,), np.float32, 1, NetworkConfig(hidden=(8,)), AlgoConfig(),
                      continuous=True, normalize_obs=True)
    rng = np.random.default_rng(2)
    parts = [rng.normal([5.0, -1.0], [3.0, 0.5], (n, 2)).astype(np.float32) for n in (5, 40, 9)]
    for part in parts:
        learner.update_obs_stats(part)
    data = np.concatenate(parts).astype(np.float64)
    norm = learner.obs_norm
    assert float(norm.count.numpy()) == len(data)
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(0), rtol=1e-9)
    np.testing.assert_allclose(norm.var.numpy(), data.var(0), rtol=1e-9)
    # the network sees (obs - mean) / sqrt(var + 1e-8), clipped to +-10
    x = np.array([[5.0, -1.0], [1000.0, 0.0]], np.float32)
    want = np.clip((x - data.mean(0)) / np.sqrt(data.var(0) + 1e-8), -10, 10)
    np.testing.assert_allclose(np.asarray(norm(x)), want, rtol=1e-5, atol=1e-5)


def test_reward_scaling_divides_by_the_running_return_std():
    scaler = RewardScaler(2, gamma=0.5)
    r1 = np.array([2.0, -1.0])
    r2 = np.array([4.0, 0.0])
    out1 = scaler.scale(r1, np.array([False, True]))
    ret1 = r1  # returns start at 0
    np.testing.assert_allclose(out1, r1 / np.sqrt(ret1.var() + 1e-8), rtol=1e-6)
    out2 = scaler.scale(r2, np.array([False, False]))
    ret2 = np.array([0.5 * 2.0 + 4.0, 0.0])  # env 1's episode ended: its return restarted
    seen = np.concatenate([ret1, ret2])
    np.testing.assert_allclose(out2, r2 / np.sqrt(seen.var() + 1e-8), rtol=1e-6)


def test_agents_scale_by_one_shared_return_statistic():
    """Under --normalize_reward every agent's scaler adds its envs' returns to the run's one
    ReturnStats (as SB3's VecNormalize over all its envs) and divides by its std."""
    stats = ReturnStats()
    a, b = RewardScaler(2, 0.5, stats), RewardScaler(1, 0.5, stats)
    a.scale(np.array([2.0, -1.0]), np.array([False, False]))
    out = b.scale(np.array([4.0]), np.array([False]))
    seen = np.array([2.0, -1.0, 4.0])
    np.testing.assert_allclose(out, 4.0 / np.sqrt(seen.var() + 1e-8), rtol=1e-6)
    np.testing.assert_allclose(stats.state(), [seen.mean(), seen.var(), 3.0])
    again = ReturnStats()
    again.set_state(stats.state())
    np.testing.assert_array_equal(again.state(), stats.state())


def test_return_statistics_are_checkpointed_and_an_older_checkpoint_starts_them_afresh(
        tmp_path):
    from ga3c.checkpoints import Checkpointer
    from ga3c.config import AlgoConfig, NetworkConfig
    from ga3c.learner import Learner
    from ga3c.stats import Stats

    learner = Learner((1,), np.float32, 2, NetworkConfig(hidden=(4,)), AlgoConfig())
    stats = ReturnStats()
    stats.set_state([0.25, 4.0, 123.0])
    Checkpointer(learner, str(tmp_path / "with"), 2, stats).save(Stats(None, 100, 1), learner)
    restored = ReturnStats()
    resumed = Checkpointer(learner, str(tmp_path / "with"), 2, restored).restore_latest()
    np.testing.assert_array_equal(restored.state(), [0.25, 4.0, 123.0])
    assert resumed["note"] is None
    # a checkpoint written without them (an older run) resumes, saying they start afresh
    Checkpointer(learner, str(tmp_path / "without"), 2).save(Stats(None, 100, 1), learner)
    fresh = ReturnStats()
    resumed = Checkpointer(learner, str(tmp_path / "without"), 2, fresh).restore_latest()
    assert "start afresh" in resumed["note"] and resumed["env_steps"] == 100
    np.testing.assert_array_equal(fresh.state(), [0.0, 1.0, 0.0])


def test_reward_statistics_survive_a_resume(tmp_path):
    import tensorflow as tf

    logdir = str(tmp_path / "scaled")
    args = [*SMALL, "--normalize_reward", f"--logdir={logdir}"]

    def saved_stats():
        path = tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))
        return tf.train.load_variable(path, "return_stats/.ATTRIBUTES/VARIABLE_VALUE")

    proc = train_cli(*args, "--max_env_steps=1000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = saved_stats()
    # every reward the agent saw went in (the run stops after its last step: >= the budget)
    assert first[2] >= 1000 and first[1] > 0
    proc = train_cli(*args, "--max_env_steps=2000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "start afresh" not in proc.stdout
    second = saved_stats()
    assert second[2] >= first[2] + 1000  # went on from the first run's count


def test_obs_statistics_survive_checkpoint_resume_eval_and_load_policy(tmp_path):
    import ga3c
    from ga3c.cli import parse_config
    from ga3c.evaluate import evaluate
    from ga3c.service import build_service

    logdir = str(tmp_path / "norm")
    args = [*SMALL, "--normalize_obs", f"--logdir={logdir}"]
    proc = train_cli(*args, "--max_env_steps=2000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_ckpt = ga3c.load_policy(logdir, checkpoint="latest")
    from_keras = ga3c.load_policy(logdir)
    saved = [from_ckpt.model.get_layer("obs_norm").weights[i].numpy() for i in range(3)]
    assert saved[2] >= 16  # count: the states trained on (a batch at least)
    # U[-1, 1]: mean 0, var 1/3 (loose: a few batches only)
    assert abs(saved[0][0]) < 0.35 and 0.15 < saved[1][0] < 0.55
    for i in range(3):  # policy.keras holds the same statistics
        np.testing.assert_array_equal(from_keras.model.get_layer("obs_norm").weights[i].numpy(),
                                      saved[i])
    obs = np.linspace(-1, 1, 9, dtype=np.float32)[:, None]
    np.testing.assert_allclose(from_ckpt.act(obs)[0], from_keras.act(obs)[0], rtol=1e-6)
    # ga3c-eval plays the checkpoint with them (its result is the same greedy policy)
    summary = evaluate(logdir, episodes=2)
    assert summary.episodes == 2

    # a resume restores them before it trains (nothing written by build_service) ...
    config, spec = parse_config(args, check_env=True)
    service = build_service(config, spec)
    norm = service.learner.obs_norm
    for variable, value in zip((norm.mean, norm.var, norm.count), saved):
        np.testing.assert_array_equal(variable.numpy(), value)
    # ... and goes on from them
    proc = train_cli(*args, "--max_env_steps=4000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    after = ga3c.load_policy(logdir, checkpoint="latest").model.get_layer("obs_norm")
    assert float(after.count.numpy()) > float(saved[2])


def test_a_continuous_run_trains_evaluates_and_loads(tmp_path):
    import ga3c

    logdir = str(tmp_path / "cont")
    proc = train_cli(*SMALL, "--normalize_reward", "--log_std_init=-1", f"--logdir={logdir}",
                     "--max_env_steps=400")
    assert proc.returncode == 0, proc.stderr[-3000:]
    policy = ga3c.load_policy(logdir)
    obs = np.array([[0.5], [-0.5]], np.float32)
    params, _ = policy.logits_and_values(obs)
    np.testing.assert_allclose(params[:, 1], -1.0, atol=0.2)  # the log-std, near its start
    greedy, _ = policy.act(obs)
    np.testing.assert_allclose(greedy, np.clip(params[:, :1], -1, 1))  # the mean
    sampled, _ = policy.act(np.zeros((500, 1), np.float32), sample=True)
    assert sampled.shape == (500, 1) and np.abs(sampled).max() <= 1.0
    assert sampled.std() > 0.1


# -- refusals and validation: one line, exit 2 ---------------------------------------------
@pytest.mark.parametrize("args, needles", [
    (["--env=tests.target_env:MultiDiscreteTarget-v0"],
     ["MultiDiscrete", "supports Discrete or 1-D Box action spaces"]),
    (["--env=tests.target_env:DictObsTarget-v0"],
     ["Dict", "flat vectors (MLP) or uint8 stacked frames"]),
    ([TARGET, "--cnn=nature"], ["--cnn=nature is for frame observations"]),
    (["--env=tests.catch_env:Catch84-v0", "--normalize_obs"],
     ["--normalize_obs is for vector observations"]),
    ([TARGET, "--normalize_reward", "--clip_rewards"], ["normalize_reward=True"]),
    ([TARGET, "--runner=ray"], ["--runner=ray steps Discrete action spaces only"]),
    ([TARGET, "--log_std_init=9"], ["log_std_init=9.0"]),
])
def test_refusals_and_bad_combinations_are_one_line(tmp_path, args, needles):
    logdir = tmp_path / "run"
    proc = train_cli(f"--logdir={logdir}", *args)
    assert_one_line_error(proc, *needles)
    assert not logdir.exists()


def test_blind_policy_bound():
    assert abs(target_env.blind_policy_score() - target_env.BLIND_BEST) < 0.05
