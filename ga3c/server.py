"""Wires the components together and runs the service until a stop condition.

Start order is consumers before producers (predictors, trainers, then agents); stop order
is the reverse. The main thread watches the stop conditions, failures, logging and
checkpoints; it never blocks for longer than `POLL_SECONDS`.

Nothing non-finite is ever saved and a failed write never replaces a good checkpoint: a save
pauses the model updates, checks the weights (`Learner.check_finite`), writes the checkpoint
(TensorFlow writes its files first and the `checkpoint` state file that names the latest one
last, atomically), then `policy.keras` (temporary file, checked again, renamed). A divergence
or a failed write stops the run with one line on stderr and exit code 1; the latest
checkpoint is then still the last good one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import sys
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from ga3c.agent import Agent
from ga3c.autotune import Autotuner
from ga3c.config import Config
from ga3c.envs import EnvSpec, make_agent_envs
from ga3c.errors import (NonFiniteError, RunError, UserError, WriteError, first_line,
                         write_error_reason)
from ga3c.learner import Learner
from ga3c.predictor import PredictorGroup
from ga3c.stats import Stats, Window, read_recent_returns
from ga3c.threads import POLL_SECONDS, Failure
from ga3c.trainer import TrainerGroup

JOIN_SECONDS = 10.0


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


class Checkpointer:
    """tf.train.Checkpoint + CheckpointManager holding the model, optimizer and counters."""

    def __init__(self, learner: Learner, directory: str, keep: int) -> None:
        self.counters = tf.Variable(np.zeros(3, np.int64), name="counters")  # steps, eps, updates
        self.train_seconds = tf.Variable(0.0, dtype=tf.float64, name="train_seconds")
        self.checkpoint = tf.train.Checkpoint(model=learner.model, optimizer=learner.optimizer,
                                              counters=self.counters,
                                              train_seconds=self.train_seconds)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=keep)
        self._saved_counts: tuple[int, int] | None = None  # (env steps, updates) of the latest

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def restore_latest(self) -> dict:
        path = self.manager.latest_checkpoint
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot resume from it"
            raise UserError(f"cannot restore checkpoint {path}: {first_line(exc)} "
                             "(use a new --logdir, or move that checkpoint away)") from None
        steps, episodes, updates = (int(x) for x in self.counters.numpy())
        self._saved_counts = (steps, updates)
        return dict(env_steps=steps, episodes=episodes, updates=updates,
                    train_seconds=float(self.train_seconds.numpy()))

    def save(self, stats: Stats, learner: Learner) -> str:
        """Write a checkpoint numbered by the env-step count; its path. Nothing is written
        when the latest checkpoint already holds these counts (e.g. a stop before any
        training). A failed write raises WriteError after removing what it left."""
        number, updates = stats.env_steps, learner.version
        if self.latest and self._saved_counts == (number, updates):
            return self.latest
        self.counters.assign([number, stats.episodes, updates])
        self.train_seconds.assign(stats.train_seconds())
        try:
            path = self.manager.save(checkpoint_number=number)
        except Exception as exc:  # noqa: BLE001 - OSError, tf.errors.*: the disk said no
            prefix = os.path.join(self.manager.directory, f"ckpt-{number}")
            self._remove_unfinished(prefix)
            raise WriteError(f"cannot write checkpoint {prefix}: {write_error_reason(exc)}; "
                             f"{self.latest_note()}") from exc
        self._saved_counts = (number, updates)
        return path

    def on_disk_latest(self) -> str | None:
        """The latest checkpoint as the state file names it (what a resume would restore)."""
        try:
            state = tf.train.get_checkpoint_state(self.manager.directory)
        except Exception:  # noqa: BLE001
            return None
        return state.model_checkpoint_path if state else None

    def latest_note(self) -> str:
        latest = self.on_disk_latest()
        return f"the latest checkpoint is {latest}" if latest else "no checkpoint was written"

    def _remove_unfinished(self, prefix: str) -> None:
        """Remove the files of a checkpoint whose write failed, unless the state file already
        names it (the data were complete; only the tidy-up after it failed)."""
        if self.on_disk_latest() == prefix:
            return
        left = [glob.escape(prefix) + ".*", glob.escape(prefix) + "_temp*",
                os.path.join(glob.escape(self.manager.directory), "checkpoint.tmp*")]
        for path in [p for pattern in left for p in glob.glob(pattern)]:
            with contextlib.suppress(OSError):
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def keep_aside(path: str) -> None:
    """Rename an existing file `name.ext` to the first free `name.<n>.ext` (never delete it)."""
    if not os.path.exists(path):
        return
    stem, ext = os.path.splitext(path)
    n = 1
    while os.path.exists(f"{stem}.{n}{ext}"):
        n += 1
    os.replace(path, f"{stem}.{n}{ext}")


def write_config_json(logdir: str, config: Config) -> None:
    """Write `config.json`. An earlier one that differs in anything but the `run` section
    (stop conditions, intervals, logdir) is kept as config.<n>.json."""
    path = os.path.join(logdir, "config.json")
    text = config.to_json() + "\n"
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        new = config.to_dict()
        if old is None or {k: v for k, v in old.items() if k != "run"} != json.loads(
                json.dumps({k: v for k, v in new.items() if k != "run"})):
            keep_aside(path)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Pipeline:
    """Agents, predictors and trainers wired around two queues (no model of its own).

    `predict_fn(states) -> (logits, values)` and `train_fn(Transitions)` are the model's; the
    throughput benchmark passes trivial ones to measure the env-only ceiling of the same
    thread layout.
    """

    def __init__(self, config: Config, predict_fn, train_fn, version_fn, stats: Stats,
                 stop: threading.Event, failure: Failure, seed: int) -> None:
        p = config.pipeline
        self.config = config
        self.predictors = PredictorGroup(predict_fn, version_fn, stats, p.max_predict_batch,
                                         p.prediction_queue_size, stop, failure)
        self.trainers = TrainerGroup(train_fn, version_fn, stats, p.min_train_batch,
                                     p.training_queue_size, stop, failure)
        self._stats, self._stop, self._failure, self._seed = stats, stop, failure, seed
        self._agents_made = 0
        self.agents: list[Agent] = []

    def _new_agent(self) -> Agent:
        """Agent i steps envs seeded seed + i * envs_per_agent ... (distinct across agents)."""
        config, env, i = self.config, self.config.env, self._agents_made
        self._agents_made += 1
        per_agent = env.envs_per_agent
        return Agent(i, lambda: make_agent_envs(env.env_id, per_agent, env),
                     self._seed + i * per_agent, config.algo.n_step, config.algo.gamma,
                     self.predictors, self.trainers.queue, self._stats, self._stop,
                     self._failure, clip_rewards=env.clip_rewards,
                     episodic_life=env.episodic_life)

    def start(self) -> None:
        """Consumers before producers: predictors, trainers, then agents."""
        p = self.config.pipeline
        self.predictors.start(p.num_predictors)
        self.trainers.start(p.num_trainers)
        for _ in range(p.num_agents):
            self.add_agent()

    def add_agent(self) -> None:
        self.agents = [a for a in self.agents if a.is_alive()]  # forget retired ones
        agent = self._new_agent()
        self.agents.append(agent)
        agent.start()

    def retire_agent(self) -> None:
        """The newest agent finishes its step, sends its partial segment, closes its envs."""
        active = [a for a in self.agents if not a.retire.is_set()]
        if len(active) > 1:
            active[-1].retire.set()

    def counts(self) -> dict[str, int]:
        """Threads currently working (not retiring), per kind."""
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
        threads = [*self.agents, *self.predictors.threads, *self.trainers.threads]
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in threads if t.is_alive()]

    def queue_depths(self) -> dict[str, int]:
        return {"predict": self.predictors.queue.qsize(), "train": self.trainers.queue.qsize()}


class Server:
    def __init__(self, config: Config, env_spec: EnvSpec,
                 stop: threading.Event | None = None) -> None:
        self.config = config
        self.env_spec = env_spec
        self.stop = stop or threading.Event()
        self.stop_reason = ""
        self.failure = Failure()
        self.logdir = config.run.logdir
        self.policy_path = os.path.join(self.logdir, "policy.keras")

    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()

    # -- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Everything that can fail on bad input, before anything in the logdir is written."""
        cfg = self.config
        keras.utils.set_random_seed(cfg.run.seed)
        spec = self.env_spec
        self.learner = Learner(spec.obs_shape, spec.obs_dtype, spec.num_actions, cfg.network,
                               cfg.algo, xla=cfg.run.xla,
                               mixed_precision=cfg.run.mixed_precision)
        ckdir = os.path.join(self.logdir, "checkpoints")
        try:
            self.checkpointer = Checkpointer(self.learner, ckdir, cfg.run.keep_checkpoints)
        except Exception as exc:  # noqa: BLE001 - e.g. an empty or garbled state file
            raise UserError(f"cannot read the checkpoint state in {ckdir}: "
                             f"{first_line(exc)}") from None
        if self.checkpointer.latest is None and os.path.isdir(ckdir) and any(
                f.endswith(".index") for f in os.listdir(ckdir)):
            raise UserError(f"{ckdir} holds checkpoints but its 'checkpoint' state file is "
                             "missing or unreadable; restore it, or use a new --logdir")
        self.resumed: dict | None = None
        if self.checkpointer.latest:
            if not cfg.run.resume:
                raise UserError(f"{self.logdir} already holds checkpoints and --resume=false: "
                                 "use a new --logdir, or --resume to continue that run")
            self.resumed = self.checkpointer.restore_latest()
            self.learner.set_version(self.resumed["updates"])
            # The optimizer's learning rate is a checkpointed variable: the flag wins.
            self.learner.optimizer.learning_rate.assign(cfg.algo.learning_rate)

    # -- the run -------------------------------------------------------------------------
    def run(self) -> int:
        """Train until a stop condition; returns the process exit code (0 ok, 1 failure)."""
        cfg = self.config
        os.makedirs(self.logdir, exist_ok=True)
        write_config_json(self.logdir, cfg)
        r = self.resumed or {}
        csv_path = os.path.join(self.logdir, "episodes.csv")
        if self.resumed:
            recent = read_recent_returns(csv_path, max_env_steps=r["env_steps"])
        else:
            keep_aside(csv_path)  # a run that never checkpointed: its log is kept, not mixed in
            recent = None
        stats = Stats(csv_path, r.get("env_steps", 0), r.get("episodes", 0),
                      r.get("train_seconds", 0.0), recent)
        self.stats = stats
        if self.resumed:
            log(f"resumed from {self.checkpointer.latest}: {r['env_steps']:,} env steps, "
                f"{r['episodes']:,} episodes, {r['updates']:,} updates")
        writer = tf.summary.create_file_writer(os.path.join(self.logdir, "tb"))
        p = cfg.pipeline
        seed = cfg.run.seed * 1_000_003 + r.get("env_steps", 0) % 1_000_003
        self.autotuner = None
        self.pipeline = Pipeline(cfg, self.learner.predict, self.learner.train,
                                 lambda: self.learner.version, stats, self.stop, self.failure,
                                 seed)
        log(f"training {cfg.env.env_id} with {p.num_agents} agents x {cfg.env.envs_per_agent} "
            f"envs, {p.num_predictors} predictor(s), {p.num_trainers} trainer(s); "
            f"logdir {self.logdir}")
        if not self.stop.is_set():  # a signal may have come while the logdir was prepared
            self.pipeline.start()
        stats.window()  # rates start now
        if p.autotune and not self.stop.is_set():
            self.autotuner = Autotuner(
                self.pipeline, lambda: (stats.env_steps, stats.samples_trained),
                {"agents": (1, p.max_agents), "predictors": (1, p.max_predictors),
                 "trainers": (1, p.max_trainers)},
                p.autotune_window_seconds, p.autotune_margin, log, self.stop, self.failure)
            self.autotuner.start()
        try:
            self._watch(stats, writer)
        except BaseException as exc:  # noqa: BLE001 - reported like any worker's failure
            self.failure.record(threading.current_thread().name, exc)
        finally:
            self.request_stop("stopping")
            if self.autotuner is not None:  # first: it may still be adding or retiring threads
                self.autotuner.join(JOIN_SECONDS)
            stuck = self.pipeline.join()
            if self.autotuner is not None:
                trial = self.autotuner.trial
                log("autotune: final layout " + " ".join(
                    f"{k}={v}" for k, v in self.pipeline.counts().items())
                    + (f" (stopped during the trial {trial})" if trial else ""))
            for close, what in ((stats.close, "episodes.csv"), (writer.close, "tb/")):
                try:  # a full disk can fail these too: reported, after what failed first
                    close()
                except Exception as exc:  # noqa: BLE001
                    self.failure.record(threading.current_thread().name, WriteError(
                        f"cannot write {os.path.join(self.logdir, what)}: "
                        f"{write_error_reason(exc)}"))
        if self.failure:
            return self._report_failure()
        if stuck:
            print(f"ga3c: threads did not stop within {JOIN_SECONDS:.0f}s: {stuck}", file=sys.stderr)
        try:
            path = self._save()
        except (RunError, TimeoutError) as exc:
            self.failure.record(threading.current_thread().name, exc)
            return self._report_failure()
        score = stats.mean_score()
        log(f"stopped ({self.stop_reason}) after {stats.env_steps:,} env steps, "
            f"{stats.episodes:,} episodes, {stats.train_seconds():.1f}s of training; "
            f"score100 {'n/a' if score is None else f'{score:.1f}'}; checkpoint {path}")
        return 0

    def _watch(self, stats: Stats, writer) -> None:
        run = self.config.run
        t0 = time.monotonic()
        next_log = t0 + run.log_every_seconds
        next_ckpt = t0 + run.checkpoint_every_seconds
        while not self.stop.wait(POLL_SECONDS):
            now = time.monotonic()
            if self.config.algo.lr_schedule != "constant":
                self.learner.optimizer.learning_rate.assign(
                    self.config.learning_rate_at(stats.env_steps, now - t0))
            if run.max_env_steps and stats.env_steps >= run.max_env_steps:
                self.request_stop(f"reached --max_env_steps={run.max_env_steps:,}")
            elif run.max_seconds and now - t0 >= run.max_seconds:
                self.request_stop(f"reached --max_seconds={run.max_seconds:g}")
            elif run.target_score is not None and stats.num_recent() >= 100:
                score = stats.mean_score()
                if score is not None and score >= run.target_score:
                    self.request_stop(f"solved: mean of last 100 episodes {score:.1f} "
                                      f">= --target_score={run.target_score:g}")
            if now >= next_log:
                next_log = now + run.log_every_seconds
                self._report(stats.window(), writer)
            if now >= next_ckpt and not self.stop.is_set():
                next_ckpt = now + run.checkpoint_every_seconds
                self._save()

    def _report_failure(self) -> int:
        """Exit code 1, after one line for a divergence or a failed write (RunError), or the
        failed thread's traceback for anything else (a bug, a broken env)."""
        exc = self.failure.exception
        # NaN weights also make envs or predictors fail (NaN logits): the cause is what counts.
        diverged = self.learner.nonfinite or self.learner.nonfinite_weights()
        if diverged or isinstance(exc, RunError):
            if diverged:
                note = self.checkpointer.latest_note()
                message = f"{diverged}: stopped without saving it; {note}"
                if self.checkpointer.on_disk_latest():
                    message += (" (the same command, e.g. with a lower --learning_rate, "
                                "resumes from it)")
            else:
                message = str(exc)
            print(f"ga3c: error: {message}", file=sys.stderr, flush=True)
        else:
            print(f"ga3c: thread {self.failure.thread_name} failed:\n{self.failure.traceback}",
                  file=sys.stderr, flush=True)
        return 1

    def _save(self) -> str:
        """A checkpoint (model, optimizer, counters) and policy.keras; the checkpoint's path.

        NonFiniteError, and nothing written, if a weight is not finite; WriteError if a
        write fails. Model updates wait while the weights are checked and the checkpoint is
        written (tens of ms), so it holds the version that was checked. policy.keras is
        written after, with updates running, and renamed into place only if the weights are
        still finite then: a non-finite weight stays non-finite (every later step computes
        NaN from it), so finite after the write means finite during it.
        """
        with self.learner.paused():
            self.learner.check_finite()
            latest = self.checkpointer.latest
            path = self.checkpointer.save(self.stats, self.learner)
        if path != latest or not os.path.exists(self.policy_path):
            try:
                self.learner.save_policy(self.policy_path,
                                         before_replace=self.learner.check_finite)
            except NonFiniteError:
                raise
            except Exception as exc:  # noqa: BLE001 - OSError, h5py/zip errors
                raise WriteError(
                    f"cannot write {self.policy_path}: {write_error_reason(exc)}; the "
                    f"previous one is unchanged and {self.checkpointer.latest_note()}") from exc
        return path

    def _report(self, w: Window, writer) -> None:
        depths = self.pipeline.queue_depths()
        log(w.console_line(depths))
        scalars = {
            "rates/env_steps_per_s": w.env_steps_per_s,
            "rates/predictions_per_s": w.predictions_per_s,
            "rates/trainings_per_s": w.trainings_per_s,
            "rates/samples_trained_per_s": w.samples_per_s,
            "pipeline/mean_predict_batch": w.mean_predict_batch,
            "pipeline/mean_train_batch": w.mean_train_batch,
            "queues/predict": depths["predict"],
            "queues/train": depths["train"],
            "progress/episodes": w.total_episodes,
            "progress/train_seconds": self.stats.train_seconds(),
            "system/rss_mib": w.rss_mib,
            "loss/learning_rate": float(self.learner.optimizer.learning_rate.numpy()),
        }
        for knob, count in self.pipeline.counts().items():
            scalars[f"pipeline/{knob}"] = count
        if w.mean_score is not None:
            scalars["score/mean_last_100"] = w.mean_score
        if w.policy_lag_mean is not None:
            scalars["policy_lag/mean"] = w.policy_lag_mean
            scalars["policy_lag/p95"] = w.policy_lag_p95
        for k, v in w.losses.items():
            scalars[f"loss/{k}"] = v
        with writer.as_default(step=w.total_env_steps):
            for k, v in scalars.items():
                tf.summary.scalar(k, v)
