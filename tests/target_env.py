"""Target: a small continuous-control check that needs the observation.

Each step shows a target t drawn uniformly from [-1, 1] (the observation, shape (1,)); the
action a is a Box(-1, 1, (1,)) and the reward is -|a - t| (the env clips a to the bounds
itself, as MuJoCo's do not: ga3c must send actions inside them, and `sent` records what it
was sent). An episode is `LENGTH` steps, a new target each step. A policy blind to the
observation can do no better than a = 0 every step (the median of t), whose expected
return is LENGTH * E|t| = LENGTH / 2 = -5.0 for 10 steps; one that follows the target
scores near 0.

Also registers envs whose spaces ga3c refuses (MultiDiscrete actions, Dict observations),
for the refusal tests. Ids: `tests.target_env:Target-v0`, `...:MultiDiscreteTarget-v0`,
`...:DictObsTarget-v0`.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

LENGTH = 10
BLIND_BEST = -LENGTH * 0.5  # a = 0 every step: E|t| = 1/2 for t ~ U[-1, 1]


class Target(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.sent: list[np.ndarray] = []  # every action received, as received

    def _new_target(self) -> np.ndarray:
        self._target = np.float32(self.np_random.uniform(-1.0, 1.0))
        return np.array([self._target], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._new_target(), {}

    def step(self, action):
        action = np.asarray(action, np.float32)
        self.sent.append(action.copy())
        if not self.action_space.contains(action):
            raise ValueError(f"action {action} outside the bounds {self.action_space}")
        reward = -abs(float(action[0]) - float(self._target))
        self._t += 1
        return self._new_target(), reward, self._t >= LENGTH, False, {}


class MultiDiscreteTarget(Target):
    def __init__(self) -> None:
        super().__init__()
        self.action_space = gym.spaces.MultiDiscrete([3, 3])


class DictObsTarget(Target):
    def __init__(self) -> None:
        super().__init__()
        self.observation_space = gym.spaces.Dict({"target": gym.spaces.Box(-1, 1, (1,))})


def blind_policy_score(episodes: int = 20_000, seed: int = 0) -> float:
    """Monte-Carlo return of the best blind policy (a = 0), to check BLIND_BEST."""
    t = np.random.default_rng(seed).uniform(-1.0, 1.0, (episodes, LENGTH))
    return float(-np.abs(t).sum(axis=1).mean())


for _name, _cls in (("Target-v0", Target), ("MultiDiscreteTarget-v0", MultiDiscreteTarget),
                    ("DictObsTarget-v0", DictObsTarget)):
    if _name not in gym.registry:
        gym.register(_name, entry_point=_cls)
