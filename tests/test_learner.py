"""Loss against a numpy reference, the train step's target, and no retracing."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ga3c.config import AlgoConfig, NetworkConfig  # noqa: E402
from ga3c.learner import Learner, a3c_loss, bucket_size  # noqa: E402
from ga3c.returns import Transitions  # noqa: E402


def numpy_loss(logits, values, actions, targets, value_coef, entropy_coef, normalize=False):
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    adv = targets - values
    if normalize:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    policy = -np.mean(log_probs[np.arange(len(actions)), actions] * adv)
    value = np.mean((targets - values) ** 2)
    entropy = np.mean(-(probs * log_probs).sum(axis=1))
    return policy + value_coef * value - entropy_coef * entropy, policy, value, entropy


@pytest.mark.parametrize("normalize", [False, True])
def test_loss_matches_numpy_reference(normalize):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 3)).astype(np.float32) * 3
    values = rng.normal(size=7).astype(np.float32)
    targets = rng.normal(size=7).astype(np.float32) + 2.0  # advantages biased one way
    actions = rng.integers(0, 3, 7).astype(np.int32)
    got = [float(x) for x in a3c_loss(logits, values, actions, targets, 0.5, 0.01,
                                      normalize_advantages=normalize)]
    want = numpy_loss(logits, values, actions, targets, 0.5, 0.01, normalize)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_padding_rows_with_weight_zero_change_nothing():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(5, 2)).astype(np.float32)
    values, targets = rng.normal(size=(2, 5)).astype(np.float32)
    actions = rng.integers(0, 2, 5).astype(np.int32)
    weights = np.array([1, 1, 1, 0, 0], np.float32)
    for normalize in (False, True):
        got = a3c_loss(logits, values, actions, targets, 0.5, 0.01, weights, normalize)
        want = a3c_loss(logits[:3], values[:3], actions[:3], targets[:3], 0.5, 0.01,
                        normalize_advantages=normalize)
        np.testing.assert_allclose([float(x) for x in got], [float(x) for x in want],
                                   rtol=1e-5, atol=1e-6)


def test_hand_computed_two_action_case():
    # logits (0, 0): pi = (0.5, 0.5); action 1; V = 1, target 3 -> advantage 2
    terms = a3c_loss(np.zeros((1, 2), np.float32), np.array([1.0], np.float32),
                     np.array([1], np.int32), np.array([3.0], np.float32), 0.5, 0.1)
    assert float(terms.policy_loss) == pytest.approx(-np.log(0.5) * 2)
    assert float(terms.value_loss) == pytest.approx(4.0)
    assert float(terms.entropy) == pytest.approx(np.log(2))
    assert float(terms.total) == pytest.approx(2 * np.log(2) + 2.0 - 0.1 * np.log(2))


def test_loss_is_finite_for_extreme_logits():
    logits = np.array([[1000.0, -1000.0]], np.float32)
    terms = a3c_loss(logits, np.zeros(1, np.float32), np.array([1], np.int32),
                     np.ones(1, np.float32), 0.5, 0.01)
    assert all(np.isfinite(float(t)) for t in terms)


def test_advantage_is_stop_gradient_and_value_gets_value_gradient():
    logits = tf.Variable(np.zeros((1, 2), np.float32))
    values = tf.Variable(np.array([1.0], np.float32))
    with tf.GradientTape() as tape:
        terms = a3c_loss(logits, values, np.array([0], np.int32), np.array([3.0], np.float32),
                         0.5, 0.0)
    g_logits, g_values = tape.gradient(terms.total, [logits, values])
    # value part only: d/dV 0.5 * (3 - V)^2 = -(3 - V) = -2 (policy term sends none to V)
    assert float(g_values[0]) == pytest.approx(-2.0)
    # policy part: -adv * d log pi(a0) / d logits = -2 * (1 - 0.5, -0.5)
    np.testing.assert_allclose(g_logits.numpy(), [[-1.0, 1.0]], atol=1e-6)


def make_learner(xla=False, mixed_precision=False, **algo):
    return Learner((3,), np.float32, 2, NetworkConfig(hidden=(8,)), AlgoConfig(**algo),
                   xla=xla, mixed_precision=mixed_precision)


def batch(rng, b, nsteps=None, masks=None):
    return Transitions(
        states=rng.normal(size=(b, 3)).astype(np.float32),
        actions=rng.integers(0, 2, b).astype(np.int32),
        rewards=rng.normal(size=b).astype(np.float32),
        # Fewer distinct next states than rows, shared at random (as segments share s_n).
        next_states=rng.normal(size=((b + 1) // 2, 3)).astype(np.float32),
        next_index=rng.integers(0, (b + 1) // 2, b).astype(np.int32),
        nsteps=np.asarray(nsteps if nsteps is not None else rng.integers(1, 6, b), np.int32),
        masks=np.asarray(masks if masks is not None else rng.integers(0, 2, b), np.float32),
        versions=np.zeros(b, np.int64),
    )


@pytest.mark.parametrize("normalize", [False, True])
def test_train_step_target_is_R_plus_gamma_pow_n_V_next_times_mask(normalize):
    rng = np.random.default_rng(1)
    learner = make_learner(gamma=0.9, value_coef=0.5, entropy_coef=0.01, learning_rate=1e-3,
                           normalize_advantages=normalize)
    t = batch(rng, 6, nsteps=[1, 2, 3, 4, 5, 2], masks=[1, 0, 1, 1, 0, 1])
    logits, values = learner.predict(t.states)
    _, next_values = learner.predict(t.bootstrap_states())
    targets = t.rewards + 0.9 ** t.nsteps * next_values * t.masks
    want = numpy_loss(logits, values, t.actions, targets, 0.5, 0.01, normalize)
    got = learner.train(t)
    np.testing.assert_allclose([got.loss, got.policy_loss, got.value_loss, got.entropy], want,
                               rtol=1e-4, atol=1e-5)
    assert learner.version == 1


def reference_gradients(learner, t, gamma, value_coef, entropy_coef):
    """Gradients of the loss with the target computed *outside* the tape (a constant)."""
    _, next_values = learner.predict(t.bootstrap_states())
    targets = (t.rewards + gamma ** t.nsteps * next_values * t.masks).astype(np.float32)
    variables = learner.model.trainable_variables
    with tf.GradientTape() as tape:
        out = learner.model(t.states)
        loss = a3c_loss(out["logits"], out["value"], t.actions, targets, value_coef,
                        entropy_coef,
                        normalize_advantages=learner.algo.normalize_advantages).total
    return [g.numpy() for g in tape.gradient(loss, variables)]


def rmsprop_first_step(grads, lr, rho, eps):
    """Keras 3 RMSprop from a zero accumulator: lr * g / sqrt((1 - rho) g^2 + eps)."""
    return [lr * g / np.sqrt((1 - rho) * g ** 2 + eps) for g in grads]


@pytest.mark.parametrize("xla", [False, True])
@pytest.mark.parametrize("clip_norm", [0.0, 1e-3])
def test_train_step_applies_exactly_one_rmsprop_step_of_the_reference_gradient(clip_norm, xla):
    """Whole train step against a hand-built one: target as a constant (stop-gradient through
    V(s_n)), loss, optional global-norm clipping, and Keras RMSprop's first update."""
    rng = np.random.default_rng(2)
    hp = dict(gamma=0.9, value_coef=0.5, entropy_coef=0.01)
    # A large epsilon keeps the update linear in the gradient, so clipping shows in it.
    learner = make_learner(learning_rate=100.0, rho=0.9, epsilon=10.0, clip_norm=clip_norm,
                           xla=xla, normalize_advantages=xla, **hp)  # both settings covered
    t = batch(rng, 12)  # padded to 16 under XLA: the 4 padding rows must not count
    grads = reference_gradients(learner, t, **hp)
    norm = np.sqrt(sum((g ** 2).sum() for g in grads))
    if clip_norm:
        assert norm > clip_norm
        grads = [g * clip_norm / norm for g in grads]
    before = [w.numpy().copy() for w in learner.model.trainable_variables]
    metrics = learner.train(t)
    assert metrics.grad_norm == pytest.approx(norm, rel=1e-4)  # reported before clipping
    for b, w, step in zip(before, learner.model.trainable_variables,
                          rmsprop_first_step(grads, 100.0, 0.9, 10.0)):
        np.testing.assert_allclose(b - w.numpy(), step, rtol=1e-3, atol=1e-6)


