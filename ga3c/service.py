"""The training service: its parts built by one factory, and its life cycle.

    service = build_service(config, env_spec)   # checks and restores; writes nothing
    result = service.run()                      # start(), watch() until a stop condition, stop()

`build_service` makes the parts (learner, checkpointer, stats, pipeline, autotuner) and hands
them to `Service`; everything that can fail on bad input fails there, as a UserError, before
anything in the logdir is written. `start()` prepares the logdir and starts the threads,
consumers before producers (predictors, trainers, then agents); `stop()` stops them in the
reverse order, saves (after a thread's failure only if it left the model intact,
`RunError.keeps_model`: the Ray cluster lost) and returns a `RunResult`. `run()` never prints
an error or picks an exit code: `ga3c.cli` does. The watching thread never blocks for longer than `POLL_SECONDS`.

Nothing non-finite is ever saved and a failed write never replaces a good checkpoint: a save
pauses the model updates, checks the weights (`Learner.check_finite`), writes the checkpoint
(`ga3c.checkpoints`), then `policy.keras` (temporary file, checked again, renamed). A
divergence or a failed write ends the run with a one-line error in the result; the latest
checkpoint is then still the last good one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time

import keras

from ga3c.autotune import Autotuner
from ga3c.checkpoints import Checkpointer
from ga3c.config import Config
from ga3c.envs import EnvSpec
from ga3c.errors import (LogWriteError, NonFiniteError, RunError, UserError, WriteError,
                         first_line, write_error_reason)
from ga3c.learner import Learner
from ga3c.normalize import ReturnStats
from ga3c.pipeline import JOIN_SECONDS, Pipeline
from ga3c.rundir import RunDir, keep_aside
from ga3c.stats import Stats, Window, collapse_warning, read_recent_returns
from ga3c.summaries import ScalarWriter
from ga3c.threads import POLL_SECONDS, Failure, log


@dataclasses.dataclass
class RunResult:
    """How a run ended. `error`: one line (a divergence, a failed write); `traceback`: a
    thread's failure (a bug, a broken env). Neither: it stopped cleanly (`stop_reason`)."""

    stop_reason: str
    env_steps: int
    episodes: int
    train_seconds: float
    score: float | None  # mean return of the last 100 episodes
    checkpoint: str | None  # the latest checkpoint on disk
    error: str | None = None
    traceback: str | None = None
    failed_thread: str | None = None
    stuck_threads: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.traceback is None


def build_service(config: Config, env_spec: EnvSpec, stop: threading.Event | None = None
                  ) -> "Service":
    """The service's parts, checked and (with --resume) restored; nothing is written yet.
    UserError for a logdir it cannot use."""
    keras.utils.set_random_seed(config.run.seed)
    run_dir = RunDir(config.run.logdir)
    learner = Learner.for_run(config, env_spec)
    return_stats = ReturnStats() if config.env.normalize_reward else None
    ckdir = run_dir.checkpoints
    try:
        checkpointer = Checkpointer(learner, ckdir, config.run.keep_checkpoints, return_stats)
    except Exception as exc:  # noqa: BLE001 - e.g. an empty or garbled state file
        raise UserError(f"cannot read the checkpoint state in {ckdir}: "
                        f"{first_line(exc)}") from None
    if checkpointer.latest is None and os.path.isdir(ckdir) and any(
            f.endswith(".index") for f in os.listdir(ckdir)):
        raise UserError(f"{ckdir} holds checkpoints but its 'checkpoint' state file is "
                        "missing or unreadable; restore it, or use a new --logdir")
    resumed: dict | None = None
    if checkpointer.latest:
        if not config.run.resume:
            raise UserError(f"{run_dir.path} already holds checkpoints and --resume=false: "
                            "use a new --logdir, or --resume to continue that run")
        resumed = checkpointer.restore_latest()
        learner.set_version(resumed["updates"])
        # The optimizer's learning rate is a checkpointed variable: the flag wins.
        learner.optimizer.learning_rate.assign(config.algo.learning_rate)
    r = resumed or {}
    recent = (read_recent_returns(run_dir.episodes_csv, max_env_steps=r["env_steps"])
              if resumed else None)
    stats = Stats(None, r.get("env_steps", 0), r.get("episodes", 0),
                  r.get("train_seconds", 0.0), recent)
    stop = stop or threading.Event()
    failure = Failure()
    seed = config.run.seed * 1_000_003 + r.get("env_steps", 0) % 1_000_003
    pipeline = Pipeline(config, learner.predict, learner.train, lambda: learner.version, stats,
                        stop, failure, seed, return_stats)
    p = config.pipeline
    autotuner = Autotuner(
        pipeline, stats,
        {"agents": (1, p.max_agents), "predictors": (1, p.max_predictors),
         "trainers": (1, p.max_trainers)},
        p.autotune_window_seconds, p.autotune_margin, log, stop, failure) if p.autotune else None
    return Service(config, run_dir, learner, checkpointer, stats, pipeline, autotuner,
                   resumed, stop, failure)


