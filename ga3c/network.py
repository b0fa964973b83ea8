"""Keras 3 actor-critic networks: observation -> (policy, value).

The policy is `logits` for a Discrete action space, or `mean` and `log_std` of a diagonal
Gaussian for a Box (`continuous=True`): the log-std is one state-independent parameter
vector (`LogStd`), broadcast over the batch, as in SB3 and CleanRL.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from ga3c.config import NetworkConfig
from ga3c.normalize import CLIP, EPSILON


@keras.saving.register_keras_serializable(package="ga3c")
class LogStd(keras.layers.Layer):
    """A trainable log-std vector (one per action dimension), repeated for each row of its
    input (the policy means)."""

    def __init__(self, units: int, initial: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units, self.initial = int(units), float(initial)

    def build(self, input_shape) -> None:
        self.log_std = self.add_weight(
            name="log_std", shape=(self.units,),
            initializer=keras.initializers.Constant(self.initial), trainable=True)

    def call(self, mean):
        return ops.zeros_like(mean) + ops.cast(self.log_std, mean.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "initial": self.initial}


@keras.saving.register_keras_serializable(package="ga3c")
class FrameCentering(keras.layers.Layer):
    """Subtracts from each frame of the stack its own mean pixel (over height and width).

    Atari frames are all >= 0 and mostly one background grey, so every weight of a conv0
    kernel gets a gradient of the same sign on the background, RMSProp steps each of them by
    ~lr, and the channel's response to the background moves by ~(kernel size) x lr x grey
    per update: channels drift below the background and, under ReLU, die for good
    (docs/stability.md). With the frame's mean taken out the background is ~0, and what moves
    a channel's background response is its bias alone."""

    def call(self, frames):
        return frames - ops.mean(frames, axis=(1, 2), keepdims=True)


@keras.saving.register_keras_serializable(package="ga3c")
class ObsNormalization(keras.layers.Layer):
    """(obs - mean) / sqrt(var + 1e-8), clipped to +-10 (SB3's VecNormalize), with the
    running mean, var and count as non-trainable float64 variables of the model: saved in
    checkpoints and policy.keras, so training, ga3c-eval and ga3c.load_policy normalise
    alike and a resume continues the statistics. The learner updates them from each training
    batch (`ga3c.normalize.merge_batch`); until the first update it passes observations
    through unchanged (mean 0, var 1)."""

    def build(self, input_shape) -> None:
        shape = tuple(input_shape[1:])
        self.mean = self.add_weight(name="mean", shape=shape, dtype="float64",
                                    initializer="zeros", trainable=False)
        self.var = self.add_weight(name="var", shape=shape, dtype="float64",
                                   initializer="ones", trainable=False)
        self.count = self.add_weight(name="count", shape=(), dtype="float64",
                                     initializer="zeros", trainable=False)

    def call(self, obs):
        mean = ops.cast(self.mean, "float32")
        std = ops.sqrt(ops.cast(self.var, "float32") + EPSILON)
        return ops.clip((ops.cast(obs, "float32") - mean) / std, -CLIP, CLIP)


def obs_normalization(model: keras.Model) -> ObsNormalization | None:
    """The model's observation-normalisation layer, or None."""
    return next((layer for layer in model.layers if isinstance(layer, ObsNormalization)), None)


def is_continuous(model: keras.Model) -> bool:
    """Does the model output a Gaussian policy (`mean`, `log_std`) rather than logits?"""
    return "mean" in model.output


def build_network(obs_shape: tuple[int, ...], obs_dtype: str, num_actions: int,
                  config: NetworkConfig, continuous: bool = False,
                  normalize_obs: bool = False) -> keras.Model:
    """The actor-critic network for these observations: an MLP for flat vectors, a CNN
    (`config.cnn`) for stacked frames shaped (height, width, stack). `num_actions` is the
    number of actions (Discrete) or the action dimension (`continuous`, a Box);
    `normalize_obs` (vector observations only) puts `ObsNormalization` first."""
    if len(obs_shape) == 3:
        if continuous or normalize_obs:
            raise ValueError("the CNN takes frames with a Discrete action space and no "
                             "observation normalisation")
        return build_cnn(obs_shape, obs_dtype, num_actions, config.cnn, config.init,
                         config.activation, config.center_frames)
    return build_mlp(obs_shape, obs_dtype, num_actions, config, continuous, normalize_obs)


INITS = ("orthogonal", "glorot")


LEAKY_SLOPE = 0.01  # --activation=leaky_relu's slope below 0


def relu_layers(model: keras.Model) -> list:
    """The model's layers with a ReLU activation, or the LeakyReLU layers that follow the
    CNN trunk's linear layers under --activation=leaky_relu (the MLPs use tanh). A unit of
    either is dead on a batch when its output is never > 0."""
    return [layer for layer in model.layers
            if getattr(layer, "activation", None) is keras.activations.relu
            or isinstance(layer, layers.LeakyReLU)]


def unit_name(layer) -> str:
    """The trunk layer a `relu_layers` entry belongs to: "conv0" for conv0 and for its
    LeakyReLU ("conv0_act"), so the instruments keep their names across activations."""
    return layer.name.removesuffix("_act")


