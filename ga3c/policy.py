"""A trained policy as a plain object: a batch of observations -> actions and values.

    policy = ga3c.load_policy("runs/cp1")          # the run's policy.keras
    actions, values = policy.act(observations)      # greedy; policy.act(obs, sample=True)

Only the network is loaded (no optimizer, no training step): from `policy.keras`, or from a
training checkpoint (`checkpoint=`), as `ga3c-eval` does. For a Box action space the greedy
action is the Gaussian's mean and a sampled one is drawn from it, both clipped to the
space's bounds; a run with --normalize_obs normalises inside the network, with the
statistics saved with the weights.
"""

from __future__ import annotations

import os

import numpy as np

from ga3c.distributions import CategoricalHead
from ga3c.errors import UserError, first_line
from ga3c.rundir import RunDir


class Policy:
    def __init__(self, model, obs_dtype, checkpoint: str, seed: int = 0, head=None) -> None:
        """`head` (`ga3c.distributions`): how actions are drawn; a Gaussian model needs its
        GaussianHead (the action bounds); None: categorical."""
        import tensorflow as tf

        from ga3c.network import is_continuous

        self.model = model
        self.obs_dtype = np.dtype(obs_dtype)
        self.checkpoint = checkpoint  # where the weights came from
        self.rng = np.random.default_rng(seed)
        continuous = is_continuous(model)
        if head is None and continuous:
            raise ValueError("a Gaussian policy needs its GaussianHead (the action bounds)")
        self.head = head or CategoricalHead(model.output["logits"].shape[-1])

        @tf.function(reduce_retracing=True)
        def forward(states):
            out = model(states, training=False)
            params = (tf.concat([out["mean"], out["log_std"]], axis=-1) if continuous
                      else out["logits"])
            return tf.cast(params, tf.float32), tf.cast(out["value"], tf.float32)

        self._forward = forward

    def logits_and_values(self, observations) -> tuple[np.ndarray, np.ndarray]:
        """The policy's parameters per row (logits; a Gaussian's means then log-stds) and
        the values."""
        logits, values = self._forward(np.asarray(observations, self.obs_dtype))
        return logits.numpy(), values.numpy()

    def act(self, observations, sample: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(actions, values) for a batch of observations: greedy (argmax; a Gaussian's mean),
        or drawn from the policy with `sample=True`; Box actions clipped to the bounds."""
        params, values = self.logits_and_values(observations)
        head = self.head
        actions = head.to_env(head.sample(params, self.rng)) if sample else head.mode(params)
        return actions, values


def load_policy(logdir: str, checkpoint: str | None = None, seed: int = 0) -> Policy:
    """The policy of a run: its `policy.keras`, or the network of a training checkpoint
    (`checkpoint=` a path prefix, or "latest"). UserError if there is none to load."""
    import keras

    import ga3c.network  # noqa: F401 - registers the custom layers policy.keras may hold
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
        head = (inspect_env(config.env.env_id, config.env).head()
                if ga3c.network.is_continuous(model) else None)
        return Policy(model, np.float32 if "float" in str(dtype) else np.dtype(dtype),
                      run_dir.policy, seed, head)
    path = find_checkpoint(run_dir.checkpoints, None if checkpoint in (None, "latest")
                           else checkpoint)
    return checkpoint_policy(path, config.network, inspect_env(config.env.env_id, config.env),
                             seed, config.env.normalize_obs)


def checkpoint_policy(path: str, network, spec, seed: int = 0,
                      normalize_obs: bool = False) -> Policy:
    """The network of training checkpoint `path` (built from `network`, a NetworkConfig, for
    envs described by `spec`, an EnvSpec; with the observation statistics of a
    --normalize_obs run) as a Policy: no optimizer, no training step."""
    from ga3c.checkpoints import restore_network
    from ga3c.network import build_network

    model = build_network(spec.obs_shape, spec.obs_dtype.name, spec.num_actions, network,
                          spec.continuous, normalize_obs)
    restore_network(model, path)
    return Policy(model, spec.obs_dtype, path, seed, spec.head() if spec.continuous else None)
