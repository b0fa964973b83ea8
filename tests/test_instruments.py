"""The stability instruments against hand-computed values, and the update clip against numpy.

The learner's per-step probes (dead ReLU units, largest step in learning rates, step norms,
largest |advantage|), its accumulator statistics, ClippedRMSprop's update rule. The stats
windows that aggregate them, the collapse warning and updates.csv are in test_stats.py.
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ga3c.config import AlgoConfig, NetworkConfig  # noqa: E402
from ga3c.learner import Learner, a3c_loss, layer_of  # noqa: E402
from ga3c.optimizer import ClippedRMSprop  # noqa: E402
import keras  # noqa: E402
from ga3c.returns import Transitions  # noqa: E402

OBS = (36, 36, 4)  # the Nature trunk: 36 -> 8 -> 3 -> 1 positions


def cnn_learner(activation="relu", **algo):
    algo = dict(dict(learning_rate=1e-3, rho=0.99, epsilon=1e-10, clip_norm=0,
                     normalize_advantages=False), **algo)
    return Learner(OBS, np.uint8, 3, NetworkConfig(cnn="nature", activation=activation),
                   AlgoConfig(**algo))


def frames(rng, b, n_next=4):
    return Transitions(
        states=rng.integers(0, 256, (b, *OBS), dtype=np.uint8),
        actions=rng.integers(0, 3, b).astype(np.int32),
        rewards=rng.normal(size=b).astype(np.float32),
        next_states=rng.integers(0, 256, (n_next, *OBS), dtype=np.uint8),
        next_index=rng.integers(0, n_next, b).astype(np.int32),
        nsteps=np.full(b, 5, np.int32), masks=np.ones(b, np.float32),
        versions=np.zeros(b, np.int64))


def gradients(learner, t):
    """The loss's gradients with the target as a constant (as the train step has it)."""
    _, next_values = learner.predict(t.next_states)
    targets = (t.rewards + learner.algo.gamma ** t.nsteps * next_values[t.next_index] * t.masks).astype(
        np.float32)
    with tf.GradientTape() as tape:
        out = learner.model(t.states, training=True)
        loss = a3c_loss(out["logits"], out["value"], t.actions, targets, 0.5, 0.01).total
    return [g.numpy() for g in tape.gradient(loss, learner.model.trainable_variables)], targets


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_dead_relu_fraction_counts_units_zero_for_every_state(activation):
    """Dead: never > 0 on the batch (under leaky_relu, negative on every state), named by
    the trunk layer either way."""
    learner = cnn_learner(activation)
    m = learner.model
    # dense: zero kernel, bias +1 on 128 of 512 units and -1 on the rest: 384 dead
    m.get_layer("dense").kernel.assign(np.zeros(m.get_layer("dense").kernel.shape, np.float32))
    m.get_layer("dense").bias.assign(np.where(np.arange(512) < 128, 1.0, -1.0).astype(np.float32))
    # conv2 (64 channels): 16 alive, 48 dead whatever the input
    conv = m.get_layer("conv2")
    conv.kernel.assign(np.zeros(conv.kernel.shape, np.float32))
    conv.bias.assign(np.where(np.arange(64) < 16, 0.5, -0.5).astype(np.float32))
    probes = learner.train(frames(np.random.default_rng(0), 10)).probes
    assert probes["dead_relu/dense"] == pytest.approx(0.75)
    assert probes["dead_relu/conv2"] == pytest.approx(0.75)
    assert 0.0 <= probes["dead_relu/conv0"] < 0.5  # orthogonal init on random frames


@pytest.mark.parametrize("activation, learns", [("relu", False), ("leaky_relu", True)])
def test_a_unit_dead_on_every_state_gets_a_gradient_only_under_leaky_relu(activation, learns):
    """The absorbing state docs/stability.md found in Pong's conv0: a ReLU channel negative
    at every position of every frame has a zero gradient, so RMSProp never moves it again;
    under leaky_relu its gradient is 0.01x, not 0, and RMSProp's scaling makes the step
    full-sized."""
    learner = cnn_learner(activation)
    conv = learner.model.get_layer("conv0")
    bias = conv.bias.numpy()
    bias[0] = -1e3  # channel 0: negative everywhere
    conv.bias.assign(bias)
    t = frames(np.random.default_rng(2), 10)
    grads, _ = gradients(learner, t)
    kernel_grad = grads[[v.path for v in learner.model.trainable_variables].index(conv.kernel.path)]
    assert np.abs(kernel_grad[..., 1:]).max() > 0
    assert (np.abs(kernel_grad[..., 0]).max() > 0) == learns
    before = conv.kernel.numpy()[..., 0].copy()
    learner.train(t)
    assert (np.abs(conv.kernel.numpy()[..., 0] - before).max() > 1e-4) == learns


