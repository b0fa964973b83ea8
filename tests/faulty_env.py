"""CartPoles that go wrong after a few hundred steps, for fault-injection tests.

`--env=tests.faulty_env:FaultyCartPole-v0` raises in `step` (an exception in an environment
thread must stop the service with exit code 1); `--env=tests.faulty_env:NaNRewardCartPole-v0`
returns NaN rewards (the run must stop at the first non-finite loss, saving nothing after it).
"""

import gymnasium as gym
from gymnasium.envs.classic_control import CartPoleEnv


class FaultyCartPole(CartPoleEnv):
    steps_before_fault = 300

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._steps = 0

    def step(self, action):
        self._steps += 1
        if self._steps > self.steps_before_fault:
            raise RuntimeError("injected fault in env.step")
        return super().step(action)


class NaNRewardCartPole(CartPoleEnv):
    steps_before_nan = 400  # per env; a tiny run's 8 envs reach it after ~3,200 steps

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._steps = 0

    def step(self, action):
        self._steps += 1
        obs, reward, terminated, truncated, info = super().step(action)
        if self._steps > self.steps_before_nan:
            reward = float("nan")
        return obs, reward, terminated, truncated, info


if "FaultyCartPole-v0" not in gym.registry:
    gym.register("FaultyCartPole-v0", entry_point=FaultyCartPole, max_episode_steps=500)
if "NaNRewardCartPole-v0" not in gym.registry:
    gym.register("NaNRewardCartPole-v0", entry_point=NaNRewardCartPole, max_episode_steps=500)