def _kernel_init(init: str, gain: float):
    """Kernel initializer of a layer: orthogonal with `gain` (as in OpenAI baselines and SB3:
    sqrt(2) for ReLU/tanh trunk layers, 0.01 for the policy head, 1 for the value head), or
    Keras' default glorot-uniform (gain ignored). Orthogonal keeps the features' scale through
    the layers; glorot shrinks it (on Pong frames the CNN's dense features came out ~5x
    smaller), and with RMSProp in its epsilon-bound regime every update shrinks with it."""
    if init == "glorot":
        return "glorot_uniform"
    return keras.initializers.Orthogonal(gain)


def _heads(features, num_actions: int, init: str, continuous: bool = False,
           log_std_init: float = 0.0):
    # Heads in float32 even under a mixed-precision policy: logits feed a log-softmax.
    # The policy head always starts near uniform (orthogonal, gain 0.01); a Gaussian's
    # means near 0, its std at exp(log_std_init).
    value = layers.Dense(1, name="value_head", dtype="float32",
                         kernel_initializer=_kernel_init(init, 1.0))(features[1])
    value = layers.Reshape((), name="value", dtype="float32")(value)
    if continuous:
        mean = layers.Dense(num_actions, name="mean", dtype="float32",
                            kernel_initializer=keras.initializers.Orthogonal(0.01))(features[0])
        log_std = LogStd(num_actions, log_std_init, name="log_std", dtype="float32")(mean)
        return {"mean": mean, "log_std": log_std, "value": value}
    logits = layers.Dense(num_actions, name="logits", dtype="float32",
                          kernel_initializer=keras.initializers.Orthogonal(0.01))(features[0])
    return {"logits": logits, "value": value}


# (filters, kernel, stride, padding) per conv layer, then the dense layer's width.
CNN_TRUNKS = {
    # GA3C (NVlabs): 16 8x8/4, 32 4x4/2, both "same" -> 11x11x32 = 3872 features, dense 256.
    "ga3c": ([(16, 8, 4, "same"), (32, 4, 2, "same")], 256),
    # Nature DQN: 32 8x8/4, 64 4x4/2, 64 3x3/1, "valid" -> 7x7x64 = 3136 features, dense 512.
    "nature": ([(32, 8, 4, "valid"), (64, 4, 2, "valid"), (64, 3, 1, "valid")], 512),
}


def build_cnn(obs_shape: tuple[int, ...], obs_dtype: str, num_actions: int,
              trunk: str, init: str = "orthogonal", activation: str = "relu",
              center_frames: bool = False) -> keras.Model:
    """CNN actor-critic for stacked frames (height, width, stack), e.g. Atari's (84, 84, 4).

    Frames travel the queues as uint8 and are scaled to [0, 1] inside the model; the policy
    and value heads share the trunk, as in GA3C. The envs deliver the stack last
    (`ga3c.envs.frames_last`), the layout TensorFlow's CPU convolutions take.
    """
    convs, dense = CNN_TRUNKS[trunk]
    leaky = activation == "leaky_relu"

    def trunk_layer(layer_type, x, name, *args, **kwargs):
        # Under leaky_relu the layer is linear and a LeakyReLU named "<name>_act" follows:
        # Keras would save a leaky_relu activation by name and load it with slope 0.2.
        x = layer_type(*args, activation=None if leaky else "relu", name=name,
                       kernel_initializer=_kernel_init(init, math.sqrt(2)), **kwargs)(x)
        return layers.LeakyReLU(LEAKY_SLOPE, name=f"{name}_act")(x) if leaky else x

    inputs = keras.Input(shape=obs_shape, dtype=obs_dtype, name="obs")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    if center_frames:
        x = FrameCentering(name="center")(x)
    for i, (filters, kernel, stride, padding) in enumerate(convs):
        x = trunk_layer(layers.Conv2D, x, f"conv{i}", filters, kernel, strides=stride,
                        padding=padding)
    x = layers.Flatten(name="features")(x)
    x = trunk_layer(layers.Dense, x, "dense", dense)
    return keras.Model(inputs, _heads((x, x), num_actions, init), name=f"ga3c_{trunk}_cnn")


def build_mlp(obs_shape: tuple[int, ...], obs_dtype: str, num_actions: int,
              config: NetworkConfig, continuous: bool = False,
              normalize_obs: bool = False) -> keras.Model:
    """MLP actor-critic for vector observations.

    Outputs `logits` of shape (batch, num_actions) and `value` of shape (batch,).
    With `separate_towers` the policy and the value function get their own hidden layers
    (as in Stable-Baselines3's default MLP policy), else they share one trunk.
    """
    if len(obs_shape) != 1:
        raise ValueError(f"the MLP network needs flat observations, got shape {obs_shape}")
    inputs = keras.Input(shape=obs_shape, dtype=obs_dtype, name="obs")
    x = ObsNormalization(name="obs_norm", dtype="float32")(inputs) if normalize_obs else inputs
    x = layers.Activation("linear", name="to_float")(x)  # cast to the compute dtype

    def tower(prefix: str):
        h = x
        for i, units in enumerate(config.hidden):
            h = layers.Dense(units, activation="tanh", name=f"{prefix}_dense{i}",
                             kernel_initializer=_kernel_init(config.init, math.sqrt(2)))(h)
        return h

    pi_features = tower("pi" if config.separate_towers else "trunk")
    v_features = tower("v") if config.separate_towers else pi_features
    return keras.Model(inputs, _heads((pi_features, v_features), num_actions, config.init,
                                      continuous, config.log_std_init), name="ga3c_mlp")