def test_no_retracing_as_batch_sizes_vary():
    """Learner calls its concrete functions, which cannot retrace at all; so this drives the
    tf.functions themselves: it is their fixed input signature (batch dimension None) that
    keeps one trace for every batch size. Without it, each new size would add a trace."""
    rng = np.random.default_rng(3)
    learner = make_learner()
    assert learner.trace_counts() == (1, 1)
    for b in (1, 2, 3, 7, 31, 64, 100, 128):
        t = batch(rng, b)
        learner._predict(t.states)
        learner._train(t.states, t.actions, t.rewards, t.next_states, t.next_index, t.nsteps, t.masks,
                       np.ones(b, np.float32))
        learner.predict(t.states)  # the path the predictor threads use
        learner.train(t)
    assert learner.trace_counts() == (1, 1)


def test_xla_predict_matches_and_pads_to_few_sizes():
    rng = np.random.default_rng(4)
    plain, xla = make_learner(), make_learner(xla=True)
    xla.model.set_weights(plain.model.get_weights())
    seen = []
    compiled = xla._predict_fn
    xla._predict_fn = lambda states: (seen.append(len(states)), compiled(states))[1]
    for b in (1, 5, 8, 9, 33):
        states = rng.normal(size=(b, 3)).astype(np.float32)
        for got, want in zip(xla.predict(states), plain.predict(states)):
            assert got.shape[0] == b
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert seen == [8, 8, 8, 16, 64]  # what XLA compiled for: powers of two only
    assert xla.trace_counts()[0] == 1


