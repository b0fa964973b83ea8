"""Stopping on signals: `StopSignals`' rules in-process, then slow end-to-end checks in real
processes (run those with `pytest -m slow`):

- signals at random moments across start-up and training, launched as a terminal does and as
  a script's background job does (SIGINT inherited as ignored);
- a disk that fills up, and a checkpoint directory that turns read-only, mid-run (a tmpfs in a
  private mount namespace: skipped where `unshare` is not allowed).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ga3c.cli import StopSignals
from tests.test_cli import (REPO, TINY, Cli, all_finite, cli_env, copy_run, one_error_line,
                            run_cli, snapshot)


# -- the rules, without sending signals ---------------------------------------------------
class Exited(Exception):
    pass


@pytest.fixture
def exits(monkeypatch):
    """os._exit records its code and raises instead of ending pytest."""
    codes = []

    def fake_exit(code):
        codes.append(code)
        raise Exited(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    return codes


class FakeService:
    def __init__(self):
        self.reasons = []

    def request_stop(self, reason):
        self.reasons.append(reason)


def test_before_training_a_signal_exits_at_once_removing_the_empty_dirs_it_made(tmp_path,
                                                                                exits):
    signals = StopSignals()
    made = [str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    os.makedirs(made[1])
    signals.created_dirs = made
    with pytest.raises(Exited):
        signals._handle(signal.SIGTERM, None)
    assert exits == [143]
    assert not os.path.exists(made[0])


def test_a_dir_that_is_not_empty_is_kept(tmp_path, exits):
    signals = StopSignals()
    os.makedirs(tmp_path / "a")
    (tmp_path / "a" / "someone_elses").write_text("x")
    signals.created_dirs = [str(tmp_path / "a")]
    with pytest.raises(Exited):
        signals._handle(signal.SIGINT, None)
    assert exits == [130]
    assert (tmp_path / "a" / "someone_elses").exists()


def test_a_signal_inside_a_deferred_write_exits_right_after_it(exits):
    signals, steps = StopSignals(), []
    with pytest.raises(Exited):
        with signals.deferred():
            signals._handle(signal.SIGINT, None)
            steps.append("write finished")
    assert steps == ["write finished"] and exits == [130]


def test_during_training_a_signal_stops_cleanly_and_a_second_exits_at_once(exits):
    signals, service = StopSignals(), FakeService()
    signals.hand_over(service)
    signals._handle(signal.SIGINT, None)
    assert service.reasons == ["received SIGINT"] and exits == []
    with pytest.raises(Exited):
        signals._handle(signal.SIGTERM, None)
    assert exits == [143]


def test_install_overrides_an_inherited_ignore():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signals = StopSignals().install()
        assert signal.getsignal(signal.SIGINT) == signals._handle
        assert signal.getsignal(signal.SIGTERM) == signals._handle
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# -- real processes (slow) ------------------------------------------------------------------
STOP_SECONDS = 5.0  # the promise: any signal, any moment, the process is gone within this


def handlers_installed(pid: int) -> bool:
    """ga3c-train catches SIGTERM once its handlers are in (Python alone never does)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def latest_checkpoint(logdir):
    import tensorflow as tf

    return tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_signals_at_random_moments_stop_promptly_and_lose_nothing(trained_run, tmp_path):
    """24 runs: each gets SIGINT or SIGTERM at a random moment, half during start-up (from the
    moment the handlers are in to the first console line, as long as start-up took in the
    previous run) and half during training. Before training: exit 130/143 and the logdir as
    it was; during training: exit 0 and a restorable checkpoint. Always within 5 s."""
    seed = int(os.environ.get("GA3C_SIGNAL_SEED", time.time()))
    rng = random.Random(seed)
    startup = 8.0  # seconds from handlers installed to training; measured as we go
    outcomes = {"before": 0, "during": 0}
    install_seconds, stop_seconds = [], {"before": [], "during": []}
    for trial in range(24):
        sig = rng.choice([signal.SIGINT, signal.SIGTERM])
        ignored = rng.random() < 0.5
        existing = trial % 2 == 0
        aim = "before" if trial % 4 < 2 else "during"
        logdir = (copy_run(trained_run, tmp_path, f"t{trial}") if existing
                  else str(tmp_path / f"new{trial}" / "run"))
        before = snapshot(logdir)
        where = f"seed {seed} trial {trial} ({sig.name}, SIGINT ignored {ignored}, {aim})"
        t0 = time.monotonic()
        cli = Cli(*TINY, f"--logdir={logdir}", "--max_seconds=120", sigint_ignored=ignored)
        try:
            while not handlers_installed(cli.proc.pid):
                assert cli.proc.poll() is None and time.monotonic() - t0 < 30, where
                time.sleep(0.002)
            installed = time.monotonic()
            install_seconds.append(installed - t0)
            if aim == "before":
                time.sleep(rng.uniform(0, startup))
            else:
                cli.wait_for("steps ")
                startup = time.monotonic() - installed
                time.sleep(rng.uniform(0, 3))
            code, seconds, err = cli.signal_and_wait(sig)
        finally:
            cli.kill()
        where += f": exit {code} after {seconds:.2f}s\n{cli.stdout[-1500:]}\n{err[-1500:]}"
        assert seconds < STOP_SECONDS, where
        assert "Traceback" not in err, where
        phase = "before" if f"received {sig.name} before training started" in err else "during"
        outcomes[phase] += 1
        stop_seconds[phase].append(seconds)
        if phase == "before":
            assert code == 128 + sig, where
            if existing:
                assert snapshot(logdir) == before, where
            else:
                assert not os.path.exists(tmp_path / f"new{trial}"), where
        else:
            assert code == 0, where
            assert f"stopped (received {sig.name})" in cli.stdout, where
            latest = latest_checkpoint(logdir)
            assert latest is not None and all_finite(latest), where
            if existing:
                assert int(latest.rsplit("-", 1)[1]) >= 3000, where
    print(f"seed {seed}: {outcomes}; handlers in {min(install_seconds):.2f}-"
          f"{max(install_seconds):.2f}s after launch; exit within " + ", ".join(
              f"{max(v):.2f}s {k} training" for k, v in stop_seconds.items() if v))
    assert outcomes["before"] >= 6 and outcomes["during"] >= 6, outcomes
    # The last "during" run resumes as it would after any clean stop.
    proc = run_cli(*TINY, f"--logdir={logdir}", "--max_env_steps=1")
    assert proc.returncode == 0 and "resumed from" in proc.stdout, proc.stderr[-2000:]


