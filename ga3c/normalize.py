"""Running statistics for control tasks (pure numpy, no TensorFlow).

`merge` is the parallel (Chan et al.) update of a mean and variance: the statistics of two
sets combined from each set's count, mean and variance, so a batch updates the running
statistics at once and the result equals numpy's mean/var over all the data seen (the
population variance, ddof=0). Observation normalisation keeps its statistics as variables of
the network (`ga3c.network.ObsNormalization`), so they are checkpointed and applied by the
same layer in training, `ga3c-eval` and `ga3c.load_policy`. Reward scaling (SB3's
VecNormalize) keeps one `ReturnStats` for the whole run, shared by every agent's
`RewardScaler` (each tracks its own envs' discounted returns) and saved in the checkpoint.
"""

from __future__ import annotations

import threading

import numpy as np

EPSILON = 1e-8
CLIP = 10.0  # normalised observations and scaled rewards are clipped to +-CLIP (as SB3)


def merge(mean, var, count, batch_mean, batch_var, batch_count):
    """(mean, var, count) of the union of a set with statistics (mean, var, count) and a
    batch with (batch_mean, batch_var, batch_count)."""
    total = count + batch_count
    if total == 0:
        return mean, var, count
    delta = batch_mean - mean
    new_mean = mean + delta * (batch_count / total)
    m2 = var * count + batch_var * batch_count + np.square(delta) * (count * batch_count / total)
    return new_mean, m2 / total, total


def merge_batch(mean, var, count, batch: np.ndarray):
    """The statistics after adding `batch` (rows along axis 0), in float64."""
    batch = np.asarray(batch, np.float64)
    if len(batch) == 0:
        return mean, var, count
    return merge(np.asarray(mean, np.float64), np.asarray(var, np.float64), float(count),
                 batch.mean(axis=0), batch.var(axis=0), float(len(batch)))


class RunningMeanStd:
    """Mean and variance of everything `update` has seen (count starts at 0: var 1, mean 0
    are used until the first batch)."""

    def __init__(self, shape=()) -> None:
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 0.0

    def update(self, batch: np.ndarray) -> None:
        if self.count == 0:
            batch = np.asarray(batch, np.float64)
            if len(batch):
                self.mean, self.var, self.count = batch.mean(0), batch.var(0), float(len(batch))
            return
        self.mean, self.var, self.count = merge_batch(self.mean, self.var, self.count, batch)


class ReturnStats(RunningMeanStd):
    """The run's statistics of discounted returns: updated by every agent's thread (a lock),
    saved and restored with the checkpoint as [mean, var, count]."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def add(self, returns: np.ndarray) -> float:
        """Add a batch of returns; the variance after it."""
        with self._lock:
            self.update(returns)
            return float(self.var)

    def state(self) -> np.ndarray:
        with self._lock:
            return np.array([self.mean, self.var, self.count], np.float64)

    def set_state(self, state) -> None:
        mean, var, count = (float(x) for x in state)
        with self._lock:
            self.mean, self.var, self.count = np.float64(mean), np.float64(var), count


class RewardScaler:
    """Training rewards divided by the running std of a discounted return: for each of this
    vector's envs ret = gamma * ret + r (reset where an episode ends), the std over every ret
    in `stats` (the run's, shared with the other agents'; a new one if not given); the scaled
    reward is clipped to +-CLIP. Reported scores stay the env's."""

    def __init__(self, num_envs: int, gamma: float, stats: ReturnStats | None = None) -> None:
        self.gamma = float(gamma)
        self.returns = np.zeros(num_envs, np.float64)
        self.stats = stats if stats is not None else ReturnStats()

    def scale(self, rewards: np.ndarray, done: np.ndarray, ids=None) -> np.ndarray:
        ids = slice(None) if ids is None else np.asarray(ids)
        ret = self.returns[ids] * self.gamma + rewards
        var = self.stats.add(ret)
        self.returns[ids] = np.where(done, 0.0, ret)
        scaled = rewards / np.sqrt(var + EPSILON)
        return np.clip(scaled, -CLIP, CLIP).astype(np.float32)
