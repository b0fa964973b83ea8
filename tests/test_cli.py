"""`ga3c-train`'s entry function: bad inputs, a tiny run, resume, divergence, stopping.

Most runs call the entry function in this process (`train_cli`: TensorFlow is imported once
per test run, not once per test); a few start the real program in a subprocess where only a
real process can show it (`run_cli`, `Cli`): bad input through the installed program's path,
and signals and kill -9 in `test_a_real_process_killed_resumed_and_signalled`.
"""

import contextlib
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ga3c.config import Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small, fast pipeline; tests add --logdir and stop conditions.
TINY = ["--env=CartPole-v1", "--num_agents=2", "--envs_per_agent=4", "--max_predict_batch=8",
        "--min_train_batch=16", "--hidden=16", "--log_every_seconds=0.5"]


def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "ga3c.cli", *args], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *needles, prog="ga3c-train"):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{prog}: error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def assert_refused_and_untouched(logdir, *args, needle):
    """ga3c-train on an existing run with bad input: one-line refusal, not a byte changed."""
    before = snapshot(logdir)
    proc = train_cli(*TINY, f"--logdir={logdir}", *args)
    assert_one_line_error(proc, needle)
    assert snapshot(logdir) == before


def snapshot(directory):
    """{relative path: sha256} of every file under `directory`."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


class CliRun(subprocess.CompletedProcess):
    """What `ga3c-train` exited with and printed; `service`: the service it ran (or None)."""

    service = None


def train_cli(*args) -> CliRun:
    """`ga3c-train`'s entry function in this process, as the program runs it but with no
    signal handlers installed: its exit code, stdout and stderr (threads' prints included)."""
    import ga3c.cli

    saved, signals = ga3c.cli._signals, ga3c.cli.StopSignals()
    ga3c.cli._signals = signals  # hand_over() will record the service here
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = ga3c.cli.main([str(a) for a in args])
    finally:
        ga3c.cli._signals = saved
    run = CliRun(args, code, out.getvalue(), err.getvalue())
    run.service = signals.service
    return run


# -- bad input: one line, exit 2, nothing written ------------------------------------------
@pytest.mark.parametrize("args, needles", [
    (["--flagfile=configs/does_not_exist.cfg"], ["does_not_exist.cfg"]),
    (["--no_such_flag=1"], ["no_such_flag"]),
    (["--num_agents=zero"], ["num_agents"]),
    (["--num_agents=0", "--gamma=1.5"], ["num_agents=0", "gamma=1.5"]),
    (["--resume=maybe"], ["resume"]),
    (["stray_positional"], ["stray_positional"]),
    (["--env=NoSuchEnv-v0"], ["NoSuchEnv-v0"]),
    (["--env=tests.target_env:MultiDiscreteTarget-v0"], ["MultiDiscreteTarget-v0", "Discrete"]),
    (["--env=no_such_module:Thing-v0"], ["no_such_module"]),
    (["--env=:Thing-v0"], [":Thing-v0"]),
    (["--env=ALE/NoSuchGame-v5"], ["NoSuchGame"]),
    (["--seed=4294967296"], ["seed"]),
    (["--env=CartPole-v1", "--env_backend=ale_vector"], ["--env_backend=ale_vector steps Atari"]),
    (["--env=CartPole-v1", "--episodic_life"], ["--episodic_life needs an Atari game"]),
])
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, args, needles):
    logdir = tmp_path / "run"
    proc = train_cli(f"--logdir={logdir}", *args)
    assert_one_line_error(proc, *needles)
    assert not logdir.exists()


def test_bad_input_through_the_real_program_is_one_line_and_exit_2(tmp_path):
    """The same, once, through the installed program's path (a subprocess)."""
    proc = run_cli(f"--logdir={tmp_path}/run", "--num_agents=0", "--env=NoSuchEnv-v0")
    assert_one_line_error(proc, "num_agents=0", "NoSuchEnv-v0")
    assert not (tmp_path / "run").exists()


def test_unwritable_logdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = train_cli(*TINY, f"--logdir={blocker}/run", "--max_env_steps=100")
    assert_one_line_error(proc, "not writable", str(blocker))
    assert blocker.read_text() == "not a directory"


def test_bad_flag_never_touches_an_existing_run(trained_run):
    logdir, _ = trained_run
    assert_refused_and_untouched(logdir, "--learning_rate=-1", needle="learning_rate")


