"""The command-line entry points, and the only module that reads flags.

    ga3c-train --flagfile=configs/cartpole.cfg [--flag=value ...]
    ga3c-eval --logdir=runs/cp1 [--episodes=20 --policy=sample --video_dir=videos/cp1]
    ga3c-plot --logdir=runs/cp1 [--logdir=runs/cp2 ...] --out=curve.png

Flags after `--flagfile` override the file. The flags become one frozen `Config`; a bad
flag, flagfile, value, env id, logdir or checkpoint ends the program with one line on stderr
and exit code 2. `ga3c-train` handles SIGINT/SIGTERM from its first line on (see
`StopSignals`): before training starts they end it at once (exit 130/143, logdir untouched),
during training they stop it cleanly (final checkpoint, exit 0); a second signal exits at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sys

from absl import flags

from ga3c.config import ACTIVATIONS, ENV_BACKENDS, LR_SCHEDULES, RUNNERS, Config
from ga3c.errors import UserError, first_line
from ga3c.startup import check_writable_dir, import_tensorflow_quietly

PROG = "ga3c-train"
EXIT_BAD_INPUT = 2


def define_flags(fv: flags.FlagValues) -> None:
    d = Config()  # defaults live in the dataclasses; flags only mirror them
    e, n, a, p, r = d.env, d.network, d.algo, d.pipeline, d.run
    flags.DEFINE_string("env", e.env_id, "Gymnasium env id (Discrete or 1-D Box actions).",
                        flag_values=fv)
    flags.DEFINE_integer("envs_per_agent", e.envs_per_agent,
                         "Envs stepped together by each environment thread (each Ray runner "
                         "with --runner=ray).", flag_values=fv)
    flags.DEFINE_float("repeat_action_probability", e.repeat_action_probability,
                       "Atari sticky-action probability.", flag_values=fv)
    flags.DEFINE_bool("clip_rewards", e.clip_rewards, "Clip training rewards to [-1, 1] "
                      "(reported scores stay real).", flag_values=fv)
    flags.DEFINE_enum("env_backend", e.env_backend, ENV_BACKENDS,
                      "How envs are stepped: gymnasium envs in Python threads, ale-py's C++ "
                      "vector env (ALE ids), or auto (ale_vector for ALE ids).", flag_values=fv)
    flags.DEFINE_integer("ale_threads", e.ale_threads,
                         "ale-py C++ threads per agent's Atari vector env.", flag_values=fv)
    flags.DEFINE_integer("ale_batch_size", e.ale_batch_size,
                         "ale_vector: envs per recv() (0: all, lock step).", flag_values=fv)
    flags.DEFINE_integer("max_episode_frames", e.max_episode_frames,
                         "Atari: truncate episodes after this many frames.", flag_values=fv)
    flags.DEFINE_bool("episodic_life", e.episodic_life,
                      "Atari: a lost life ends the training episode (scores stay whole games).",
                      flag_values=fv)
    flags.DEFINE_bool("normalize_obs", e.normalize_obs,
                      "Vector observations: normalise by running mean/var (kept in the "
                      "checkpoint; applied alike in training, ga3c-eval, load_policy).",
                      flag_values=fv)
    flags.DEFINE_bool("normalize_reward", e.normalize_reward,
                      "Divide training rewards by a running std of the discounted return "
                      "(reported scores stay real).", flag_values=fv)
    flags.DEFINE_list("hidden", [str(h) for h in n.hidden], "MLP hidden layer sizes.",
                      flag_values=fv)
    flags.DEFINE_bool("separate_towers", n.separate_towers,
                      "Separate policy and value MLPs (else one shared trunk).", flag_values=fv)
    flags.DEFINE_enum("cnn", n.cnn, ["ga3c", "nature"],
                      "CNN trunk for image observations: GA3C's or the larger Nature DQN.",
                      flag_values=fv)
    flags.DEFINE_float("log_std_init", n.log_std_init,
                       "Box actions: initial log-std of the Gaussian policy.", flag_values=fv)
    flags.DEFINE_enum("init", n.init, ["orthogonal", "glorot"],
                      "Kernel init of trunk and value head: orthogonal (gain sqrt(2) trunk, 1 "
                      "value head, as OpenAI baselines / SB3) or Keras' glorot.", flag_values=fv)
    flags.DEFINE_enum("activation", n.activation, list(ACTIVATIONS),
                      "CNN trunk activation: relu (Nature DQN) or leaky_relu (slope 0.01 below "
                      "0: a unit dead on every frame still learns).", flag_values=fv)
    flags.DEFINE_boolean("center_frames", n.center_frames,
                         "CNN: subtract each frame's mean pixel inside the model (a conv0 "
                         "channel's response to the background is then its bias alone).",
                         flag_values=fv)
    flags.DEFINE_integer("n_step", a.n_step, "Steps per n-step return (A3C t_max).", flag_values=fv)
    flags.DEFINE_float("gamma", a.gamma, "Discount factor.", flag_values=fv)
    flags.DEFINE_float("learning_rate", a.learning_rate, "RMSProp learning rate.", flag_values=fv)
    flags.DEFINE_enum("lr_schedule", a.lr_schedule, LR_SCHEDULES,
                      "constant, or linear: decays to 0 at the run's end (--max_env_steps or "
                      "--max_seconds, whichever comes first).", flag_values=fv)
    flags.DEFINE_float("rho", a.rho, "RMSProp decay.", flag_values=fv)
    flags.DEFINE_float("epsilon", a.epsilon, "RMSProp epsilon.", flag_values=fv)
    flags.DEFINE_float("rmsprop_init", a.rmsprop_init,
                       "Initial RMSProp mean-square accumulator (Keras: 0, TF1: 1).", flag_values=fv)
    flags.DEFINE_float("update_clip", a.update_clip,
                       "Bound on each weight tensor's RMSProp step: RMS at most this many "
                       "learning rates (Adafactor's update clipping; 0: off).", flag_values=fv)
    flags.DEFINE_float("bound_coef", a.bound_coef,
                       "Box actions: weight of a penalty on policy means beyond the action "
                       "bounds (squared distance outside them; 0: off).", flag_values=fv)
    flags.DEFINE_float("entropy_coef", a.entropy_coef, "Entropy bonus weight.", flag_values=fv)
    flags.DEFINE_float("value_coef", a.value_coef, "Value loss weight.", flag_values=fv)
    flags.DEFINE_float("clip_norm", a.clip_norm, "Global gradient-norm clip (0: off).",
                       flag_values=fv)
    flags.DEFINE_bool("normalize_advantages", a.normalize_advantages,
                      "Standardise advantages over each training batch.", flag_values=fv)
    flags.DEFINE_integer("num_agents", p.num_agents, "Environment threads.", flag_values=fv)
    flags.DEFINE_integer("num_predictors", p.num_predictors, "Predictor threads.", flag_values=fv)
    flags.DEFINE_integer("num_trainers", p.num_trainers, "Optimizer threads.", flag_values=fv)
    flags.DEFINE_integer("min_train_batch", p.min_train_batch,
                         "Fewest transitions per training step.", flag_values=fv)
    flags.DEFINE_integer("max_predict_batch", p.max_predict_batch,
                         "Most states per inference call.", flag_values=fv)
    flags.DEFINE_integer("prediction_queue_size", p.prediction_queue_size,
                         "Bound of the prediction queue (requests).", flag_values=fv)
    flags.DEFINE_integer("training_queue_size", p.training_queue_size,
                         "Bound of the training queue (segments).", flag_values=fv)
    flags.DEFINE_bool("autotune", p.autotune, "Adjust agents (Ray runners with --runner=ray)"
                      "/predictors/trainers while training, one at a time, keeping changes "
                      "that raise throughput.", flag_values=fv)
    flags.DEFINE_float("autotune_window_seconds", p.autotune_window_seconds,
                       "Autotune: seconds measured per setting.", flag_values=fv)
    flags.DEFINE_float("autotune_margin", p.autotune_margin,
                       "Autotune: relative gain a change must bring to be kept.", flag_values=fv)
    flags.DEFINE_integer("max_agents", p.max_agents, "Autotune: most agents (Ray runners with "
                         "--runner=ray).", flag_values=fv)
    flags.DEFINE_integer("max_predictors", p.max_predictors, "Autotune: most predictors.",
                         flag_values=fv)
    flags.DEFINE_integer("max_trainers", p.max_trainers, "Autotune: most trainers.",
                         flag_values=fv)
    flags.DEFINE_enum("runner", p.runner, RUNNERS,
                      "Where the envs run: agent threads in this process, or Ray actors on "
                      "any node of a Ray cluster (needs the [ray] extra).", flag_values=fv)
    flags.DEFINE_integer("num_runners", p.num_runners,
                         "--runner=ray: Ray env runners (each steps --envs_per_agent envs).",
                         flag_values=fv)
    flags.DEFINE_integer("runner_groups", p.runner_groups,
                         "--runner=ray: env groups per runner, all kept in flight (stepping "
                         "overlaps inference; 1: no overlap, full predict batches).",
                         flag_values=fv)
    flags.DEFINE_string("ray_address", p.ray_address,
                        "--runner=ray: a running cluster's address (auto, host:port, "
                        "ray://host:port); empty: a local Ray for this run.", flag_values=fv)
    flags.DEFINE_string("logdir", r.logdir, "Run directory: checkpoints, logs, TensorBoard.",
                        flag_values=fv)
    flags.DEFINE_integer("seed", r.seed, "Random seed.", flag_values=fv)
    flags.DEFINE_integer("max_env_steps", r.max_env_steps, "Stop after this many env steps "
                         "(0: no limit).", flag_values=fv)
    flags.DEFINE_float("max_seconds", r.max_seconds, "Stop after this many seconds of this "
                       "process's training (0: no limit).", flag_values=fv)
    flags.DEFINE_float("target_score", r.target_score, "Stop when the mean return of the last "
                       "100 episodes reaches this (unset: never).", flag_values=fv)
    flags.DEFINE_float("checkpoint_every_seconds", r.checkpoint_every_seconds,
                       "Checkpoint interval.", flag_values=fv)
    flags.DEFINE_integer("keep_checkpoints", r.keep_checkpoints, "Checkpoints kept.",
                         flag_values=fv)
    flags.DEFINE_float("log_every_seconds", r.log_every_seconds, "Console/TensorBoard interval.",
                       flag_values=fv)
    flags.DEFINE_bool("log_updates", r.log_updates, "Write updates.csv in the logdir: a row "
                      "per training step (loss terms and stability instruments).",
                      flag_values=fv)
    flags.DEFINE_bool("resume", r.resume, "Resume from the logdir's latest checkpoint.",
                      flag_values=fv)
    flags.DEFINE_integer("tf_threads", r.tf_threads,
                         "TensorFlow intra-op threads (0: TensorFlow decides).", flag_values=fv)
    flags.DEFINE_bool("xla", r.xla, "Compile predict and train steps with XLA.", flag_values=fv)
    flags.DEFINE_string("mixed_precision", r.mixed_precision,
                        "bfloat16 compute with float32 variables, heads, loss and optimizer "
                        "state: auto (on where the CPU has avx512_bf16 or amx_bf16, or the GPU "
                        "bfloat16 tensor cores; the start-up line says which and why), on, off "
                        "(true/false also).", flag_values=fv)


def parse_flags(define, argv: list[str], prog: str) -> flags.FlagValues:
    """Parse argv (without the program name) into a private FlagValues; raises UserError."""
    fv = flags.FlagValues()
    define(fv)
    try:
        rest = fv([prog, *argv])
    except flags.Error as exc:
        raise UserError(first_line(exc)) from None
    if len(rest) > 1:
        raise UserError(f"unexpected arguments {rest[1:]} (flags look like --name=value)")
    return fv


def parse_config(argv: list[str], check_env: bool = False):
    """argv (without the program name) -> validated Config; raises UserError listing every
    problem. With `check_env`, the env is built and inspected too (its problems listed with
    the others) and `(config, env_spec)` is returned."""
    fv = parse_flags(define_flags, argv, PROG)
    try:
        hidden = tuple(int(h) for h in fv.hidden)
    except ValueError:
        raise UserError(f"--hidden={','.join(fv.hidden)}: must be comma-separated integers") from None
    # Every config field has a flag of the same name (but env_id: --env), so the sections
    # are read off the flags rather than listed twice.
    special = {"env_id": fv.env, "hidden": hidden}

    def section(cls):
        return cls(**{f.name: special[f.name] if f.name in special else fv[f.name].value
                      for f in dataclasses.fields(cls)})

    config = Config(**{name: section(cls) for name, cls in Config.section_types().items()})
    if check_env:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from ga3c.envs import check_config

        return config, check_config(config)
    problems = config.validate()
    if problems:
        raise UserError("invalid config: " + "; ".join(problems))
    return config


def help_text(define, usage: str) -> str:
    fv = flags.FlagValues()
    define(fv)
    return f"usage: {usage}\n\n" + fv.get_help(include_special_flags=False)


def wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help", "-help", "--helpfull") for a in argv)


def describe(config: Config) -> str:
    lines = []
    for section, values in config.to_dict().items():
        items = " ".join(f"{k}={v}" for k, v in values.items())
        lines.append(f"  {section}: {items}")
    return "effective config:\n" + "\n".join(lines)


class StopSignals:
    """SIGINT and SIGTERM for `ga3c-train`, installed as its first action.

    The handlers replace whatever the process inherited, SIG_IGN included: a POSIX shell
    starts background jobs with SIGINT ignored, and a supervisor's SIGINT must still count.
    Python runs them in the main thread between bytecodes (TensorFlow's import and the model
    build are mostly Python, so within a fraction of a second).

    - Before `hand_over(service)` (flags, env check, TensorFlow import, model build, restore):
      the process ends at once with 128 + the signal number (130 SIGINT, 143 SIGTERM), and
      the directories this process created for the logdir (still empty) are removed: the
      logdir is as it was. Inside `deferred()` (a write into the logdir) the exit waits for
      the write to finish.
    - After it: the service stops cleanly (final checkpoint, exit 0).
    - A second signal exits at once (128 + its number), without a final checkpoint.
    """

    def __init__(self) -> None:
        self.received: list[str] = []
        self.service = None
        self.created_dirs: list[str] = []  # removed (if still empty) on an early exit
        self._deferring = 0
        self._pending: int | None = None
        self._stderr = 2

    def install(self) -> StopSignals:
        # stderr as it is now: TensorFlow's import points fd 2 at /dev/null for a while.
        with contextlib.suppress(OSError):  # (no fd 2 at all: then messages are lost)
            self._stderr = os.dup(2)
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def hand_over(self, service) -> None:
        """From now on a signal asks `service` to stop cleanly."""
        self.service = service

    @contextlib.contextmanager
    def deferred(self):
        """A section an early signal does not cut short: it exits right after it."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if not self._deferring and self._pending is not None and self.service is None:
            self._exit_before_training(self._pending)

    def _handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if len(self.received) > 1:
            self._say(f"{PROG}: second signal ({name}): exiting now, without a final checkpoint")
            os._exit(128 + signum)
        if self.service is not None:
            self.service.request_stop(f"received {name}")
        elif self._deferring:
            self._pending = signum
        else:
            self._exit_before_training(signum)

    def _exit_before_training(self, signum: int) -> None:
        for directory in reversed(self.created_dirs):
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # only if still empty
        with contextlib.suppress(Exception):  # may interrupt a print: then it stays unflushed
            sys.stdout.flush()
        self._say(f"{PROG}: received {signal.Signals(signum).name} before training started: "
                  f"exiting ({128 + signum}), nothing written")
        os._exit(128 + signum)

    def _say(self, line: str) -> None:
        """One line on stderr, straight to the file descriptor (safe in a signal handler)."""
        with contextlib.suppress(OSError):
            os.write(self._stderr, (line + "\n").encode())