def test_bucket_sizes():
    assert [bucket_size(n) for n in (1, 8, 9, 16, 17, 100, 128, 129)] == \
        [8, 8, 16, 16, 32, 128, 128, 256]


def test_mixed_precision_trains_with_float32_outputs_and_variables():
    rng = np.random.default_rng(5)
    learner = make_learner(mixed_precision=True)
    logits, values = learner.predict(rng.normal(size=(4, 3)).astype(np.float32))
    assert logits.dtype == np.float32 and values.dtype == np.float32
    assert all(v.dtype == "float32" for v in learner.model.trainable_variables)
    assert any("bfloat16" in str(layer.compute_dtype) for layer in learner.model.layers)
    metrics = learner.train(batch(rng, 8))
    assert np.isfinite(metrics.loss)
    # the global policy is left as it was
    import keras
    assert keras.config.dtype_policy().name == "float32"


def test_policy_keras_of_a_bfloat16_run_computes_in_float32_with_the_trained_weights(tmp_path):
    """policy.keras acts as the float32 network ga3c-eval restores from a checkpoint does:
    same weights, float32 compute (before, a bfloat16 run's file differed by ~0.4%)."""
    import keras

    rng = np.random.default_rng(6)
    learner = make_learner(mixed_precision=True)
    learner.train(batch(rng, 8))
    path = str(tmp_path / "policy.keras")
    learner.save_policy(path)
    loaded = keras.models.load_model(path, compile=False)
    assert all(layer.compute_dtype == "float32" for layer in loaded.layers)
    for saved, trained in zip(loaded.get_weights(), learner.model.get_weights()):
        np.testing.assert_array_equal(saved, trained)
    twin = make_learner().model  # float32, as a checkpoint-built network
    twin.set_weights(learner.model.get_weights())
    x = rng.normal(size=(16, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(x)["logits"]), np.asarray(twin(x)["logits"]),
                               rtol=1e-6, atol=1e-7)
    learner.train(batch(rng, 8))  # a later save writes the later weights
    learner.save_policy(path)
    again = keras.models.load_model(path, compile=False)
    for saved, trained in zip(again.get_weights(), learner.model.get_weights()):
        np.testing.assert_array_equal(saved, trained)


@pytest.mark.parametrize("init", [0.0, 1.0])
def test_rmsprop_accumulator_starts_at_rmsprop_init(init):
    learner = Learner((3,), np.float32, 2, NetworkConfig(hidden=(4,)),
                      AlgoConfig(rmsprop_init=init, learning_rate=0.1, rho=0.9, clip_norm=0))
    velocities = [v for v in learner.optimizer.variables if "velocity" in v.path]
    assert len(velocities) == len(learner.model.trainable_variables)
    for v in velocities:
        np.testing.assert_array_equal(v.numpy(), init)
    # First step on one weight: ms = rho*init + (1-rho)*g^2; step = lr*g/sqrt(ms+eps).
    kernel = learner.model.get_layer("value_head").kernel
    before = kernel.numpy().copy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(kernel)  # gradient 1 for every weight
    grads = tape.gradient(loss, [kernel])
    learner.optimizer.apply(grads, [kernel])
    expected_step = 0.1 * 1.0 / np.sqrt(0.9 * init + 0.1 + 1e-5)
    np.testing.assert_allclose(before - kernel.numpy(), expected_step, rtol=1e-4)


def test_batch_diagnostics_match_numpy_and_ignore_padding_rows():
    from ga3c.learner import batch_diagnostics

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(7, 4)).astype(np.float32)
    values = rng.normal(size=7).astype(np.float32)
    targets = (values + rng.normal(scale=0.5, size=7)).astype(np.float32)
    weights = np.array([1, 1, 1, 1, 1, 0, 0], np.float32)  # the last two rows are padding
    ev, spread = (float(x) for x in batch_diagnostics(logits, values, targets, weights))
    t, v, lg = targets[:5], values[:5], logits[:5]
    assert ev == pytest.approx(1 - np.var(t - v) / np.var(t), rel=1e-4)
    centred = lg - lg.mean(axis=1, keepdims=True)
    assert spread == pytest.approx(centred.std(axis=0).mean(), rel=1e-4)
    # A state-independent policy has no spread; a perfect value head explains everything.
    ev, spread = (float(x) for x in batch_diagnostics(np.tile(logits[:1] + 5, (7, 1)), targets,
                                                       targets, np.ones(7, np.float32)))
    assert spread == pytest.approx(0.0, abs=1e-5) and ev == pytest.approx(1.0)
