"""benchmarks/vs_sb3.py: its solve point, and its ga3c side end to end on a tiny run (its
SB3 side needs a venv with SB3 and is run by hand, see docs/continuous.md)."""

import json
import os
import subprocess
import sys

import pytest

from tests.test_cli import REPO, cli_env

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import vs_sb3  # noqa: E402
from vs_sb3 import solve_point, summarise  # noqa: E402


def test_solve_point_is_the_first_full_window_at_the_target():
    rows = [(10 * i, float(i), -300.0) for i in range(1, 101)]  # 100 episodes at -300
    rows += [(1010 + 10 * i, 101.0 + i, -200.0) for i in range(100)]
    # the mean of the last 100 is -300 + 100 k / 100 after k episodes at -200: >= -250 at k=50
    assert solve_point(rows, -250.0) == (1010 + 10 * 49, 101.0 + 49)
    assert solve_point(rows[:100], -250.0) == (None, None)
    rec = summarise(0, rows, -250.0)
    assert rec["reached"] and rec["final_score100"] == -200.0 and rec["episodes"] == 200


def test_the_ga3c_side_runs_a_config_per_seed(tmp_path):
    flagfile = tmp_path / "tiny.cfg"
    flagfile.write_text("\n".join([
        "--env=tests.target_env:Target-v0", "--num_agents=1", "--envs_per_agent=4",
        "--max_predict_batch=8", "--min_train_batch=16", "--hidden=16",
        "--log_every_seconds=5"]) + "\n")
    out = tmp_path / "records.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/vs_sb3.py", "--side=ga3c", f"--config={flagfile}",
         "--seeds=0,1", "--target=-100", "--steps=2000", f"--json={out}"],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["seed"] for r in records] == [0, 1]
    # Target's returns are in [-10, 0]: the first full window of 100 episodes reaches -100
    assert all(r["reached"] and r["episodes"] >= 100 for r in records)
    assert "ga3c: 2/2 seeds reached -100" in proc.stdout


def test_zoo_schedules_resolve_to_a_linear_decay():
    """"lin_7e-4" is the zoo's linear schedule: SB3 calls it with the progress remaining."""
    kwargs = vs_sb3.resolve({"learning_rate": "lin_7e-4", "gamma": 0.99})
    assert kwargs["gamma"] == 0.99
    assert kwargs["learning_rate"](1.0) == pytest.approx(7e-4)
    assert kwargs["learning_rate"](0.25) == pytest.approx(1.75e-4)


def test_side_both_alternates_per_seed_and_prints_the_wall_ratio(monkeypatch, capsys, tmp_path):
    calls = []

    def fake(side, seconds):
        def run(seed, *args, **kwargs):
            calls.append((side, seed))
            return dict(seed=seed, reached=True, steps_to_target=1000 * (seed + 1),
                        seconds_to_target=seconds * (seed + 1), final_score100=-200.0)
        return run

    monkeypatch.setattr(vs_sb3, "run_ga3c", fake("ga3c", 30.0))
    monkeypatch.setattr(vs_sb3, "run_sb3", fake("sb3", 120.0))
    out = tmp_path / "both.json"
    monkeypatch.setattr(sys, "argv", ["vs_sb3.py", "--side=both", "--seeds=0,1", f"--json={out}"])
    assert vs_sb3.main() == 0
    assert calls == [("ga3c", 0), ("sb3", 0), ("ga3c", 1), ("sb3", 1)]
    text = capsys.readouterr().out
    assert "seed 0: wall seconds to target ga3c 30, sb3 120: ratio ga3c/sb3 0.25" in text
    assert "seed 1: wall seconds to target ga3c 60, sb3 240: ratio ga3c/sb3 0.25" in text
    assert "ga3c: 2/2 seeds reached -250" in text and "sb3: 2/2 seeds reached -250" in text
    assert "sb3: steps to target: median 1,500, worst 2,000; seconds: median 180" in text
    assert [r["side"] for r in json.loads(out.read_text())] == ["ga3c", "sb3", "ga3c", "sb3"]
    never = dict(reached=False, steps_to_target=None, seconds_to_target=None)
    assert "not defined" in vs_sb3.wall_ratio_line(2, never, never)