# The handlers of this process, when it was started through `entry_point`.
_signals: StopSignals | None = None


def main(argv: list[str] | None = None) -> int:
    return run_entry(PROG, define_flags, "--flagfile=configs/cartpole.cfg [--flag=...]", argv,
                     train)


def train(argv: list[str]) -> int:
    """ga3c-train's body: flags to config, checks, then the service."""
    signals = _signals or StopSignals().install()  # in-process callers: handlers from here
    config, env_spec = parse_config(argv, check_env=True)
    if config.pipeline.runner == "ray":
        from ga3c.ray_runner import require_ray

        require_ray()  # before TensorFlow's import: a missing package is told at once
    with signals.deferred():
        signals.created_dirs = check_writable_dir(config.run.logdir)
    print(describe(config), flush=True)
    tf = import_tensorflow_quietly(config.run.tf_threads)
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus and shutil.which("nvidia-smi"):
        print("note: nvidia-smi is here but TensorFlow sees no GPU; set GA3C_TF_VERBOSE=1 "
              "to see TensorFlow's start-up messages", flush=True)
    from ga3c.learner import mixed_precision_decision

    mixed, why = mixed_precision_decision(config.run.mixed_precision)
    print(f"device: {', '.join(d.name for d in gpus) if gpus else 'CPU (no GPU found)'}; "
          f"TensorFlow {tf.__version__}; XLA {'on' if config.run.xla else 'off'}; "
          f"mixed precision {'on (bfloat16)' if mixed else 'off'} ({why})", flush=True)
    import ga3c

    return report(ga3c.train(config, env_spec=env_spec, hand_over=signals.hand_over))


