"""Environment threads: step a vector of envs, act through the predictor, emit transitions.

One agent's loop::

    obs = env.reset()
    while running:
        reply = predictors.predict(obs)                # batched with other agents' states
        actions = sample(reply.logits)
        obs, rewards, terminated, truncated, _ = env.step(actions)
        builder.add(...)                                # n-step bookkeeping, see ga3c.returns
        every n_step steps: training_queue.put(builder.flush())
"""

from __future__ import annotations

import threading
from typing import Callable

import gymnasium as gym
import numpy as np

from ga3c.predictor import PredictorGroup, ReplySlot
from ga3c.returns import EpisodeTracker, NStepBuilder
from ga3c.threads import Failure, Worker, put_until_stopped


def sample_actions(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical sample per row of logits (Gumbel-max trick: no softmax needed)."""
    return np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)


class Agent(Worker):
    def __init__(self, index: int, make_env: Callable[[], gym.vector.VectorEnv], seed: int,
                 n_step: int, gamma: float, predictors: PredictorGroup, training_queue,
                 stats, stop: threading.Event, failure: Failure, clip_rewards: bool = False) -> None:
        super().__init__(f"agent-{index}", stop, failure)
        self._make_env = make_env
        self._seed = seed
        self._n_step, self._gamma = n_step, gamma
        self._predictors = predictors
        self._training_queue = training_queue
        self._stats = stats
        self._clip_rewards = clip_rewards
        # A stream of its own: the envs are seeded with `seed` too (gymnasium's np_random).
        self.rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])

    def work(self) -> None:
        env = self._make_env()
        try:
            self._loop(env)
        finally:
            env.close()

    def _loop(self, env: gym.vector.VectorEnv) -> None:
        space = env.single_observation_space
        builder = NStepBuilder(env.num_envs, self._n_step, self._gamma, space.shape,
                               np.float32 if np.issubdtype(space.dtype, np.floating) else space.dtype)
        tracker = EpisodeTracker(env.num_envs)
        slot = ReplySlot()
        obs, _ = env.reset(seed=self._seed)
        builder.reset(obs)
        while not self.stopping:
            reply = self._predictors.predict(obs, slot, self)
            if reply is None:
                return
            actions = sample_actions(reply.logits, self.rng)
            obs, rewards, terminated, truncated, _ = env.step(actions)
            # Training sees clipped rewards (if asked); the episode scores stay the game's.
            train_rewards = np.clip(rewards, -1.0, 1.0) if self._clip_rewards else rewards
            valid = builder.add(actions, train_rewards, terminated, truncated, obs, reply.version)
            returns, lengths = tracker.add(rewards, terminated, truncated, valid)
            self._stats.add_env_steps(int(np.count_nonzero(valid)), returns, lengths)
            if builder.full and not put_until_stopped(self._training_queue, builder.flush(), self):
                return
        if not self.stop_event.is_set() and builder.pending:
            # Retired while the service runs on: its partial segment still reaches training.
            put_until_stopped(self._training_queue, builder.flush(), self)
