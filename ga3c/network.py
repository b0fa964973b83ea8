"""Keras 3 actor-critic networks: observation -> (policy logits, value)."""

from __future__ import annotations

import math

import keras
from keras import layers

from ga3c.config import NetworkConfig


def build_network(obs_shape: tuple[int, ...], obs_dtype: str, num_actions: int,
                  config: NetworkConfig) -> keras.Model:
    """The actor-critic network for these observations: an MLP for flat vectors, a CNN
    (`config.cnn`) for stacked frames shaped (height, width, stack)."""
    if len(obs_shape) == 3:
        return build_cnn(obs_shape, obs_dtype, num_actions, config.cnn, config.init)
    return build_mlp(obs_shape, obs_dtype, num_actions, config)


INITS = ("orthogonal", "glorot")


def relu_layers(model: keras.Model) -> list:
    """The model's layers with a ReLU activation (the CNN trunk's; the MLPs use tanh)."""
    return [layer for layer in model.layers
            if getattr(layer, "activation", None) is keras.activations.relu]


def _kernel_init(init: str, gain: float):
    """Kernel initializer of a layer: orthogonal with `gain` (as in OpenAI baselines and SB3:
    sqrt(2) for ReLU/tanh trunk layers, 0.01 for the policy head, 1 for the value head), or
    Keras' default glorot-uniform (gain ignored). Orthogonal keeps the features' scale through
    the layers; glorot shrinks it (on Pong frames the CNN's dense features came out ~5x
    smaller), and with RMSProp in its epsilon-bound regime every update shrinks with it."""
    if init == "glorot":
        return "glorot_uniform"
    return keras.initializers.Orthogonal(gain)


def _heads(features, num_actions: int, init: str):
    # Heads in float32 even under a mixed-precision policy: logits feed a log-softmax.
    # The policy head always starts near uniform (orthogonal, gain 0.01).
    logits = layers.Dense(num_actions, name="logits", dtype="float32",
                          kernel_initializer=keras.initializers.Orthogonal(0.01))(features[0])
    value = layers.Dense(1, name="value_head", dtype="float32",
                         kernel_initializer=_kernel_init(init, 1.0))(features[1])
    value = layers.Reshape((), name="value", dtype="float32")(value)
    return {"logits": logits, "value": value}


# (filters, kernel, stride, padding) per conv layer, then the dense layer's width.
CNN_TRUNKS = {
    # GA3C (NVlabs): 16 8x8/4, 32 4x4/2, both "same" -> 11x11x32 = 3872 features, dense 256.
    "ga3c": ([(16, 8, 4, "same"), (32, 4, 2, "same")], 256),
    # Nature DQN: 32 8x8/4, 64 4x4/2, 64 3x3/1, "valid" -> 7x7x64 = 3136 features, dense 512.
    "nature": ([(32, 8, 4, "valid"), (64, 4, 2, "valid"), (64, 3, 1, "valid")], 512),
}


def build_cnn(obs_shape: tuple[int, ...], obs_dtype: str, num_actions: int,
              trunk: str, init: str = "orthogonal") -> keras.Model:
    """CNN actor-critic for stacked frames (height, width, stack), e.g. Atari's (84, 84, 4).

    Frames travel the queues as uint8 and are scaled to [0, 1] inside the model; the policy
    and value heads share the trunk, as in GA3C. The envs deliver the stack last
    (`ga3c.envs.frames_last`), the layout TensorFlow's CPU convolutions take.
    """
    convs, dense = CNN_TRUNKS[trunk]
    inputs = keras.Input(shape=obs_shape, dtype=obs_dtype, name="obs")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    for i, (filters, kernel, stride, padding) in enumerate(convs):
        x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, activation="relu",
                          kernel_initializer=_kernel_init(init, math.sqrt(2)), name=f"conv{i}")(x)
    x = layers.Flatten(name="features")(x)
    x = layers.Dense(dense, activation="relu", kernel_initializer=_kernel_init(init, math.sqrt(2)),
                     name="dense")(x)
    return keras.Model(inputs, _heads((x, x), num_actions, init), name=f"ga3c_{trunk}_cnn")


def build_mlp(obs_shape: tuple[int, ...], obs_dtype: str, num_actions: int,
              config: NetworkConfig) -> keras.Model:
    """MLP actor-critic for vector observations.

    Outputs `logits` of shape (batch, num_actions) and `value` of shape (batch,).
    With `separate_towers` the policy and the value function get their own hidden layers
    (as in Stable-Baselines3's default MLP policy), else they share one trunk.
    """
    if len(obs_shape) != 1:
        raise ValueError(f"the MLP network needs flat observations, got shape {obs_shape}")
    inputs = keras.Input(shape=obs_shape, dtype=obs_dtype, name="obs")
    x = layers.Activation("linear", name="to_float")(inputs)  # cast to the compute dtype

    def tower(prefix: str):
        h = x
        for i, units in enumerate(config.hidden):
            h = layers.Dense(units, activation="tanh", name=f"{prefix}_dense{i}",
                             kernel_initializer=_kernel_init(config.init, math.sqrt(2)))(h)
        return h

    pi_features = tower("pi" if config.separate_towers else "trunk")
    v_features = tower("v") if config.separate_towers else pi_features
    return keras.Model(inputs, _heads((pi_features, v_features), num_actions, config.init),
                       name="ga3c_mlp")