def report(result) -> int:
    """A `RunResult` as the console shows it, and the exit code: 0 stopped cleanly, 1 a
    divergence or a failed write (one line) or a failed thread (its traceback)."""
    from ga3c.pipeline import JOIN_SECONDS
    from ga3c.threads import log

    if result.error is not None:
        print(f"ga3c: error: {result.error}", file=sys.stderr, flush=True)
        return 1
    if result.traceback is not None:
        print(f"ga3c: thread {result.failed_thread} failed:\n{result.traceback}",
              file=sys.stderr, flush=True)
        return 1
    if result.stuck_threads:
        print(f"ga3c: threads did not stop within {JOIN_SECONDS:.0f}s: {result.stuck_threads}",
              file=sys.stderr)
    score = "n/a" if result.score is None else f"{result.score:.1f}"
    log(f"stopped ({result.stop_reason}) after {result.env_steps:,} env steps, "
        f"{result.episodes:,} episodes, {result.train_seconds:.1f}s of training; "
        f"score100 {score}; checkpoint {result.checkpoint}")
    return 0


def define_eval_flags(fv: flags.FlagValues) -> None:
    from ga3c.evaluate import STALL_STEPS

    flags.DEFINE_string("logdir", None, "Run directory to evaluate (required).", flag_values=fv)
    flags.DEFINE_string("checkpoint", None, "Checkpoint path prefix (default: the latest).",
                        flag_values=fv)
    flags.DEFINE_integer("episodes", 10, "Episodes to play.", flag_values=fv)
    flags.DEFINE_enum("policy", "greedy", ["greedy", "sample"],
                      "greedy: argmax action; sample: draw from the policy.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the first episode (then seed+1, ...).",
                         flag_values=fv)
    flags.DEFINE_string("env", None, "Play on this env instead of the run's (same spaces).",
                        flag_values=fv)
    flags.DEFINE_string("video_dir", None, "Write one mp4 per episode here (needs the "
                        "[video] extra).", flag_values=fv)
    flags.DEFINE_integer("stall_steps", STALL_STEPS, "End an episode that had no reward in "
                         "this many steps, with the score it had (0: play to the env's end).",
                         flag_values=fv)
    flags.DEFINE_string("json", None, "Summary JSON path (default: <logdir>/eval-<ckpt>.json).",
                        flag_values=fv)