def can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


FAULT_SCRIPT = r"""
set -u
mount -t tmpfs -o size=16m tmpfs "$MNT" || exit 99
"$PY" -m ga3c.cli "$@" --logdir="$MNT/run" > "$OUT/stdout" 2> "$OUT/stderr" &
pid=$!
n=0
while [ ! -f "$MNT/run/checkpoints/checkpoint" ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n+1)); done
sleep 0.5
if [ "$FAULT" = full ]; then
  dd if=/dev/zero of="$MNT/filler" bs=64k 2>/dev/null
else
  # A read-only remount is refused (EBUSY) while a file is open for writing through the
  # mount, i.e. while a checkpoint is being written: retry until it lands between two.
  mount --bind "$MNT/run/checkpoints" "$MNT/run/checkpoints" || { kill $pid; exit 98; }
  n=0
  until mount -o remount,bind,ro "$MNT/run/checkpoints" 2>"$OUT/mount.err"; do
    n=$((n+1)); [ $n -lt 1500 ] || { cat "$OUT/mount.err" >&2; kill $pid; exit 98; }
    sleep 0.02
  done
fi
wait $pid
echo $? > "$OUT/rc"
cp -a "$MNT/run" "$OUT/run"
"""


@pytest.mark.slow
@pytest.mark.skipif(not can_unshare(), reason="needs unshare -rm (user and mount namespaces)")
@pytest.mark.parametrize("fault, reason", [("full", "No space left on device"),
                                           ("readonly", "Read-only file system")])
def test_real_disk_faults_mid_run(tmp_path, fault, reason):
    """A real ENOSPC / EROFS under a running ga3c-train: exit 1 with one line, the latest
    checkpoint complete and resumable, nothing of the failed one left."""
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    env = dict(cli_env(), MNT=str(mnt), OUT=str(out), PY=sys.executable, FAULT=fault)
    script = subprocess.run(["unshare", "-rm", "sh", "-c", FAULT_SCRIPT, "fault", *TINY,
                             "--max_seconds=60", "--checkpoint_every_seconds=0.3"],
                            cwd=REPO, env=env, timeout=240, capture_output=True, text=True)
    assert script.returncode == 0, f"the fault script failed: {script.stderr[-2000:]}"
    proc = subprocess.CompletedProcess([], int((out / "rc").read_text()),
                                       (out / "stdout").read_text(), (out / "stderr").read_text())
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_error_line(proc, "cannot write", reason)
    logdir = str(out / "run")
    latest = latest_checkpoint(logdir)
    assert latest is not None and all_finite(latest)
    assert line.endswith(f"the latest checkpoint is {mnt}/run/checkpoints/"
                         f"{os.path.basename(latest)}")
    failed = re.search(r"cannot write checkpoint \S+/(ckpt-\d+):", line)
    if failed:  # nothing of it is left, or the line names what could not be removed (the
        # directory turned read-only between the data files and the state file)
        left = sorted(n for n in os.listdir(os.path.join(logdir, "checkpoints"))
                      if n.startswith(failed.group(1) + ".") or n.startswith(failed.group(1) + "_"))
        assert not left or ("could not be removed" in line and all(n in line for n in left)), line
    # The run moved to a healthy disk resumes from that checkpoint (the state file holds
    # paths relative to its directory).
    moved = str(tmp_path / "moved")
    shutil.copytree(logdir, moved)
    steps = int(os.path.basename(latest).split("-")[1])
    proc = run_cli(*TINY, f"--logdir={moved}", f"--max_env_steps={steps + 1000}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {moved}/checkpoints/ckpt-{steps}: {steps:,} env steps" in proc.stdout
