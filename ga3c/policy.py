"""A trained policy as a plain object: a batch of observations -> actions and values.

    policy = ga3c.load_policy("runs/cp1")          # the run's policy.keras
    actions, values = policy.act(observations)      # greedy; policy.act(obs, sample=True)

Only the network is loaded (no optimizer, no training step): from `policy.keras`, or from a
training checkpoint (`checkpoint=`), as `ga3c-eval` does.
"""

from __future__ import annotations

import os

import numpy as np

from ga3c.agent import sample_actions
from ga3c.errors import UserError, first_line
from ga3c.rundir import RunDir


class Policy:
    def __init__(self, model, obs_dtype, checkpoint: str, seed: int = 0) -> None:
        import tensorflow as tf

        self.model = model
        self.obs_dtype = np.dtype(obs_dtype)
        self.checkpoint = checkpoint  # where the weights came from
        self.rng = np.random.default_rng(seed)

        @tf.function(reduce_retracing=True)
        def forward(states):
            out = model(states, training=False)
            return tf.cast(out["logits"], tf.float32), tf.cast(out["value"], tf.float32)

        self._forward = forward

    def logits_and_values(self, observations) -> tuple[np.ndarray, np.ndarray]:
        logits, values = self._forward(np.asarray(observations, self.obs_dtype))
        return logits.numpy(), values.numpy()

    def act(self, observations, sample: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(actions, values) for a batch of observations: greedy (argmax), or drawn from the
        policy with `sample=True`."""
        logits, values = self.logits_and_values(observations)
        actions = sample_actions(logits, self.rng) if sample else np.argmax(logits, axis=1)
        return actions, values


def load_policy(logdir: str, checkpoint: str | None = None, seed: int = 0) -> Policy:
    """The policy of a run: its `policy.keras`, or the network of a training checkpoint
    (`checkpoint=` a path prefix, or "latest"). UserError if there is none to load."""
    import keras

    from ga3c.checkpoints import find_checkpoint
    from ga3c.envs import inspect_env

    run_dir = RunDir(logdir)
    config = run_dir.read_config()
    if checkpoint is None and os.path.exists(run_dir.policy):
        try:
            model = keras.models.load_model(run_dir.policy, compile=False)
        except Exception as exc:  # noqa: BLE001 - a damaged file
            raise UserError(f"cannot load {run_dir.policy}: {first_line(exc)}") from None
        dtype = model.inputs[0].dtype
        return Policy(model, np.float32 if "float" in str(dtype) else np.dtype(dtype),
                      run_dir.policy, seed)
    path = find_checkpoint(run_dir.checkpoints, None if checkpoint in (None, "latest")
                           else checkpoint)
    return checkpoint_policy(path, config.network, inspect_env(config.env.env_id, config.env),
                             seed)


def checkpoint_policy(path: str, network, spec, seed: int = 0) -> Policy:
    """The network of training checkpoint `path` (built from `network`, a NetworkConfig, for
    envs described by `spec`, an EnvSpec) as a Policy: no optimizer, no training step."""
    from ga3c.checkpoints import restore_network
    from ga3c.network import build_network

    model = build_network(spec.obs_shape, spec.obs_dtype.name, spec.num_actions, network)
    restore_network(model, path)
    return Policy(model, spec.obs_dtype, path, seed)