def define_plot_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_string("logdir", [], "Run directory (repeat to overlay runs).",
                              flag_values=fv)
    flags.DEFINE_string("out", "curve.png", "Output image (PNG).", flag_values=fv)
    flags.DEFINE_integer("window", 100, "Episodes in the rolling mean.", flag_values=fv)
    flags.DEFINE_string("title", None, "Figure title.", flag_values=fv)
    flags.DEFINE_bool("updates", False, "Draw the training steps' instruments from each "
                      "run's updates.csv (--log_updates) instead of the score curves.",
                      flag_values=fv)
    flags.DEFINE_float("from_steps", 0, "--updates: first env step drawn.", flag_values=fv)
    flags.DEFINE_float("to_steps", 0, "--updates: last env step drawn (0: the end).",
                       flag_values=fv)


def run_entry(prog: str, define, usage: str, argv: list[str] | None, body) -> int:
    """Run an entry point: --help prints the flags; bad input is one line and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        print(help_text(define, f"{prog} {usage}"))
        return 0
    try:
        return body(argv)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def eval_main(argv: list[str] | None = None) -> int:
    return run_entry("ga3c-eval", define_eval_flags, "--logdir=runs/cp1 [--episodes=20 ...]",
                     argv, evaluate_run)


def evaluate_run(argv: list[str]) -> int:
    """ga3c-eval's body."""
    fv = parse_flags(define_eval_flags, argv, "ga3c-eval")
    if not fv.logdir:
        raise UserError("--logdir is required")
    if not os.path.isdir(fv.logdir):
        raise UserError(f"logdir {fv.logdir!r} does not exist")
    # Outputs are checked before any episode is played.
    check_writable_dir(os.path.dirname(os.path.abspath(fv.json)) if fv.json else fv.logdir,
                       "summary folder")
    if fv.video_dir:
        check_writable_dir(fv.video_dir, "--video_dir")
    import_tensorflow_quietly()
    from ga3c.evaluate import evaluate, write_summary

    summary = evaluate(fv.logdir, fv.episodes, fv.policy, fv.seed, fv.checkpoint,
                       fv.video_dir, fv.env, fv.stall_steps)
    from ga3c.rundir import RunDir

    path = fv.json or RunDir(fv.logdir).eval_json(summary.checkpoint, fv.policy,
                                                   summary.env if fv.env else None)
    write_summary(summary, path)
    print(summary.table())
    if summary.note:
        print(summary.note)
    print(f"checkpoint {summary.checkpoint}; summary written to {path}")
    for video in summary.videos:
        print(f"video {video}")
    return 0