def train(config: Config, env_spec: EnvSpec, stop: threading.Event | None = None,
          hand_over=None) -> RunResult:
    """A checked config's run, start to end: with `--runner=ray` inside a Ray session
    (connected, a bad address refused, before the model is built; a local Ray this run
    started is shut down when it ends), `build_service(...)`, `hand_over(service)` if given
    (before it starts), then `service.run()`. What `ga3c.train` runs after its checks."""
    p = config.pipeline
    if p.runner == "ray":
        from ga3c.ray_runner import ray_session

        # a local Ray gets a CPU for each runner the autotuner may add, too
        session = ray_session(p.ray_address, max(p.num_runners, p.max_agents) if p.autotune
                              else p.num_runners)
    else:
        session = contextlib.nullcontext()
    with session:
        service = build_service(config, env_spec, stop)
        if hand_over is not None:
            hand_over(service)
        return service.run()


class Service:
    def __init__(self, config: Config, run_dir: RunDir, learner: Learner,
                 checkpointer: Checkpointer, stats: Stats, pipeline: Pipeline,
                 autotuner: Autotuner | None, resumed: dict | None, stop: threading.Event,
                 failure: Failure) -> None:
        self.config = config
        self.run_dir = run_dir
        self.learner = learner
        self.checkpointer = checkpointer
        self.stats = stats
        self.pipeline = pipeline
        self.autotuner = autotuner
        self.resumed = resumed
        self.stop_event = stop
        self.failure = failure
        self.stop_reason = ""
        self._writer = None
        self._started = False
        self._last_window: Window | None = None  # the last one with training (for warnings)

    def request_stop(self, reason: str) -> None:
        """Ask the service to stop (any thread, a signal handler too); `watch()` returns."""
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()

    # -- life cycle ----------------------------------------------------------------------
    def run(self) -> RunResult:
        """start(), watch() until a stop condition, stop()."""
        try:
            self.start()
            self.watch()
        except BaseException as exc:  # noqa: BLE001 - reported like any worker's failure
            self.failure.record(threading.current_thread().name, exc)
        return self.stop()

    def start(self) -> None:
        """Write config.json, open the logs and start the threads (none if a stop was
        already requested, e.g. a signal while the logdir was prepared)."""
        cfg, run_dir, r = self.config, self.run_dir, self.resumed
        os.makedirs(run_dir.path, exist_ok=True)
        run_dir.write_config(cfg)
        if not r:
            keep_aside(run_dir.episodes_csv)  # a run that never checkpointed: kept, not mixed in
        self.stats.log_episodes_to(run_dir.episodes_csv)
        if cfg.run.log_updates:
            self.stats.log_updates_to(run_dir.updates_csv)
        if r:
            log(f"resumed from {self.checkpointer.latest}: {r['env_steps']:,} env steps, "
                f"{r['episodes']:,} episodes, {r['updates']:,} updates")
            if r.get("note"):
                log(f"note: {r['note']}")
        self._writer = ScalarWriter(run_dir.tensorboard)
        self._started = True
        p = cfg.pipeline
        envs = (f"{p.num_runners} Ray runners" if p.runner == "ray" else f"{p.num_agents} agents")
        log(f"training {cfg.env.env_id} with {envs} x {cfg.env.envs_per_agent} "
            f"envs, {p.num_predictors} predictor(s), {p.num_trainers} trainer(s); "
            f"logdir {run_dir.path}")
        self.stats.restart_clock()  # rates and this process's seconds count from now
        if not self.stop_event.is_set():
            self.pipeline.start()
        if self.autotuner is not None and not self.stop_event.is_set():
            self.autotuner.start()

    def stop(self) -> RunResult:
        """Stop every thread (bounded), close the logs, save; how the run ended."""
        self.request_stop("stopping")
        if self.autotuner is not None:  # first: it may still be adding or retiring threads
            self.autotuner.join(JOIN_SECONDS)
        stuck = self.pipeline.join()
        if self.autotuner is not None and self._started:
            trial = self.autotuner.trial
            log("autotune: final layout " + " ".join(
                f"{k}={v}" for k, v in self.pipeline.counts().items())
                + (f" (stopped during the trial {trial})" if trial else ""))
        closing = [(self.stats.close, os.path.basename(self.run_dir.episodes_csv))]
        if self._writer is not None:
            closing.append((self._writer.close, "tb/"))
        for close, what in closing:
            try:  # a full disk can fail these too: reported, after what failed first
                close()
            except Exception as exc:  # noqa: BLE001
                self.failure.record(threading.current_thread().name, LogWriteError(
                    f"cannot write {os.path.join(self.run_dir.path, what)}: "
                    f"{write_error_reason(exc)}"))
        if not self.failure or getattr(self.failure.exception, "keeps_model", False):
            try:
                self._save()
            except (RunError, TimeoutError) as exc:
                self.failure.record(threading.current_thread().name, exc)
        return self._result(stuck)

    def watch(self) -> None:
        """Check the stop conditions, log and checkpoint until a stop is requested."""
        stats, run = self.stats, self.config.run
        t0 = time.monotonic()
        next_log = t0 + run.log_every_seconds
        next_ckpt = t0 + run.checkpoint_every_seconds
        last = stats.snapshot()
        while not self.stop_event.wait(POLL_SECONDS):
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
                snapshot = stats.snapshot()
                self._report(stats.window(last, snapshot), self._writer)
                last = snapshot
            if now >= next_ckpt and not self.stop_event.is_set():
                next_ckpt = now + run.checkpoint_every_seconds
                self._save()

    def _diagnostics(self, w: Window) -> dict[str, float]:
        """TensorBoard's diagnostics/: the window's mean and largest of each training-step
        instrument, each layer's update ratio ||step|| / ||weights||, the RMSProp
        accumulators' smallest and median values."""
        if not w.probes_mean:
            return {}
        out = {f"diagnostics/{k}": v for k, v in w.probes_mean.items()}
        out.update({f"diagnostics/{k}_max": v for k, v in w.probes_max.items()})
        for layer, norm in self.learner.weight_norms().items():
            step = w.probes_mean.get(f"step_norm/{layer}")
            if step is not None:
                out[f"diagnostics/update_ratio/{layer}"] = step / max(norm, 1e-30)
        out.update({f"diagnostics/{k}": v for k, v in self.learner.accumulator_stats().items()})
        return out

    # -- results and saves ---------------------------------------------------------------
    def _result(self, stuck: list[str]) -> RunResult:
        stats = self.stats
        result = RunResult(self.stop_reason, stats.env_steps, stats.episodes,
                           stats.train_seconds(), stats.mean_score(),
                           self.checkpointer.on_disk_latest(), stuck_threads=stuck)
        if not self.failure:
            return result
        exc = self.failure.exception
        # NaN weights also make envs or predictors fail (NaN logits): the cause is what counts.
        diverged = self.learner.nonfinite or self.learner.nonfinite_weights()
        if diverged:
            message = f"{diverged}: stopped without saving it; {self.checkpointer.latest_note()}"
            if self.checkpointer.on_disk_latest():
                message += (" (the same command, e.g. with a lower --learning_rate, "
                            "resumes from it)")
            result.error = message
        elif isinstance(exc, RunError):
            result.error = str(exc)
            if isinstance(exc, LogWriteError):
                result.error += f"; {self.checkpointer.latest_note()}"
            elif exc.keeps_model:
                result.error += (f"; {self.checkpointer.latest_note()} (the same command "
                                 "resumes from it)")
        else:
            result.failed_thread = self.failure.thread_name
            result.traceback = self.failure.traceback
        return result

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
        if path != latest or not os.path.exists(self.run_dir.policy):
            try:
                self.learner.save_policy(self.run_dir.policy,
                                         before_replace=self.learner.check_finite)
            except NonFiniteError:
                raise
            except Exception as exc:  # noqa: BLE001 - OSError, h5py/zip errors
                raise WriteError(
                    f"cannot write {self.run_dir.policy}: {write_error_reason(exc)}; the "
                    f"previous one is unchanged and {self.checkpointer.latest_note()}") from exc
        return path

    def _report(self, w: Window, writer) -> None:
        depths = self.pipeline.queue_depths()
        log(w.console_line(depths))
        if self._last_window is not None:
            warning = collapse_warning(self._last_window, w)
            if warning is not None:
                log(warning)
        if w.losses:
            self._last_window = w
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
        scalars.update(self._diagnostics(w))
        for name, rate in w.source_env_steps_per_s.items():
            scalars[f"runners/{name}/env_steps_per_s"] = rate
        if w.round_trip_p50 is not None:
            scalars["runners/round_trip_p50_ms"] = w.round_trip_p50 * 1e3
            scalars["runners/round_trip_p95_ms"] = w.round_trip_p95 * 1e3
        if self.config.pipeline.runner == "ray":  # so far in this process: a step up per death
            scalars["runners/dropped_transitions"] = w.total_dropped_transitions
        try:  # the writer flushes as it goes: a full disk fails here as in a checkpoint
            writer.write(w.total_env_steps, scalars)
        except Exception as exc:  # noqa: BLE001 - OSError, tf.errors.* (TensorBoard's gfile)
            raise LogWriteError(f"cannot write {self.run_dir.tensorboard}: "
                                f"{write_error_reason(exc)}") from exc
