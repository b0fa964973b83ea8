"""Seeded learning runs through the real CLI and the real configs/cartpole.cfg.

The default run checks that CartPole clearly learns (mean of the last 100 episodes >= 150;
a random policy scores ~22). The `slow` test checks that it is solved (>= 475).
Threads make runs non-deterministic even with a fixed seed, so the bars have headroom.
"""

import csv
import os

import pytest

from tests.test_cli import run_cli


def best_mean100(logdir):
    """Best mean of 100 consecutive episodes in episodes.csv. Not the last 100: episodes that
    end between the solve check and the stop are logged too and can pull that just below."""
    with open(os.path.join(logdir, "episodes.csv"), newline="") as f:
        returns = [float(r["episode_return"]) for r in csv.DictReader(f)]
    assert len(returns) >= 100
    return max(sum(returns[i:i + 100]) / 100 for i in range(len(returns) - 99))


def test_cartpole_clearly_learns(tmp_path):
    logdir = str(tmp_path / "learn")
    proc = run_cli("--flagfile=configs/cartpole.cfg", f"--logdir={logdir}", "--seed=1",
                   "--target_score=150", "--max_seconds=60", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "solved: mean of last 100 episodes" in proc.stdout, proc.stdout[-3000:]
    assert best_mean100(logdir) >= 150


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_cartpole_solves(tmp_path, seed):
    logdir = str(tmp_path / f"solve{seed}")
    proc = run_cli("--flagfile=configs/cartpole.cfg", f"--logdir={logdir}", f"--seed={seed}",
                   "--max_seconds=120", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "solved: mean of last 100 episodes" in proc.stdout, proc.stdout[-3000:]
    assert best_mean100(logdir) >= 475
