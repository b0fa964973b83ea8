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
from typing import Callable, NamedTuple

import gymnasium as gym
import numpy as np

from ga3c.distributions import CategoricalHead, head_for
from ga3c.envs import LockStepEnvs
from ga3c.normalize import ReturnStats, RewardScaler
from ga3c.predictor import PredictorGroup, ReplySlot
from ga3c.returns import EpisodeTracker, NStepBuilder, Transitions
from ga3c.threads import Failure, Worker, put_until_stopped


def sample_actions(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical sample per row of logits (Gumbel-max trick: no softmax needed)."""
    return CategoricalHead.sample(logits, rng)


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


class StepResult(NamedTuple):
    """What one step of an `EnvStepper` produced."""

    obs: np.ndarray  # the observations now waiting for actions
    segment: Transitions | None  # the n-step transitions of the envs whose segment filled
    steps: int  # env steps that count (transitions: not the autoreset steps)
    returns: np.ndarray  # of the episodes that ended at this step
    lengths: np.ndarray


def deliver(result: StepResult, stats, training_queue, worker: Worker,
            source: str | None = None) -> bool:
    """A step's env steps and episodes into `stats` (counted as `source`'s too, a Ray
    runner's name), its full segments onto the training queue (an agent's or a Ray
    runner's); False if the worker was stopped meanwhile."""
    stats.add_env_steps(result.steps, result.returns, result.lengths, source)
    return result.segment is None or put_until_stopped(training_queue, result.segment, worker)


class Bookkeeper:
    """The n-step bookkeeping of one vector of envs stepped elsewhere: what an env step
    means for training (transitions, episodes, lives), apart from the stepping itself.

    `begin(ids, obs, info)` takes the first observations (of `envs.reset`); `act(actions,
    version)` records the actions chosen for the waiting envs (and the model version that
    chose them) and returns what to send to the envs; `observe(...)` takes what the envs'
    `recv()` returned and says what the step produced (full segments, finished episodes).
    `EnvStepper` joins it to envs in the same thread (an agent); a Ray runner's learner-side
    thread (`ga3c.ray_runner`) keeps one per env group whose envs step in another process:
    one implementation of the bookkeeping for both, so their transitions agree.
    """

    def __init__(self, num_envs: int, obs_shape, obs_dtype, n_step: int, gamma: float,
                 clip_rewards: bool = False, episodic_life: bool = False, head=None,
                 return_stats: ReturnStats | None = None) -> None:
        """`return_stats`: the run's (`ga3c.normalize.ReturnStats`) under --normalize_reward:
        training rewards are divided by the std of the discounted returns; None: not."""
        E = self.num_envs = num_envs
        # How actions are drawn and what the env is sent (`ga3c.distributions`); None: the
        # categorical head (its actions reach the env as drawn).
        self.head = head
        action_shape = () if head is None else head.action_shape
        action_dtype = np.int32 if head is None else head.action_dtype
        self._builder = NStepBuilder(
            E, n_step, gamma, obs_shape,
            np.float32 if np.issubdtype(obs_dtype, np.floating) else obs_dtype,
            action_shape, action_dtype)
        self._tracker = EpisodeTracker(E)
        self._lives = LifeCounter(E) if episodic_life else None
        self._clip_rewards = clip_rewards
        self._reward_scaler = (None if return_stats is None
                               else RewardScaler(E, gamma, return_stats))
        self._started = np.zeros(E, dtype=bool)  # has the env's first (reset) obs arrived?
        # last action drawn for each env (for a Box: the unclipped sample, what training
        # scores) ...
        self._actions = np.zeros((E, *action_shape),
                                 dtype=np.int64 if head is None else action_dtype)
        self._versions = np.zeros(E, dtype=np.int64)  # ... and the model version that chose it
        self._ids = np.arange(E)  # the envs whose observations wait for actions ...
        self.obs: np.ndarray | None = None  # ... and those observations

    @classmethod
    def of(cls, envs, *args, **kwargs) -> "Bookkeeper":
        """The bookkeeping for `envs` (a vector env: its num_envs, observation space and,
        where it has one, action space)."""
        space = envs.single_observation_space
        actions = getattr(envs, "single_action_space", None)
        if isinstance(actions, gym.spaces.Box) and "head" not in kwargs:
            kwargs["head"] = head_for(actions)
        return cls(envs.num_envs, space.shape, space.dtype, *args, **kwargs)

    def sample(self, params: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Actions drawn from the policy parameters a predictor replied."""
        return sample_actions(params, rng) if self.head is None else self.head.sample(params, rng)

    @property
    def held(self) -> int:
        """Transitions in segments not full yet (what a flush would return)."""
        return self._builder.held

    def begin(self, ids: np.ndarray, obs: np.ndarray, info: dict) -> None:
        """First observations (after reset, or an async env's first showing): no step to
        record, the envs' segments start there."""
        self._ids, self.obs = ids, obs
        fresh = ~self._started[ids]
        if fresh.any():
            self._builder.reset(obs[fresh], ids[fresh])
            if self._lives is not None:
                self._lives.reset(ids[fresh], {"lives": np.asarray(info["lives"])[fresh]})
            self._started[ids[fresh]] = True

    def act(self, actions: np.ndarray, version: int) -> np.ndarray:
        """Record one action per waiting env (in the order of the last observations);
        returns the actions to send to the envs (a Box's: clipped to its bounds; training
        keeps the sample as drawn)."""
        self._actions[self._ids] = actions
        self._versions[self._ids] = version
        sent = self._actions[self._ids]
        return sent if self.head is None else self.head.to_env(sent)

    def observe(self, ids: np.ndarray, obs: np.ndarray, rewards: np.ndarray,
                terminated: np.ndarray, truncated: np.ndarray, info: dict) -> StepResult:
        """What the envs returned for the actions sent (`recv()`'s six values)."""
        builder, started = self._builder, self._started
        stepped = started[ids]  # the others are first showings (see begin)
        rows = slice(None) if stepped.all() else stepped
        train_rewards = rewards[rows]
        if self._clip_rewards:  # training sees clipped rewards; the scores stay the game's
            train_rewards = np.clip(train_rewards, -1.0, 1.0)
        if self._reward_scaler is not None:  # divided by a running return std (training only)
            train_rewards = self._reward_scaler.scale(
                train_rewards, np.logical_or(terminated[rows], truncated[rows]), ids[rows])
        life_lost = (None if self._lives is None else
                     self._lives.lost(ids[rows], {"lives": np.asarray(info["lives"])[rows]}))
        valid = builder.add(self._actions[ids[rows]], train_rewards, terminated[rows],
                            truncated[rows], obs[rows], self._versions[ids[rows]], life_lost,
                            ids[rows])
        returns, lengths = self._tracker.add(rewards[rows], terminated[rows], truncated[rows],
                                             valid, ids[rows])
        segment = builder.flush(builder.full_envs()) if builder.full else None
        self.begin(ids, obs, info)
        return StepResult(obs, segment, int(np.count_nonzero(valid)), returns, lengths)

    def flush(self) -> Transitions | None:
        """Every env's partial segment (a retiring agent's last transitions); None if none."""
        return self._builder.flush() if self._builder.pending else None


class EnvStepper:
    """One vector of envs and its bookkeeping (`Bookkeeper`), stepped in one thread.

    `reset(seed)` returns the first observations; `step(actions, version)` applies one action
    per waiting env and returns the next observations with what the step produced.
    """

    def __init__(self, envs, n_step: int, gamma: float, clip_rewards: bool = False,
                 episodic_life: bool = False, return_stats: ReturnStats | None = None) -> None:
        self.envs = LockStepEnvs.of(envs)
        self.book = Bookkeeper.of(self.envs, n_step, gamma, clip_rewards, episodic_life,
                                  return_stats=return_stats)

    def reset(self, seed: int) -> np.ndarray:
        ids, obs, info = self.envs.reset(seed)
        self.book.begin(ids, obs, info)
        return obs

    def step(self, actions: np.ndarray, version: int) -> StepResult:
        self.envs.send(self.book.act(actions, version))
        return self.book.observe(*self.envs.recv())

    def flush(self) -> Transitions | None:
        return self.book.flush()

    def close(self) -> None:
        self.envs.close()


class Agent(Worker):
    def __init__(self, index: int, make_envs: Callable[[], LockStepEnvs], seed: int,
                 n_step: int, gamma: float, predictors: PredictorGroup, training_queue,
                 stats, stop: threading.Event, failure: Failure, clip_rewards: bool = False,
                 episodic_life: bool = False, return_stats: ReturnStats | None = None) -> None:
        super().__init__(f"agent-{index}", stop, failure)
        self._make_envs = make_envs
        self._seed = seed
        self._n_step, self._gamma = n_step, gamma
        self._predictors = predictors
        self._training_queue = training_queue
        self._stats = stats
        self._clip_rewards = clip_rewards
        self._episodic_life = episodic_life
        self._return_stats = return_stats
        # A stream of its own: the envs are seeded with `seed` too (gymnasium's np_random).
        self.rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        self.started = threading.Event()  # its envs are made and reset: it steps from now

    def work(self) -> None:
        envs = self._make_envs()
        try:
            self._loop(EnvStepper(envs, self._n_step, self._gamma, self._clip_rewards,
                                  self._episodic_life, self._return_stats))
        finally:
            envs.close()

    def _loop(self, stepper: EnvStepper) -> None:
        slot = ReplySlot()
        obs = stepper.reset(self._seed)
        self.started.set()
        while not self.stopping:
            reply = self._predictors.predict(obs, slot, self)
            if reply is None:
                return
            result = stepper.step(stepper.book.sample(reply.logits, self.rng), reply.version)
            obs = result.obs
            if not deliver(result, self._stats, self._training_queue, self):
                return
        partial = stepper.flush()
        if not self.stop_event.is_set() and partial is not None:
            # Retired while the service runs on: its partial segment still reaches training.
            put_until_stopped(self._training_queue, partial, self)
