"""A CartPole that raises after a few hundred steps: `--env=tests.faulty_env:FaultyCartPole-v0`.

Used to prove that an exception in an environment thread stops the service with exit code 1.
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


if "FaultyCartPole-v0" not in gym.registry:
    gym.register("FaultyCartPole-v0", entry_point=FaultyCartPole, max_episode_steps=500)
