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

import numpy as np

from ga3c.envs import LockStepEnvs
from ga3c.predictor import PredictorGroup, ReplySlot
from ga3c.returns import EpisodeTracker, NStepBuilder
from ga3c.threads import Failure, Worker, put_until_stopped


def sample_actions(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical sample per row of logits (Gumbel-max trick: no softmax needed)."""
    return np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)


class LifeCounter:
    """Episodic life: which envs lost a life this step (from `info["lives"]`, as ale-py and
    gymnasium's ALE envs report it). The game goes on; only training sees an episode end."""

    def __init__(self, num_envs: int) -> None:
        self._lives = np.zeros(num_envs, dtype=np.int64)

    @staticmethod
    def _of(info: dict) -> np.ndarray:
        if "lives" not in info:
            raise ValueError("episodic_life needs an env that reports info['lives'] (Atari)")
        return np.asarray(info["lives"])

    def reset(self, ids: np.ndarray, info: dict) -> None:
        self._lives[ids] = self._of(info)

    def lost(self, ids: np.ndarray, info: dict) -> np.ndarray:
        lives = self._of(info)
        lost = lives < self._lives[ids]  # a reset (lives back up) is no loss
        self._lives[ids] = lives
        return lost


class Agent(Worker):
    def __init__(self, index: int, make_envs: Callable[[], LockStepEnvs], seed: int,
                 n_step: int, gamma: float, predictors: PredictorGroup, training_queue,
                 stats, stop: threading.Event, failure: Failure, clip_rewards: bool = False,
                 episodic_life: bool = False) -> None:
        super().__init__(f"agent-{index}", stop, failure)
        self._make_envs = make_envs
        self._seed = seed
        self._n_step, self._gamma = n_step, gamma
        self._predictors = predictors
        self._training_queue = training_queue
        self._stats = stats
        self._clip_rewards = clip_rewards
        self._episodic_life = episodic_life
        # A stream of its own: the envs are seeded with `seed` too (gymnasium's np_random).
        self.rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])

    def work(self) -> None:
        envs = self._make_envs()
        if not isinstance(envs, LockStepEnvs):
            envs = LockStepEnvs(envs)
        try:
            self._loop(envs)
        finally:
            envs.close()

    def _loop(self, envs: LockStepEnvs) -> None:
        space = envs.single_observation_space
        E = envs.num_envs
        builder = NStepBuilder(E, self._n_step, self._gamma, space.shape,
                               np.float32 if np.issubdtype(space.dtype, np.floating) else space.dtype)
        tracker = EpisodeTracker(E)
        lives = LifeCounter(E) if self._episodic_life else None
        started = np.zeros(E, dtype=bool)  # has the env's first (reset) observation arrived?
        actions = np.zeros(E, dtype=np.int64)  # last action sent to each env ...
        versions = np.zeros(E, dtype=np.int64)  # ... and the model version that chose it
        slot = ReplySlot()
        ids, obs, info = envs.reset(self._seed)
        while True:
            fresh = ~started[ids]
            if fresh.any():  # first observations: no step to record
                builder.reset(obs[fresh], ids[fresh])
                if lives is not None:
                    lives.reset(ids[fresh], {"lives": np.asarray(info["lives"])[fresh]})
                started[ids[fresh]] = True
            if self.stopping:
                break
            reply = self._predictors.predict(obs, slot, self)
            if reply is None:
                return
            actions[ids] = sample_actions(reply.logits, self.rng)
            versions[ids] = reply.version
            envs.send(actions[ids])
            ids, obs, rewards, terminated, truncated, info = envs.recv()
            stepped = started[ids]  # the others are first showings (reset at the loop's top)
            rows = slice(None) if stepped.all() else stepped
            train_rewards = rewards[rows]
            if self._clip_rewards:  # training sees clipped rewards; the scores stay the game's
                train_rewards = np.clip(train_rewards, -1.0, 1.0)
            life_lost = (None if lives is None else
                         lives.lost(ids[rows], {"lives": np.asarray(info["lives"])[rows]}))
            valid = builder.add(actions[ids[rows]], train_rewards, terminated[rows],
                                truncated[rows], obs[rows], versions[ids[rows]], life_lost,
                                ids[rows])
            returns, lengths = tracker.add(rewards[rows], terminated[rows], truncated[rows],
                                           valid, ids[rows])
            self._stats.add_env_steps(int(np.count_nonzero(valid)), returns, lengths)
            if builder.full and not put_until_stopped(
                    self._training_queue, builder.flush(builder.full_envs()), self):
                return
        if not self.stop_event.is_set() and builder.pending:
            # Retired while the service runs on: its partial segment still reaches training.
            put_until_stopped(self._training_queue, builder.flush(), self)