def test_tiny_run_writes_config_checkpoint_csv_tensorboard_and_policy(trained_run):
    logdir, proc = trained_run
    assert "effective config" in proc.stdout
    assert "stopped (reached --max_env_steps=3,000)" in proc.stdout
    assert os.path.exists(os.path.join(logdir, "config.json"))
    assert os.path.exists(os.path.join(logdir, "policy.keras"))
    assert any(f.startswith("ckpt-") for f in os.listdir(os.path.join(logdir, "checkpoints")))
    assert any(f.startswith("events") for f in os.listdir(os.path.join(logdir, "tb")))
    with open(os.path.join(logdir, "episodes.csv")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "wall_time,env_steps,episode_return,episode_length"
    assert len(lines) > 10


def copy_run(trained_run, tmp_path, name):
    """A private copy of the shared tiny run, for tests that change or resume it."""
    logdir = str(tmp_path / name)
    shutil.copytree(trained_run[0], logdir)
    return logdir


def test_corrupt_checkpoint_is_refused_and_left_alone(trained_run, tmp_path):
    logdir = copy_run(trained_run, tmp_path, "corrupt")
    ckdir = os.path.join(logdir, "checkpoints")
    data = [f for f in os.listdir(ckdir) if ".data-" in f]
    for name in data:
        with open(os.path.join(ckdir, name), "r+b") as f:
            f.truncate(10)
    assert_refused_and_untouched(logdir, "--max_env_steps=6000", needle="cannot restore checkpoint")


def test_mismatched_network_checkpoint_is_refused(trained_run):
    logdir, _ = trained_run
    assert_refused_and_untouched(logdir, "--hidden=32", "--max_env_steps=6000", needle="cannot restore checkpoint")


def test_existing_checkpoints_with_resume_false_are_not_overwritten(trained_run):
    logdir, _ = trained_run
    assert_refused_and_untouched(logdir, "--resume=false", "--max_env_steps=100", needle="--resume=false")


def test_missing_checkpoint_state_file_is_refused(trained_run, tmp_path):
    logdir = copy_run(trained_run, tmp_path, "nostate")
    os.remove(os.path.join(logdir, "checkpoints", "checkpoint"))
    assert_refused_and_untouched(logdir, "--max_env_steps=6000", needle="state file")


def tf_latest_checkpoint(logdir) -> str | None:
    import tensorflow as tf

    return tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))


