"""Keras 3 actor-critic networks: observation -> (policy logits, value)."""

from __future__ import annotations

import keras
from keras import layers

from ga3c.config import NetworkConfig


def build_network(obs_shape: tuple[int, ...], obs_dtype: str, num_actions: int,
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
            h = layers.Dense(units, activation="tanh", name=f"{prefix}_dense{i}")(h)
        return h

    pi_features = tower("pi" if config.separate_towers else "trunk")
    v_features = tower("v") if config.separate_towers else pi_features
    # Heads in float32 even under a mixed-precision policy: logits feed a log-softmax.
    logits = layers.Dense(num_actions, name="logits", dtype="float32",
                          kernel_initializer=keras.initializers.Orthogonal(0.01))(pi_features)
    value = layers.Dense(1, name="value_head", dtype="float32")(v_features)
    value = layers.Reshape((), name="value", dtype="float32")(value)
    return keras.Model(inputs, {"logits": logits, "value": value}, name="ga3c_mlp")
