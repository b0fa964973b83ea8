"""The one shared model and optimizer: compiled predict, compiled train step, loss, checkpoints.

Predictor threads call `predict`; optimizer threads call `train`. Both are `tf.function`s with
a fixed input signature whose batch dimension is `None`, so every batch size uses the same
trace (`trace_counts()` lets tests prove it). The optimizer threads update the shared
variables without a lock, as GA3C and Hogwild do; only a checkpoint write (`paused()`) holds
them off, for the tens of milliseconds it takes.

A run that diverges stops instead of training on and saving NaN: every train step's loss
terms and gradient norm are checked (five floats the step returns anyway: free), and the
weights and optimizer state are checked before anything is saved (`check_finite`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from ga3c.config import AlgoConfig, Config, NetworkConfig
from ga3c.errors import NonFiniteError
from ga3c.hardware import cpu_info, decide_mixed_precision
from ga3c.network import build_network, obs_normalization, relu_layers, unit_name
from ga3c.normalize import merge_batch
from ga3c.optimizer import ClippedRMSprop
from ga3c.returns import Transitions
from ga3c.threads import UpdateGate


class LossTerms(NamedTuple):
    total: object
    policy_loss: object
    value_loss: object
    entropy: object


LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(mean, log_std, actions):
    """log N(actions; mean, diag(exp(log_std)^2)) per row, summed over the action dims:
    sum_i -((a_i - mu_i) / sigma_i)^2 / 2 - log sigma_i - log(2 pi) / 2."""
    mean, log_std = ops.cast(mean, "float32"), ops.cast(log_std, "float32")
    z = (ops.cast(actions, "float32") - mean) * ops.exp(-log_std)
    return ops.sum(-0.5 * ops.square(z) - log_std - 0.5 * LOG_2PI, axis=-1)


def gaussian_entropy(log_std):
    """Entropy of a diagonal Gaussian per row: sum_i log sigma_i + (1 + log(2 pi)) / 2."""
    return ops.sum(ops.cast(log_std, "float32") + 0.5 * (1.0 + LOG_2PI), axis=-1)


def bound_penalty(mean, low, high):
    """Per row, sum_i relu(mu_i - high_i)^2 + relu(low_i - mu_i)^2: 0 while every mean is
    inside the Box's bounds (rl_games' bounds loss, without its soft margin)."""
    mean = ops.cast(mean, "float32")
    above = ops.relu(mean - ops.convert_to_tensor(high, "float32"))
    below = ops.relu(ops.convert_to_tensor(low, "float32") - mean)
    return ops.sum(ops.square(above) + ops.square(below), axis=-1)


def a3c_loss(logits, values, actions, targets, value_coef: float, entropy_coef: float,
             weights=None, normalize_advantages: bool = False, log_std=None,
             bounds=None, bound_coef: float = 0.0) -> LossTerms:
    """Actor-critic loss averaged over the batch.

    policy_loss = -mean(log pi(a|s) * stop_gradient(target - V(s)))
    value_loss  = mean((target - V(s))^2)
    entropy     = mean(-sum_a pi(a|s) log pi(a|s))
    total       = policy_loss + value_coef * value_loss - entropy_coef * entropy
    Log-probabilities come from log_softmax of the logits, so no log(0) can occur.
    With `log_std` given, the policy is a diagonal Gaussian: `logits` are its means, `actions`
    the (unclipped) samples, and log pi and the entropy are `gaussian_log_prob` and
    `gaussian_entropy`; with `bounds` = (low, high) and `bound_coef` > 0 the total also has
    bound_coef * mean(`bound_penalty`) on the means.
    `weights` (0 or 1 per row) leaves padding rows out of every mean (used under XLA, where
    batches are padded to a few fixed sizes). With `normalize_advantages` the policy term uses
    (A - mean A) / (std A + 1e-8) over the batch: a batch whose advantages are all biased one
    way (a value function lagging a fast-improving policy) then cannot push every taken
    action up at once, which is what collapses a policy to one action.
    """
    logits = ops.cast(logits, "float32")
    values = ops.cast(values, "float32")
    if weights is None:
        mean = ops.mean
    else:
        total_weight = ops.maximum(ops.sum(weights), 1.0)

        def mean(x):
            return ops.sum(x * weights) / total_weight

    if log_std is None:
        log_probs = ops.log_softmax(logits, axis=-1)
        actions = ops.cast(actions, "int32")
        log_pi_a = ops.squeeze(
            ops.take_along_axis(log_probs, ops.expand_dims(actions, -1), axis=-1), -1)
        entropies = -ops.sum(ops.exp(log_probs) * log_probs, axis=-1)
    else:
        log_pi_a = gaussian_log_prob(logits, log_std, actions)
        entropies = gaussian_entropy(log_std)
    advantages = ops.stop_gradient(targets - values)
    if normalize_advantages:
        centred = advantages - mean(advantages)
        advantages = centred / (ops.sqrt(mean(ops.square(centred))) + 1e-8)
    policy_loss = -mean(log_pi_a * advantages)
    value_loss = mean(ops.square(targets - values))
    entropy = mean(entropies)
    total = policy_loss + value_coef * value_loss - entropy_coef * entropy
    if log_std is not None and bounds is not None and bound_coef > 0:
        total = total + bound_coef * mean(bound_penalty(logits, *bounds))
    return LossTerms(total, policy_loss, value_loss, entropy)


def batch_diagnostics(logits, values, targets, weights, centre: bool = True):
    """Two numbers to watch while learning is slow, besides the score and the entropy:

    explained_variance = 1 - Var(target - V) / Var(target): how much of the targets' spread
        the value head predicts (0: no better than a constant, 1: all of it);
    logit_spread = the std across the batch's states of each action's logit (centred per
        state), averaged over actions: ~0 while the policy ignores the state (the Pong run
        that did not learn sat there), growing as it comes to depend on the frames.
    `weights` (0 or 1 per row) leave padding rows out, as in the loss. A Gaussian policy
    passes its means with `centre=False` (a mean is an action, not a logit up to a constant).
    """
    logits = ops.cast(logits, "float32")
    total = ops.maximum(ops.sum(weights), 1.0)

    def mean(x, axis=0):
        w = weights if len(x.shape) == 1 else ops.expand_dims(weights, -1)
        return ops.sum(x * w, axis=axis) / total

    def var(x):
        return mean(ops.square(x - mean(x)))

    explained = 1.0 - var(targets - values) / ops.maximum(var(targets), 1e-8)
    centred = logits - ops.mean(logits, axis=-1, keepdims=True) if centre else logits
    spread = ops.mean(ops.sqrt(var(centred)))
    return explained, spread


def layer_of(variable) -> str:
    """The name of the layer a model variable belongs to ("dense" for "dense/kernel")."""
    return variable.path.split("/")[0]


class TrainMetrics(NamedTuple):
    loss: float
    policy_loss: float
    value_loss: float
    entropy: float
    grad_norm: float
    explained_variance: float
    logit_spread: float
    # The stability instruments of this step, by name (`Learner.probe_names`): see
    # `Learner._probes`. Not checked for finiteness (a NaN there shows in the loss too).
    probes: dict = {}


def bucket_size(n: int, smallest: int = 8) -> int:
    """The padded batch size for `n` rows under XLA: the next power of two (>= smallest)."""
    return max(smallest, 1 << max(n - 1, 0).bit_length())


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    if len(x) == size:
        return x
    out = np.zeros((size, *x.shape[1:]), dtype=x.dtype)
    out[:len(x)] = x
    return out


def mixed_precision_decision(setting: str) -> tuple[bool, str]:
    """`--mixed_precision` (auto, on, off) on this machine: whether to compute in bfloat16,
    and why (`ga3c.hardware.decide_mixed_precision`, with the GPUs TensorFlow sees)."""
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability") or (0, 0)))
    return decide_mixed_precision(setting, cpu_info()["flags"], capabilities)


class Learner:
    """Owns the shared Keras model, its RMSProp optimizer and the model version counter.

    `xla=True` compiles predict and train with XLA; batches are then zero-padded to a power
    of two (padding rows carry weight 0 in the loss), so XLA compiles each function for a
    handful of sizes rather than for every batch size. `mixed_precision=True` computes in
    bfloat16 with float32 variables (bfloat16 keeps float32's range, so no loss scaling).
    """

    @classmethod
    def for_run(cls, config: Config, env_spec) -> "Learner":
        """The learner a run of `config` uses on envs described by `env_spec`
        (`ga3c.envs.EnvSpec`): the service's, and the throughput benchmark's model ceilings."""
        mixed, _ = mixed_precision_decision(config.run.mixed_precision)
        return cls(env_spec.obs_shape, env_spec.obs_dtype, env_spec.num_actions,
                   config.network, config.algo, xla=config.run.xla, mixed_precision=mixed,
                   continuous=env_spec.continuous, normalize_obs=config.env.normalize_obs,
                   action_bounds=((env_spec.action_low, env_spec.action_high)
                                  if env_spec.continuous else None))

    def __init__(self, obs_shape, obs_dtype, num_actions: int, network: NetworkConfig,
                 algo: AlgoConfig, xla: bool = False, mixed_precision: bool = False,
                 continuous: bool = False, normalize_obs: bool = False,
                 action_bounds=None) -> None:
        """`continuous`: a Box action space of `num_actions` dimensions (Gaussian policy;
        predict returns its means then log-stds per row, `ga3c.distributions.GaussianHead`),
        whose (low, high) bounds are `action_bounds` (used by `algo.bound_coef`).
        `normalize_obs`: the network normalises observations by running statistics, which
        every `train` call updates from its batch's states first."""
        self.obs_shape = tuple(obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        self.num_actions = num_actions
        self.continuous = continuous
        self.action_bounds = action_bounds
        self.algo = algo
        self.xla = xla
        self.mixed_precision = mixed_precision
        self._build = functools.partial(build_network, self.obs_shape, self.obs_dtype.name,
                                        num_actions, network, continuous, normalize_obs)
        self.model = self._build_in("mixed_bfloat16" if mixed_precision else "float32")
        self._float32_twin = None  # policy.keras's network when training in bfloat16
        self.obs_norm = obs_normalization(self.model)
        self._obs_norm_lock = threading.Lock()
        self.optimizer = ClippedRMSprop(
            learning_rate=algo.learning_rate, rho=algo.rho, epsilon=algo.epsilon,
            update_clip=algo.update_clip)
        self.optimizer.build(self.model.trainable_variables)
        if algo.rmsprop_init:
            for velocity in self.optimizer.variables:
                if "velocity" in velocity.path:
                    velocity.assign(tf.fill(velocity.shape, algo.rmsprop_init))
        # The same layers, also returning each ReLU layer's activations (dead-unit instrument).
        self._relus = relu_layers(self.model)
        self._probe_model = keras.Model(self.model.inputs, {
            **self.model.output, **{f"relu/{layer.name}": layer.output for layer in self._relus}})
        self._layers = sorted({layer_of(v) for v in self.model.trainable_variables})
        self.probe_names = (["max_abs_advantage", "max_step", "max_step_unclipped", "clipped"]
                            + [f"dead_relu/{unit_name(layer)}" for layer in self._relus]
                            + [f"step_norm/{name}" for name in self._layers])
        self._version = 0
        self._version_lock = threading.Lock()
        self._updates = UpdateGate()
        # What first went non-finite ("non-finite loss, grad_norm at update 12 (...)"), or None.
        self.nonfinite: str | None = None

        obs_spec = tf.TensorSpec([None, *self.obs_shape], tf.as_dtype(self.obs_dtype))
        self._predict = tf.function(self._predict_impl, input_signature=[obs_spec],
                                    jit_compile=xla)
        self._train = tf.function(self._train_impl, jit_compile=xla, input_signature=[
            obs_spec,  # states
            (tf.TensorSpec([None, num_actions], tf.float32) if continuous  # actions
             else tf.TensorSpec([None], tf.int32)),
            tf.TensorSpec([None], tf.float32),  # rewards (n-step sums)
            obs_spec,  # distinct next states
            tf.TensorSpec([None], tf.int32),  # row -> its next state
            tf.TensorSpec([None], tf.int32),  # n
            tf.TensorSpec([None], tf.float32),  # masks
            tf.TensorSpec([None], tf.float32),  # row weights (0: padding)
        ])
        # Calling the concrete functions directly skips tf.function's argument binding,
        # which costs about as much as the tiny MLP's inference itself on CPU.
        self._predict_fn = self._predict.get_concrete_function()
        self._train_fn = self._train.get_concrete_function()

    # -- compiled functions ---------------------------------------------------------------
    def _predict_impl(self, states):
        out = self.model(states, training=False)
        return self._policy_params(out), tf.cast(out["value"], tf.float32)

    def _policy_params(self, out):
        """The policy's output per row: the logits, or a Gaussian's means then log-stds."""
        if self.continuous:
            return tf.concat([tf.cast(out["mean"], tf.float32),
                              tf.cast(out["log_std"], tf.float32)], axis=-1)
        return tf.cast(out["logits"], tf.float32)

    def _train_impl(self, states, actions, rewards, next_states, next_index, nsteps, masks,
                    weights):
        algo = self.algo
        # V(s_n) in its own forward pass, outside the tape, once per distinct s_n: nothing is
        # back-propagated through the next states (with them in the taped pass, the CNN's
        # backward pass ran over twice the rows and a train step cost 1.5x as much).
        next_values = tf.gather(
            tf.cast(self.model(next_states, training=False)["value"], tf.float32), next_index)
        discounts = tf.pow(tf.constant(algo.gamma, tf.float32), tf.cast(nsteps, tf.float32))
        targets = rewards + discounts * next_values * masks
        with tf.GradientTape() as tape:
            out = self._probe_model(states, training=True)
            policy = out["mean"] if self.continuous else out["logits"]
            terms = a3c_loss(policy, tf.cast(out["value"], tf.float32), actions, targets,
                             algo.value_coef, algo.entropy_coef, weights,
                             algo.normalize_advantages,
                             log_std=out["log_std"] if self.continuous else None,
                             bounds=self.action_bounds, bound_coef=algo.bound_coef)
        variables = self.model.trainable_variables
        grads = tape.gradient(terms.total, variables)
        if algo.clip_norm > 0:
            grads, grad_norm = tf.clip_by_global_norm(grads, algo.clip_norm)
        else:
            grad_norm = tf.linalg.global_norm(grads)
        with self.optimizer.recording() as steps:
            self.optimizer.apply(grads, variables)
        values = tf.cast(out["value"], tf.float32)
        explained, spread = batch_diagnostics(policy, values, targets, weights,
                                              centre=not self.continuous)
        return (tf.stack([terms.total, terms.policy_loss, terms.value_loss, terms.entropy,
                          grad_norm, explained, spread]),
                self._probes(out, steps, variables, tf.abs(targets - values) * weights, weights))

    def _probes(self, out, steps, variables, abs_advantages, weights):
        """The stability instruments of one step, in `probe_names`' order:
        max_abs_advantage: the batch's largest |target - V(s)|;
        max_step / max_step_unclipped: the largest per-weight step of this update in units
            of the learning rate, as taken and as plain RMSProp would have taken it (the same
            without --update_clip); clipped: the fraction of weight tensors whose step the
            clip cut;
        dead_relu/L: the fraction of ReLU layer L's units (a conv layer's channels) that are 0
            for every state of the batch (at every position);
        step_norm/L: ||step|| of layer L's weights (kernel and bias together); divided by
            ||weights|| per window (`weight_norms`), as TensorBoard's update_ratio/L.
        The step's figures come from the u the optimizer used (`ClippedRMSprop.recording`),
        so no second pass over the weights (recomputing u took 6.2 ms, the dead units' pass
        1.6 ms, in a microbenchmark); a whole Nature CNN step of 80 rows measured 126 ms
        with them and 129 ms without (median of 5 interleaved rounds, loaded machine)."""
        max_step, max_raw, clipped = 0.0, 0.0, 0.0
        step_sq = dict.fromkeys(self._layers, 0.0)
        lr = tf.cast(self.optimizer.learning_rate, tf.float32)
        for var in variables:
            peak, factor, sum_sq = steps[self.optimizer.variable_index(var)]
            max_raw = tf.maximum(max_raw, peak)
            max_step = tf.maximum(max_step, peak * factor)
            clipped += tf.cast(factor < 1.0, tf.float32)
            step_sq[layer_of(var)] += sum_sq * tf.square(lr * factor)
        dead = []
        for layer in self._relus:
            act = tf.cast(out[f"relu/{layer.name}"], tf.float32)
            mask = tf.reshape(weights, [-1] + [1] * (len(act.shape) - 1))
            alive = tf.reduce_max(act * mask, axis=list(range(len(act.shape) - 1))) > 0
            dead.append(1.0 - tf.reduce_mean(tf.cast(alive, tf.float32)))
        return tf.stack([tf.reduce_max(abs_advantages), max_step, max_raw,
                         clipped / len(variables), *dead,
                         *(tf.sqrt(step_sq[k]) for k in self._layers)])

    # -- public API -----------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Number of optimizer updates applied so far (the model version)."""
        return self._version

    def set_version(self, version: int) -> None:
        with self._version_lock:
            self._version = int(version)

    def predict(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(states)
        if self.xla:
            states = pad_rows(states, bucket_size(n))
        logits, values = self._predict_fn(states)
        return logits.numpy()[:n], values.numpy()[:n]

    def train(self, batch: Transitions) -> TrainMetrics:
        """One optimizer step; raises NonFiniteError if a loss term or the gradient norm is
        NaN or infinite (the step is applied by then: the weights must not be saved)."""
        n = len(batch)
        if self.obs_norm is not None:
            self.update_obs_stats(batch.states)
        rows = (batch.states, batch.actions, batch.rewards, batch.next_index, batch.nsteps,
                batch.masks, np.ones(n, np.float32))
        next_states = batch.next_states
        if self.xla:  # padding rows point at next state 0 and weigh nothing
            rows = tuple(pad_rows(c, bucket_size(n)) for c in rows)
            next_states = pad_rows(next_states, bucket_size(len(next_states)))
        states, actions, rewards, next_index, nsteps, masks, weights = rows
        with self._updates.shared():
            metrics, probes = self._train_fn(states, actions, rewards, next_states, next_index,
                                             nsteps, masks, weights)
            with self._version_lock:
                self._version += 1
                update = self._version
            values = metrics.numpy().tolist()
            if not all(map(math.isfinite, values)):
                bad = [(name, v) for name, v in zip(TrainMetrics._fields, values)
                       if not math.isfinite(v)]
                self._diverged(f"non-finite {', '.join(name for name, _ in bad)} at update "
                               f"{update:,} ({' '.join(f'{k}={v}' for k, v in bad)})")
        return TrainMetrics(*values, probes=dict(zip(self.probe_names, probes.numpy().tolist())))

    def update_obs_stats(self, states: np.ndarray) -> None:
        """Merge `states` into the network's observation statistics (`ObsNormalization`),
        one trainer at a time; a no-op without normalisation."""
        norm = self.obs_norm
        if norm is None or len(states) == 0:
            return
        with self._obs_norm_lock:
            mean, var, count = merge_batch(norm.mean.numpy(), norm.var.numpy(),
                                           float(norm.count.numpy()), states)
            norm.mean.assign(mean)
            norm.var.assign(var)
            norm.count.assign(count)

    def weight_norms(self) -> dict[str, float]:
        """||weights|| per layer now (kernel and bias together), by layer name."""
        sums = dict.fromkeys(self._layers, 0.0)
        for var in self.model.trainable_variables:
            sums[layer_of(var)] += float(np.sum(np.square(var.numpy(), dtype=np.float64)))
        return {k: math.sqrt(v) for k, v in sums.items()}

    def accumulator_stats(self) -> dict[str, float]:
        """The RMSProp accumulators v now: the smallest and the median over all weights and
        per layer (`rmsprop_v_min/L`, `rmsprop_v_median/L`). A weight whose v is tiny next to
        its gradient's square steps up to 10x lr (`ga3c.optimizer`). Reads the variables as
        they are, without pausing the trainers (a snapshot ~1 update wide); 31-41 ms for the
        Nature CNN (measured on a loaded machine), so once per log window, not per step."""
        per_layer: dict[str, list[np.ndarray]] = {}
        for var in self.model.trainable_variables:
            v = np.asarray(self.optimizer.velocity(var).numpy(), np.float32).ravel()
            per_layer.setdefault(layer_of(var), []).append(v)
        out = {}
        for layer, parts in [("all", [p for ps in per_layer.values() for p in ps]),
                             *sorted(per_layer.items())]:
            v = np.concatenate(parts)
            out[f"rmsprop_v_min/{layer}"] = float(v.min())
            out[f"rmsprop_v_median/{layer}"] = float(np.median(v))
        return out

    def _diverged(self, what: str):
        with self._version_lock:
            if self.nonfinite is None:  # the first report stays (others follow from it)
                self.nonfinite = what
        raise NonFiniteError(self.nonfinite)

    def paused(self, timeout: float = 30.0):
        """Context: no model update runs inside it (for checking and saving the weights)."""
        return self._updates.exclusive(timeout)

    def nonfinite_weights(self) -> str | None:
        """Which weights or optimizer variables hold NaN/inf (call it under `paused()`)."""
        bad, values, first = 0, 0, None
        for v in [*self.model.weights, *self.optimizer.variables]:
            x = np.asarray(v.numpy())
            if x.dtype.kind != "f":
                continue
            count = x.size - int(np.isfinite(x).sum())
            values += x.size
            if count:
                bad += count
                first = first or v.path
        if not bad:
            return None
        return (f"non-finite weights after update {self.version:,}: {bad:,} of {values:,} "
                f"values (first in {first})")

    def check_finite(self) -> None:
        """Raise NonFiniteError if a train step or the weights went non-finite (call it
        under `paused()`, right before writing the weights anywhere)."""
        if self.nonfinite is not None:
            raise NonFiniteError(self.nonfinite)
        what = self.nonfinite_weights()
        if what is not None:
            self._diverged(what)

    def trace_counts(self) -> tuple[int, int]:
        """How many times predict and train have been traced (constant after warm-up)."""
        return (self._predict.experimental_get_tracing_count(),
                self._train.experimental_get_tracing_count())

    def _build_in(self, dtype_policy: str):
        """The network built under Keras' `dtype_policy` (the global one is put back)."""
        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy(dtype_policy)
        try:
            return self._build()
        finally:
            keras.config.set_dtype_policy(policy)

    def save_policy(self, path: str, before_replace=lambda: None) -> None:
        """Write the model as a `.keras` file atomically (for `ga3c-eval` and other tools):
        to a temporary file, then `before_replace()` (which may raise to keep the previous
        file), then renamed over `path`. A failure leaves no temporary file behind. The file
        computes in float32 whatever the training did (bfloat16 keeps float32 variables, so
        the weights are the same): it then acts exactly as the network `ga3c-eval` restores
        from a checkpoint, on any machine."""
        tmp = path + ".tmp.keras"
        model = self.model
        if self.mixed_precision:
            if self._float32_twin is None:
                self._float32_twin = self._build_in("float32")
            self._float32_twin.set_weights(self.model.get_weights())
            model = self._float32_twin
        try:
            model.save(tmp)
            before_replace()
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
