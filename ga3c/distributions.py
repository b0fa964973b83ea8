"""Action heads on the agents' side (pure numpy, no TensorFlow): how the network's policy
output becomes an action, and which of it the env sees.

A predictor replies with one row of *policy parameters* per state:

* Discrete(n): the n logits of a categorical policy;
* Box(d,): the d means and then the d log-stds of a diagonal Gaussian (the log-std is one
  state-independent parameter vector, as in SB3 and CleanRL; the network broadcasts it).

`sample` draws the action training uses (and the loss scores); `to_env` is what the env
is sent. For a Box they differ: the env gets the sample clipped to the space's bounds, while
the transition keeps the unclipped sample, whose log-probability is the one the sampling
distribution gave (clipping first would score points the Gaussian almost never drew).
`mode` is the greedy action (argmax; the Gaussian's mean, clipped to the bounds).
"""

from __future__ import annotations

import dataclasses

import numpy as np


class CategoricalHead:
    continuous = False
    action_shape: tuple[int, ...] = ()
    action_dtype = np.dtype(np.int32)

    def __init__(self, num_actions: int) -> None:
        self.num_actions = int(num_actions)

    @property
    def param_size(self) -> int:
        return self.num_actions

    @staticmethod
    def sample(params: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One categorical sample per row of logits (Gumbel-max trick: no softmax needed)."""
        return np.argmax(params + rng.gumbel(size=params.shape), axis=1)

    @staticmethod
    def mode(params: np.ndarray) -> np.ndarray:
        return np.argmax(params, axis=1)

    @staticmethod
    def to_env(actions: np.ndarray) -> np.ndarray:
        return actions


@dataclasses.dataclass(frozen=True)
class GaussianHead:
    """Diagonal Gaussian over a Box(low, high) of shape (d,)."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    continuous = True
    action_dtype = np.dtype(np.float32)

    @property
    def num_actions(self) -> int:
        return len(self.low)

    @property
    def action_shape(self) -> tuple[int, ...]:
        return (len(self.low),)

    @property
    def param_size(self) -> int:
        return 2 * len(self.low)

    def split(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = len(self.low)
        return params[:, :d], params[:, d:]

    def sample(self, params: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        mean, log_std = self.split(params)
        return (mean + np.exp(log_std) * rng.standard_normal(mean.shape)).astype(np.float32)

    def mode(self, params: np.ndarray) -> np.ndarray:
        return self.to_env(self.split(params)[0])

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        return np.clip(actions, np.asarray(self.low, np.float32),
                       np.asarray(self.high, np.float32)).astype(np.float32)


def head_for(space) -> CategoricalHead | GaussianHead:
    """The head for a gymnasium action space (Discrete or a 1-D Box with finite bounds)."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        return CategoricalHead(int(space.n))
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return GaussianHead(tuple(float(x) for x in space.low),
                            tuple(float(x) for x in space.high))
    raise ValueError(f"no action head for {space}")
