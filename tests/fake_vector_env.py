"""`ga3c.fakes.FakeVectorEnv` as a registered gymnasium vector env, for whole runs through
`ga3c-train` whose transitions a test checks against the slow reference (tests/test_ray.py):
`--env=tests.fake_vector_env:TaggedFakeVector-v0`.

Env e of a vector env plays episodes of LENGTHS[e % 5] steps; its observations are
[e, episode, t, seed of the vector env's last reset]: the seed tells apart the groups of a
Ray runner, whose envs play the same lengths, and a restarted runner's new episodes from
its old ones. The two actions change nothing. `raw` keeps each env's stream since it was
made, as `ga3c.returns.reference_transitions` takes it.
"""

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from ga3c.fakes import FakeVectorEnv

LENGTHS = (1, 2, 3, 5, 4)  # episode lengths, env by env


class TaggedFakeEnv(FakeVectorEnv):
    """FakeVectorEnv whose observations carry the seed of the last reset in column 3."""

    tag = -1.0

    def reset(self, seed=None, options=None):
        self.tag = float(seed)
        return super().reset(seed)

    def _obs(self) -> np.ndarray:
        obs = super()._obs()
        obs[:, 3] = self.tag
        return obs


class TaggedFakeVectorEnv(TaggedFakeEnv, gym.vector.VectorEnv):
    """What gymnasium's `make_vec` builds for TaggedFakeVector-v0 (its vector entry point)."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, **_kwargs) -> None:
        TaggedFakeEnv.__init__(self, [LENGTHS[e % len(LENGTHS)] for e in range(num_envs)])
        self.single_action_space = gym.spaces.Discrete(2)
        self.action_space = gym.spaces.MultiDiscrete([2] * num_envs)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space,
                                                              num_envs)


if "TaggedFakeVector-v0" not in gym.registry:
    gym.register("TaggedFakeVector-v0", entry_point=None,
                 vector_entry_point=TaggedFakeVectorEnv)