@pytest.mark.parametrize("update_clip", [0.0, 1.0])
def test_step_probes_match_the_step_the_weights_took(update_clip):
    """From a zero accumulator every weight with a gradient steps ~10x lr (u = g / sqrt(0.01
    g^2)): the first-step case of a decayed accumulator. The probes against numpy, and the
    step norms against the weights' own change."""
    learner = cnn_learner(update_clip=update_clip)
    t = frames(np.random.default_rng(1), 12)
    grads, targets = gradients(learner, t)
    _, values = learner.predict(t.states)
    before = [v.numpy().copy() for v in learner.model.trainable_variables]
    probes = learner.train(t).probes

    u = [g / np.sqrt(0.01 * g ** 2 + 1e-10) for g in grads]
    factors = [1.0 if not update_clip else min(1.0, update_clip / np.sqrt(np.mean(x ** 2)))
               for x in u]
    assert probes["max_step_unclipped"] == pytest.approx(max(np.abs(x).max() for x in u),
                                                         rel=1e-4)
    assert probes["max_step_unclipped"] == pytest.approx(10.0, rel=1e-3)
    assert probes["max_step"] == pytest.approx(
        max(np.abs(x).max() * f for x, f in zip(u, factors)), rel=1e-4)
    assert probes["clipped"] == pytest.approx(np.mean([f < 1 for f in factors]))
    if update_clip:
        assert probes["max_step"] < 10.0 and probes["clipped"] > 0.5
    assert probes["max_abs_advantage"] == pytest.approx(np.abs(targets - values).max(),
                                                        rel=1e-4)
    deltas: dict[str, float] = {}
    for var, b in zip(learner.model.trainable_variables, before):
        moved = float(np.sum((b - var.numpy()) ** 2))
        deltas[layer_of(var)] = deltas.get(layer_of(var), 0.0) + moved
    for layer, sq in deltas.items():
        assert probes[f"step_norm/{layer}"] == pytest.approx(np.sqrt(sq), rel=2e-3), layer


def test_accumulator_stats_and_weight_norms():
    learner = Learner((3,), np.float32, 2, NetworkConfig(hidden=(4,)),
                      AlgoConfig(rmsprop_init=1.0))
    stats = learner.accumulator_stats()
    assert stats["rmsprop_v_min/all"] == stats["rmsprop_v_median/all"] == 1.0
    kernel = learner.model.get_layer("value_head").kernel
    v = learner.optimizer.velocity(kernel)
    v.assign(np.full(v.shape, 1e-6, np.float32))
    stats = learner.accumulator_stats()
    assert stats["rmsprop_v_min/all"] == pytest.approx(1e-6)
    assert stats["rmsprop_v_min/value_head"] == pytest.approx(1e-6)
    assert stats["rmsprop_v_median/all"] == 1.0 and stats["rmsprop_v_min/logits"] == 1.0
    norms = learner.weight_norms()
    want = np.sqrt(sum(np.sum(w.numpy() ** 2) for w in learner.model.trainable_variables
                       if w.path.startswith("value_head/")))
    assert norms["value_head"] == pytest.approx(want, rel=1e-6)


def test_mlp_has_step_probes_but_no_dead_relu_ones():
    learner = Learner((3,), np.float32, 2, NetworkConfig(hidden=(4,)), AlgoConfig())
    assert not [k for k in learner.probe_names if k.startswith("dead_relu/")]
    assert "max_step" in learner.probe_names


@pytest.mark.parametrize("update_clip", [0.0, 0.7])
def test_clipped_rmsprop_against_numpy_and_keras(update_clip):
    rng = np.random.default_rng(2)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    var, plain = tf.Variable(w0), tf.Variable(w0)
    opt = ClippedRMSprop(update_clip=update_clip, learning_rate=0.1, rho=0.9, epsilon=1e-8)
    opt.build([var])
    keras_opt = keras.optimizers.RMSprop(learning_rate=0.1, rho=0.9, epsilon=1e-8)
    keras_opt.build([plain])
    v, w = np.zeros_like(w0), w0.copy()
    for step in range(4):
        g = (rng.normal(size=w0.shape) * (30.0 if step == 3 else 1.0)).astype(np.float32)
        opt.apply([tf.constant(g)], [var])
        keras_opt.apply([tf.constant(g)], [plain])
        v = 0.9 * v + 0.1 * g * g
        u = g / np.sqrt(v + 1e-8)
        f = 1.0 if not update_clip else min(1.0, update_clip / np.sqrt(np.mean(u * u)))
        w = w - 0.1 * f * u
    np.testing.assert_allclose(var.numpy(), w, rtol=1e-5, atol=1e-6)
    if not update_clip:  # Keras' own update, op for op
        np.testing.assert_array_equal(var.numpy(), plain.numpy())
    else:
        assert np.abs(var.numpy() - plain.numpy()).max() > 1e-3


def test_clipped_rmsprop_refuses_momentum():
    with pytest.raises(ValueError):
        ClippedRMSprop(momentum=0.9)