def plot_main(argv: list[str] | None = None) -> int:
    return run_entry("ga3c-plot", define_plot_flags, "--logdir=runs/cp1 [--logdir=...] --out=x.png",
                     argv, plot)


def plot(argv: list[str]) -> int:
    """ga3c-plot's body."""
    fv = parse_flags(define_plot_flags, argv, "ga3c-plot")
    if not fv.logdir:
        raise UserError("give at least one --logdir")
    if fv.window < 1:
        raise UserError(f"--window={fv.window}: must be >= 1")
    from ga3c.plot import expand, plot_runs, plot_updates

    if fv.updates:
        out = plot_updates([d for spec in fv.logdir for d in expand(spec)], fv.out,
                           fv.window, fv.title, fv.from_steps, fv.to_steps)
    else:
        out = plot_runs(fv.logdir, fv.out, fv.window, fv.title)
    print(f"wrote {out}")
    return 0


def entry_point() -> None:
    global _signals
    _signals = StopSignals().install()  # first: a signal during start-up must count too
    code = main()
    # Everything is on disk now (checkpoint, policy.keras, episodes.csv and TensorBoard files
    # closed): skip the interpreter's and TensorFlow's teardown, which takes a second (several
    # on a busy machine) and would count against a prompt stop.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # e.g. a closed pipe: nothing to do
            stream.flush()
    os._exit(code)


def eval_entry_point() -> None:
    sys.exit(eval_main())


def plot_entry_point() -> None:
    sys.exit(plot_main())


if __name__ == "__main__":
    entry_point()
