"""Agents, predictors and trainers wired around two queues: the thread layout of a run.

No TensorFlow here: the model comes in as plain functions, so the same layout runs with a
model that costs nothing (the throughput benchmark's env-only ceiling, tests). No Ray either:
with `--runner=ray` the agents are `ga3c.ray_runner.RemoteRunner` threads, each driving a Ray
actor that steps the envs, imported only then (a Ray session must be up: `ray_session`).
"""

from __future__ import annotations

import functools
import threading
import time

from ga3c.agent import Agent
from ga3c.config import Config
from ga3c.envs import make_agent_envs
from ga3c.normalize import ReturnStats
from ga3c.predictor import PredictorGroup
from ga3c.stats import Stats
from ga3c.threads import Failure, Worker
from ga3c.trainer import TrainerGroup

JOIN_SECONDS = 10.0


class Pipeline:
    """Agents, predictors and trainers wired around two queues (no model of its own).

    `predict_fn(states) -> (logits, values)` and `train_fn(Transitions)` are the model's; the
    throughput benchmark passes trivial ones to measure the env-only ceiling of the same
    thread layout.
    """

    def __init__(self, config: Config, predict_fn, train_fn, version_fn, stats: Stats,
                 stop: threading.Event, failure: Failure, seed: int,
                 return_stats: ReturnStats | None = None) -> None:
        p = config.pipeline
        self.config = config
        self.predictors = PredictorGroup(predict_fn, version_fn, stats, p.max_predict_batch,
                                         p.prediction_queue_size, stop, failure)
        self.trainers = TrainerGroup(train_fn, version_fn, stats, p.min_train_batch,
                                     p.training_queue_size, stop, failure)
        self._stats, self._stop, self._failure, self._seed = stats, stop, failure, seed
        self._agents_made = 0
        # --normalize_reward: the statistics of discounted returns every agent's rewards are
        # scaled by (one for the run, as SB3's VecNormalize; the service's is checkpointed).
        self.return_stats = None
        if config.env.normalize_reward:
            self.return_stats = return_stats if return_stats is not None else ReturnStats()
        self.agents: list[Worker] = []
        self.watches: list[Worker] = []  # threads that only watch (the Ray cluster's GCS)

    def _new_agent(self) -> Worker:
        """Agent (or Ray runner) i steps envs seeded seed + i * envs_per_agent ... (distinct
        across agents)."""
        config, env, i = self.config, self.config.env, self._agents_made
        self._agents_made += 1
        per_agent = env.envs_per_agent
        if config.pipeline.runner == "ray":
            from ga3c.ray_runner import RemoteRunner

            return RemoteRunner(i, functools.partial(make_agent_envs, env.env_id, env=env),
                                per_agent, self._seed + i * per_agent, config.algo.n_step,
                                config.algo.gamma, self.predictors, self.trainers.queue,
                                self._stats, self._stop, self._failure,
                                clip_rewards=env.clip_rewards, episodic_life=env.episodic_life,
                                groups=config.pipeline.runner_groups,
                                return_stats=self.return_stats)
        return Agent(i, lambda: make_agent_envs(env.env_id, per_agent, env),
                     self._seed + i * per_agent, config.algo.n_step, config.algo.gamma,
                     self.predictors, self.trainers.queue, self._stats, self._stop,
                     self._failure, clip_rewards=env.clip_rewards,
                     episodic_life=env.episodic_life, return_stats=self.return_stats)

    def start(self) -> None:
        """Consumers before producers: predictors, trainers, then agents."""
        p = self.config.pipeline
        self.predictors.start(p.num_predictors)
        self.trainers.start(p.num_trainers)
        if p.runner == "ray":
            from ga3c.ray_runner import ClusterWatch

            self.watches.append(ClusterWatch(self._stop, self._failure))
            self.watches[-1].start()
        for _ in range(p.num_runners if p.runner == "ray" else p.num_agents):
            self.add_agent()

    def add_agent(self) -> None:
        self.agents = [a for a in self.agents if a.is_alive()]  # forget retired ones
        agent = self._new_agent()
        self.agents.append(agent)
        agent.start()

    def retire_agent(self) -> None:
        """The newest agent finishes its step, sends its partial segment, closes its envs (a
        Ray runner: its steps in flight and partial segments, then its actor goes)."""
        active = [a for a in self.agents if not a.retire.is_set()]
        if len(active) > 1:
            active[-1].retire.set()

    def settled(self) -> bool:
        """Every working agent has started (made its envs; a Ray runner: its actor has
        answered), so a rate measured now is this layout's (see `ga3c.autotune`)."""
        return all(a.started.is_set() for a in self.agents if not a.retire.is_set())

    def counts(self) -> dict[str, int]:
        """Threads currently working (not retiring), per kind ("agents": the Ray runners
        with --runner=ray, which the autotuner moves as it moves agents)."""
        return {"agents": sum(not a.retire.is_set() for a in self.agents),
                "predictors": len(self.predictors.active()),
                "trainers": len(self.trainers.active())}

    def resize(self, knob: str, delta: int) -> None:
        """One more (+1) or one fewer (-1) agent, predictor or trainer."""
        if knob == "agents":
            self.add_agent() if delta > 0 else self.retire_agent()
            return
        pool = {"predictors": self.predictors, "trainers": self.trainers}[knob]
        pool.add_thread() if delta > 0 else pool.retire_thread()

    def join(self, seconds: float = JOIN_SECONDS) -> list[str]:
        """Wait (bounded) for every thread after the stop event is set; names of stragglers."""
        deadline = time.monotonic() + seconds
        threads = [*self.agents, *self.predictors.threads, *self.trainers.threads,
                   *self.watches]
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in threads if t.is_alive()]

    def queue_depths(self) -> dict[str, int]:
        return {"predict": self.predictors.queue.qsize(), "train": self.trainers.queue.qsize()}