def checkpoint_counters(logdir) -> tuple[int, int, int]:
    """(env steps, episodes, updates) in the run's latest checkpoint."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(logdir, "checkpoints"))
    return tuple(int(x) for x in reader.get_tensor("counters/.ATTRIBUTES/VARIABLE_VALUE"))


def checkpoint_learning_rate(logdir):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(logdir, "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if "learning_rate" in n]
    assert len(names) == 1, names
    return float(reader.get_tensor(names[0]))


def test_resume_continues_counters_and_appends_episodes(trained_run, tmp_path):
    logdir = copy_run(trained_run, tmp_path, "resume")
    with open(os.path.join(logdir, "episodes.csv")) as f:
        rows_before = f.read().splitlines()
    assert checkpoint_learning_rate(logdir) == pytest.approx(Config().algo.learning_rate)
    # A kill can leave half a row: resume must neither crash on it nor glue a row onto it.
    with open(os.path.join(logdir, "episodes.csv"), "a") as f:
        f.write("12.5,99")
    proc = train_cli(*TINY, f"--logdir={logdir}", "--max_env_steps=6000",
                     "--learning_rate=0.001")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    with open(os.path.join(logdir, "episodes.csv")) as f:
        rows_after = f.read().splitlines()
    assert rows_after[:len(rows_before)] == rows_before
    assert rows_after[len(rows_before)] == "12.5,99"  # the half row, ended, not merged
    mark, steps = rows_after[len(rows_before) + 1].split(",")  # where the resume began
    assert mark == "resumed_at" and int(steps) >= int(rows_before[-1].split(",")[1])
    new_rows = [r.split(",") for r in rows_after[len(rows_before) + 2:]]
    assert new_rows and all(len(r) == 4 for r in new_rows)
    first_steps = int(rows_before[-1].split(",")[1])
    assert int(new_rows[0][1]) > first_steps  # the env-step counter continued
    assert float(new_rows[0][0]) > float(rows_before[-1].split(",")[0])  # and the clock
    assert checkpoint_learning_rate(logdir) == pytest.approx(1e-3)  # the new flag won
    ckpts = sorted(int(f.split("-")[1].split(".")[0]) for f in
                   os.listdir(os.path.join(logdir, "checkpoints")) if f.startswith("ckpt-"))
    assert ckpts[-1] >= 6000


def test_thread_exception_exits_1_with_traceback(tmp_path):
    proc = train_cli(*TINY, "--env=tests.faulty_env:FaultyCartPole-v0",
                     f"--logdir={tmp_path}/f", "--max_seconds=60")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "thread agent-" in proc.stderr
    assert "injected fault in env.step" in proc.stderr
    assert "Traceback" in proc.stderr


def ignore_sigint():
    """What a POSIX shell does to a job it starts in the background (`ga3c-train ... &`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Cli:
    """`ga3c-train` in a subprocess, its output read line by line as it comes."""

    def __init__(self, *args, sigint_ignored=False):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ga3c.cli", *args], cwd=REPO, env=cli_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=ignore_sigint if sigint_ignored else None)
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(pipe, out), daemon=True)
                         for pipe, out in ((self.proc.stdout, self.lines),
                                           (self.proc.stderr, self.err_lines))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe, out):
        for line in pipe:
            out.append(line)

    def wait_for(self, needle, timeout=120):
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in self.lines):
            assert self.proc.poll() is None, (self.proc.returncode, self.stdout, self.stderr)
            assert time.monotonic() < deadline, f"no {needle!r} in {timeout}s: {self.stdout}"
            time.sleep(0.02)

    def signal_and_wait(self, sig, timeout=30):
        """Send `sig`; (exit code, seconds until the process ended, stderr)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        seconds = time.monotonic() - t0
        self.kill()
        return self.proc.returncode, seconds, self.stderr

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for reader in self._readers:
            reader.join(10)

    @property
    def stdout(self):
        return "".join(self.lines)

    @property
    def stderr(self):
        return "".join(self.err_lines)


def test_a_real_process_killed_resumed_and_signalled(tmp_path):
    """The real program, for what only a real process shows (the rules behind each case are
    tested in-process in test_signals.py; signals at random moments, both kinds in both
    phases, are its `slow` test):

    1. kill -9 mid-run, checkpointing every 0.5 s: the latest checkpoint on disk is whole;
    2. the same command, started as a script's background job is (SIGINT inherited as
       ignored), resumes from it, and SIGINT during training stops it cleanly: exit 0 within
       seconds, a final checkpoint past the resumed one, policy.keras;
    3. SIGTERM before training (while TensorFlow is imported and the model built): exit 143
       at once, and the run directory is byte for byte as it was.
    """
    import tensorflow as tf

    logdir = str(tmp_path / "life")
    ckdir = os.path.join(logdir, "checkpoints")
    args = [*TINY, f"--logdir={logdir}", "--checkpoint_every_seconds=0.5", "--max_seconds=120"]
    cli = Cli(*args)
    try:
        cli.wait_for("steps ")
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(ckdir, "checkpoint")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.8)  # mid-way between checkpoints, likely while one is written
        cli.proc.send_signal(signal.SIGKILL)
        cli.proc.wait(30)
    finally:
        cli.kill()
    killed_at = tf.train.latest_checkpoint(ckdir)
    steps = int(killed_at.rsplit("-", 1)[1])
    assert steps > 0

    cli = Cli(*args, sigint_ignored=True)
    try:
        cli.wait_for(f"resumed from {killed_at}: {steps:,} env steps")
        cli.wait_for("steps ")  # a console line: training runs
        time.sleep(1.0)
        code, seconds, err = cli.signal_and_wait(signal.SIGINT)
    finally:
        cli.kill()
    assert code == 0, err[-3000:]
    assert "received SIGINT" in cli.stdout and seconds < 5
    assert int(tf.train.latest_checkpoint(ckdir).rsplit("-", 1)[1]) > steps
    assert os.path.exists(os.path.join(logdir, "policy.keras"))

    before = snapshot(logdir)
    cli = Cli(*args)
    try:
        cli.wait_for("effective config")  # TensorFlow's import and the model build follow
        code, seconds, err = cli.signal_and_wait(signal.SIGTERM)
    finally:
        cli.kill()
    assert code == 128 + signal.SIGTERM, (code, err[-2000:])
    assert seconds < 5
    assert "received SIGTERM before training started" in err and "Traceback" not in err
    assert snapshot(logdir) == before


def one_error_line(proc, *needles):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("ga3c: error: ") and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def all_finite(checkpoint_path):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(checkpoint_path)
    for name in reader.get_variable_to_shape_map():
        value = np.asarray(reader.get_tensor(name))
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return False
    return True


def test_divergence_stops_saving_nothing_non_finite_and_the_same_command_resumes(
        trained_run, tmp_path):
    """--learning_rate=1e30 (checkpointing every 0.2 s meanwhile): exit 1 with one line naming
    the latest checkpoint; every checkpoint and policy.keras on disk is finite (a save that
    came before the first update, as on a busy machine, holds the restored weights: finite);
    then a sane rate resumes from that latest checkpoint."""
    import keras
    import tensorflow as tf

    logdir = copy_run(trained_run, tmp_path, "diverge")
    ckdir = os.path.join(logdir, "checkpoints")
    proc = train_cli(*TINY, f"--logdir={logdir}", "--max_env_steps=20000",
                     "--learning_rate=1e30", "--checkpoint_every_seconds=0.2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    latest = tf.train.latest_checkpoint(ckdir)
    line = one_error_line(proc, "non-finite", f"the latest checkpoint is {latest}")
    updates = int(re.search(r"episodes (\d+) updates", proc.stdout.replace(",", "")).group(1))
    update = int(re.search(r"update (\d+)", line.replace(",", "")).group(1))
    assert update > updates  # the resumed run's own updates are counted on
    checkpoints = {os.path.join(ckdir, n.split(".")[0]) for n in snapshot(ckdir)
                   if n.startswith("ckpt-")}
    assert latest in checkpoints and all(all_finite(c) for c in checkpoints)
    model = keras.models.load_model(os.path.join(logdir, "policy.keras"), compile=False)
    assert all(np.isfinite(np.asarray(w)).all() for w in model.weights)
    proc = train_cli(*TINY, f"--logdir={logdir}", "--max_env_steps=5000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {latest}" in proc.stdout
    assert all_finite(tf.train.latest_checkpoint(ckdir))


def test_nan_rewards_stop_the_run_and_nothing_non_finite_is_saved(tmp_path):
    import keras
    import tensorflow as tf

    logdir = str(tmp_path / "nan")
    proc = train_cli(*TINY, "--env=tests.faulty_env:NaNRewardCartPole-v0", f"--logdir={logdir}",
                     "--max_seconds=60", "--checkpoint_every_seconds=0.2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    one_error_line(proc, "non-finite", "loss", "at update", "stopped without saving")
    ckdir = os.path.join(logdir, "checkpoints")
    indexes = [f for f in os.listdir(ckdir) if f.endswith(".index")] if os.path.isdir(ckdir) else []
    for name in indexes:
        assert all_finite(os.path.join(ckdir, name.removesuffix(".index"))), name
    if indexes:
        assert tf.train.latest_checkpoint(ckdir) is not None
        model = keras.models.load_model(os.path.join(logdir, "policy.keras"))
        assert all(np.isfinite(w).all() for w in model.get_weights())


def test_xla_and_mixed_precision_flags_reach_the_model_that_trains(tmp_path):
    """--xla and --mixed_precision, from the command line to the learner the run trained
    with: XLA-compiled steps, bfloat16 compute over float32 variables, updates made, and a
    finite checkpoint (the learner's own tests check what each option computes)."""
    proc = train_cli(*TINY, f"--logdir={tmp_path}/xla", "--max_env_steps=2000", "--xla",
                     "--mixed_precision=on")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mixed precision on (bfloat16) (--mixed_precision=on)" in proc.stdout
    learner = proc.service.learner
    assert learner.xla and learner.version > 0
    assert any("bfloat16" in str(layer.compute_dtype) for layer in learner.model.layers)
    assert all(v.dtype == "float32" for v in learner.model.trainable_variables)
    assert all_finite(proc.service.checkpointer.on_disk_latest())
