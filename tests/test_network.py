"""Network shapes: the GA3C CNN's 3872 features, uint8 frames scaled inside, the MLP towers."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from ga3c.config import AlgoConfig, NetworkConfig  # noqa: E402
from ga3c.learner import Learner  # noqa: E402
from ga3c.network import build_network  # noqa: E402
from ga3c.returns import Transitions  # noqa: E402

ATARI = (84, 84, 4)  # stacked grayscale frames, stack last (ga3c.envs.frames_last)


@pytest.mark.parametrize("trunk, features, dense, convs", [
    ("ga3c", 3872, 256, [(21, 21, 16), (11, 11, 32)]),  # GA3C: 'same' padding -> 11x11x32
    ("nature", 3136, 512, [(20, 20, 32), (9, 9, 64), (7, 7, 64)]),
])
def test_cnn_trunks_have_the_published_shapes(trunk, features, dense, convs):
    model = build_network(ATARI, "uint8", 6, NetworkConfig(cnn=trunk))
    assert model.get_layer("features").output.shape[1:] == (features,)
    assert model.get_layer("dense").output.shape[1:] == (dense,)
    assert [tuple(model.get_layer(f"conv{i}").output.shape[1:]) for i in range(len(convs))] \
        == convs
    out = model(np.zeros((2, *ATARI), np.uint8))
    assert out["logits"].shape == (2, 6) and out["value"].shape == (2,)


def test_frames_are_uint8_and_scaled_inside_the_model():
    model = build_network(ATARI, "uint8", 3, NetworkConfig())
    assert model.inputs[0].dtype == "uint8"
    frames = np.random.default_rng(0).integers(0, 256, (3, *ATARI), dtype=np.uint8)
    scaled = model.get_layer("scale")
    probe = keras.Model(model.inputs[0], scaled.output)
    got = np.asarray(probe(frames))
    np.testing.assert_allclose(got, frames / 255.0, atol=1e-6)


def test_mlp_towers_separate_or_shared():
    separate = build_network((4,), "float32", 2, NetworkConfig(hidden=(8, 8)))
    shared = build_network((4,), "float32", 2, NetworkConfig(hidden=(8, 8),
                                                             separate_towers=False))
    names = {layer.name for layer in separate.layers}
    assert {"pi_dense0", "v_dense0"} <= names
    assert "trunk_dense0" in {layer.name for layer in shared.layers}
    assert separate.count_params() > shared.count_params()


def test_learner_trains_the_cnn_on_uint8_frames():
    rng = np.random.default_rng(1)
    learner = Learner(ATARI, np.uint8, 4, NetworkConfig(), AlgoConfig())
    frames = rng.integers(0, 256, (5, *ATARI), dtype=np.uint8)
    logits, values = learner.predict(frames)
    assert logits.shape == (5, 4) and values.shape == (5,)
    batch = Transitions(frames, rng.integers(0, 4, 5).astype(np.int32),
                        np.ones(5, np.float32), frames[:2].copy(), np.array([0, 0, 1, 1, 1], np.int32),
                        np.full(5, 5, np.int32),
                        np.ones(5, np.float32), np.zeros(5, np.int64))
    metrics = learner.train(batch)
    assert np.isfinite(metrics.loss) and learner.version == 1


def _feature_rms(init, trunk="nature"):
    keras.utils.set_random_seed(0)
    model = build_network(ATARI, "uint8", 6, NetworkConfig(cnn=trunk, init=init))
    frames = np.random.default_rng(1).integers(0, 256, (16, *ATARI), dtype=np.uint8)
    dense = keras.Model(model.inputs[0], model.get_layer("dense").output)
    return float(np.sqrt(np.mean(np.square(np.asarray(dense(frames))))))


@pytest.mark.parametrize("trunk", ["ga3c", "nature"])
def test_orthogonal_init_keeps_the_feature_scale_that_glorot_shrinks(trunk):
    """Orthogonal init with gain sqrt(2) (baselines, SB3) keeps ReLU features at the input's
    scale; Keras' glorot default shrinks them layer by layer, and with RMSProp in its
    epsilon-bound regime every update shrinks with them (the Pong run that did not learn)."""
    ortho, glorot = _feature_rms("orthogonal", trunk), _feature_rms("glorot", trunk)
    assert ortho > 2.5 * glorot, (ortho, glorot)


def test_orthogonal_init_gains_per_layer():
    model = build_network(ATARI, "uint8", 6, NetworkConfig(cnn="nature", init="orthogonal"))
    for name, gain in [("conv2", np.sqrt(2)), ("dense", np.sqrt(2)), ("value_head", 1.0),
                       ("logits", 0.01)]:
        w = np.asarray(model.get_layer(name).kernel).reshape(-1, model.get_layer(name).kernel.shape[-1])
        # Orthogonal columns (fan_in >= units): W^T W = gain^2 I.
        np.testing.assert_allclose(w.T @ w, gain ** 2 * np.eye(w.shape[1]), atol=1e-4 * max(1, gain ** 2))


def test_leaky_relu_trunk_is_the_relu_trunk_with_slope_0_01_below_zero(tmp_path):
    """--activation=leaky_relu: the same weights (same names, same count) as the ReLU trunk,
    each conv/dense layer linear and followed by a LeakyReLU "<name>_act" of slope 0.01;
    policy.keras keeps the slope (Keras would load an activation saved by name at 0.2)."""
    from ga3c.network import relu_layers, unit_name

    relu = build_network(ATARI, "uint8", 6, NetworkConfig(cnn="nature"))
    leaky = build_network(ATARI, "uint8", 6, NetworkConfig(cnn="nature", activation="leaky_relu"))
    assert [w.path for w in leaky.weights] == [w.path for w in relu.weights]
    leaky.set_weights(relu.get_weights())
    assert [unit_name(layer) for layer in relu_layers(leaky)] \
        == [unit_name(layer) for layer in relu_layers(relu)] == ["conv0", "conv1", "conv2", "dense"]
    x = np.random.default_rng(0).integers(0, 256, (3, *ATARI), dtype=np.uint8)
    pre = np.asarray(keras.Model(leaky.inputs, leaky.get_layer("conv0").output)(x))
    act = np.asarray(keras.Model(leaky.inputs, leaky.get_layer("conv0_act").output)(x))
    assert (pre < 0).any() and (pre > 0).any()
    np.testing.assert_allclose(act, np.where(pre > 0, pre, 0.01 * pre), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        np.asarray(keras.Model(relu.inputs, relu.get_layer("conv0").output)(x)),
        np.maximum(pre, 0), rtol=1e-6, atol=1e-7)
    path = str(tmp_path / "policy.keras")
    leaky.save(path)
    loaded = keras.models.load_model(path, compile=False)
    assert loaded.get_layer("conv0_act").get_config()["negative_slope"] == pytest.approx(0.01)
    np.testing.assert_allclose(np.asarray(loaded(x)["logits"]), np.asarray(leaky(x)["logits"]),
                               rtol=1e-5, atol=1e-6)


def test_center_frames_takes_each_frames_mean_pixel_out_before_conv0(tmp_path):
    """--center_frames: every frame of the stack loses its own mean pixel, so on a uniform
    frame conv0's output is relu(bias) whatever the grey level (not the kernel sums times the
    grey, which is what lets every weight of a channel push it below the background); the
    weights are the plain trunk's and policy.keras keeps the layer."""
    plain = build_network(ATARI, "uint8", 6, NetworkConfig(cnn="nature"))
    centred = build_network(ATARI, "uint8", 6, NetworkConfig(cnn="nature", center_frames=True))
    assert [w.path for w in centred.weights] == [w.path for w in plain.weights]
    conv0 = centred.get_layer("conv0")
    conv0.bias.assign(np.linspace(-0.5, 0.5, conv0.filters).astype("float32"))
    grey = np.zeros((2, *ATARI), np.uint8)
    grey[0], grey[1, ..., :2], grey[1, ..., 2:] = 87, 30, 200
    out = np.asarray(keras.Model(centred.inputs, conv0.output)(grey))
    np.testing.assert_allclose(out, np.broadcast_to(np.maximum(conv0.bias.numpy(), 0), out.shape),
                               atol=1e-4)  # float32 rounding of the mean, times the kernel sums
    # The plain trunk's response to the same grey frame depends on the grey level.
    plain.set_weights(centred.get_weights())
    plain_out = np.asarray(keras.Model(plain.inputs, plain.get_layer("conv0").output)(grey))
    assert np.abs(plain_out - out).max() > 0.1
    x = np.random.default_rng(0).integers(0, 256, (3, *ATARI), dtype=np.uint8)
    centred_in = np.asarray(keras.Model(centred.inputs, centred.get_layer("center").output)(x))
    np.testing.assert_allclose(centred_in, x / 255.0 - (x / 255.0).mean(axis=(1, 2), keepdims=True),
                               atol=1e-5)
    path = str(tmp_path / "policy.keras")
    centred.save(path)
    loaded = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(np.asarray(loaded(x)["logits"]), np.asarray(centred(x)["logits"]),
                               rtol=1e-5, atol=1e-6)
