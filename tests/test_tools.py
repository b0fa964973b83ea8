"""ga3c-eval and ga3c-plot through their real entry points."""

import json
import os
import subprocess

import numpy as np
import pytest

from ga3c.cli import eval_main, plot_main
from ga3c.plot import rolling_mean
from tests.test_cli import assert_one_line_error, copy_run, snapshot


def run_eval(capsys, *args):
    """ga3c-eval's entry point in this process (TensorFlow is imported once, not per call)."""
    capsys.readouterr()
    code = eval_main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["ga3c-eval", *args], code, out.out, out.err)


def assert_eval_error(proc, *needles):
    assert_one_line_error(proc, *needles, prog="ga3c-eval")


def test_eval_plays_episodes_and_writes_a_summary(trained_run, tmp_path, capsys):
    logdir, _ = trained_run
    out = tmp_path / "summary.json"
    proc = run_eval(capsys, f"--logdir={logdir}", "--episodes=3", f"--json={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["episodes"] == 3 and len(summary["returns"]) == 3
    assert summary["env"] == "CartPole-v1" and summary["policy"] == "greedy"
    assert summary["mean"] == pytest.approx(np.mean(summary["returns"]))
    assert summary["min"] <= summary["mean"] <= summary["max"]
    assert all(r == length for r, length in zip(summary["returns"], summary["lengths"]))
    assert "ckpt-" in summary["checkpoint"]
    assert "mean" in proc.stdout and "CartPole-v1" in proc.stdout


def test_eval_sampled_policy_with_video(trained_run, tmp_path, capsys):
    pytest.importorskip("moviepy")
    pytest.importorskip("pygame")
    logdir, _ = trained_run
    videos = tmp_path / "videos"
    proc = run_eval(capsys, f"--logdir={logdir}", "--episodes=2", "--policy=sample",
                    f"--video_dir={videos}", f"--json={tmp_path / 's.json'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    mp4s = sorted(p for p in os.listdir(videos) if p.endswith(".mp4"))
    assert len(mp4s) == 2 and all((videos / p).stat().st_size > 0 for p in mp4s)


@pytest.mark.parametrize("make_args, needles", [
    (lambda run, tmp: [f"--logdir={tmp}/nowhere"], ["does not exist"]),
    (lambda run, tmp: [f"--logdir={tmp}"], ["no config.json"]),
    (lambda run, tmp: [f"--logdir={run}", "--env=Acrobot-v1"], ["env mismatch"]),
    (lambda run, tmp: [f"--logdir={run}", f"--checkpoint={tmp}/ckpt-1"], ["not found"]),
    (lambda run, tmp: [f"--logdir={run}", "--episodes=0"], ["--episodes=0"]),
    (lambda run, tmp: [f"--logdir={run}", "--policy=random"], ["policy"]),
    (lambda run, tmp: [f"--logdir={run}", "--stall_steps=-1"], ["--stall_steps=-1"]),
    (lambda run, tmp: [], ["--logdir is required"]),
])
def test_eval_bad_input_is_one_line_exit_2(trained_run, tmp_path, capsys, make_args, needles):
    before = snapshot(trained_run[0])
    proc = run_eval(capsys, *make_args(trained_run[0], tmp_path))
    assert_eval_error(proc, *needles)
    assert snapshot(trained_run[0]) == before


def test_eval_without_checkpoint_is_refused(trained_run, tmp_path, capsys):
    logdir = tmp_path / "nockpt"
    logdir.mkdir()
    (logdir / "config.json").write_text(open(os.path.join(trained_run[0], "config.json")).read())
    assert_eval_error(run_eval(capsys, f"--logdir={logdir}"), "no checkpoint")


def write_csv(logdir, rows, tail=""):
    logdir.mkdir(parents=True)
    lines = ["wall_time,env_steps,episode_return,episode_length"]
    lines += [f"{w},{s},{r},{int(r)}" for w, s, r in rows]
    (logdir / "episodes.csv").write_text("\n".join(lines) + "\n" + tail)


def test_plot_overlays_runs_into_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        steps = np.cumsum(rng.integers(10, 50, 300))
        write_csv(tmp_path / name, [(i * 0.1, s, float(rng.integers(10, 500))) for i, s in
                                    enumerate(steps)], tail="12.5,99")  # a half-written row
    out = tmp_path / "curve.png"
    code = plot_main([f"--logdir={tmp_path / 'a'}", f"--logdir={tmp_path / 'b'}",
                      f"--out={out}", "--window=20"])
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_plot_draws_seeds_of_a_config_as_mean_and_band(tmp_path):
    pytest.importorskip("matplotlib")
    from ga3c.plot import seed_band

    rng = np.random.default_rng(1)
    for name in ("cfg_s0", "cfg_s1", "cfg_s2", "other"):
        steps = np.cumsum(rng.integers(10, 50, 200))
        write_csv(tmp_path / name, [(i * 0.1, s, float(rng.integers(0, 100))) for i, s in
                                    enumerate(steps)])
    out = tmp_path / "seeds.png"
    assert plot_main([f"--logdir={tmp_path / 'cfg_s*'}", f"--logdir={tmp_path / 'other'}",
                      f"--out={out}", "--window=10"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the band: mean, min and max over the seeds where all of them have a value
    x, mean, low, high = seed_band([(np.array([0.0, 10.0]), np.array([1.0, 3.0])),
                                    (np.array([0.0, 5.0, 8.0]), np.array([2.0, 4.0, 6.0]))],
                                   points=3)
    assert x.tolist() == [0.0, 4.0, 8.0]
    assert mean.tolist() == [1.5, 1.5, 3.5] and low.tolist() == [1.0, 1.0, 1.0]
    assert high.tolist() == [2.0, 2.0, 6.0]


@pytest.mark.parametrize("argv, needle", [
    ([], "--logdir"),
    (["--logdir=/nonexistent/run_s*"], "matches no run directory"),
    (["--logdir=/nonexistent/run"], "no episodes.csv"),
    (["--logdir=RUN", "--window=0"], "--window=0"),
    (["--logdir=RUN", "--out=/nonexistent/dir/x.png"], "does not exist"),
    (["--logdir=RUN", "--out=curve.svg"], "must be a .png"),
])
def test_plot_bad_input(tmp_path, capsys, argv, needle):
    pytest.importorskip("matplotlib")
    write_csv(tmp_path / "run", [(0.1, 10, 5.0)])
    argv = [a.replace("RUN", str(tmp_path / "run")) for a in argv]
    assert plot_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_plot_reads_only_complete_rows_and_drops_rows_a_resume_superseded(tmp_path):
    from ga3c.plot import read_episodes

    # a killed run wrote rows at 300 and 400 past its checkpoint at 200; the resumed run
    # went on from 200; a half-written row "9.9,500,1" has only three fields
    rows = [(1.0, 100, 10.0), (2.0, 200, 20.0), (3.0, 300, 30.0), (4.0, 400, 40.0),
            (2.5, 250, 25.0), (3.5, 350, 35.0)]
    write_csv(tmp_path / "r", rows, tail="9.9,500,1")
    data = read_episodes(str(tmp_path / "r"))
    assert data["env_steps"].tolist() == [100, 200, 250, 350]
    assert data["episode_return"].tolist() == [10.0, 20.0, 25.0, 35.0]


def test_rolling_mean_matches_naive():
    x = np.arange(10, dtype=float) ** 2
    want = [np.mean(x[max(0, i - 3):i + 1]) for i in range(10)]
    np.testing.assert_allclose(rolling_mean(x, 4), want)


def test_eval_refuses_a_checkpoint_that_does_not_fit_the_saved_config(trained_run, tmp_path,
                                                                       capsys):
    logdir = copy_run(trained_run, tmp_path, "wrongnet")
    path = os.path.join(logdir, "config.json")
    config = json.loads(open(path).read())
    config["network"]["hidden"] = [32]
    with open(path, "w") as f:
        json.dump(config, f)
    assert_eval_error(run_eval(capsys, f"--logdir={logdir}"), "cannot restore checkpoint")


class ScriptedVectorEnv:
    """Envs whose rewards follow a script per env (then 0 forever), never ending by
    themselves unless the script says so: for the evaluator's stall cutoff."""

    def __init__(self, scripts, ends):
        self.scripts, self.ends, self.t = scripts, ends, 0

    def reset(self, seed=None):
        return np.zeros((len(self.scripts), 1), np.float32), {}

    def step(self, actions):
        t, self.t = self.t, self.t + 1
        reward = np.array([s[t] if t < len(s) else 0.0 for s in self.scripts])
        terminated = np.array([t + 1 == e for e in self.ends])
        return (np.zeros((len(self.scripts), 1), np.float32), reward, terminated,
                np.zeros(len(self.scripts), bool), {})

    def close(self):
        pass


def test_eval_ends_an_episode_without_reward_for_stall_steps(monkeypatch):
    import ga3c.evaluate as ev

    # env 0: rewards at steps 0 and 4, then none (stalls 5 steps later, at length 10);
    # env 1: ends by itself at 3; env 2: a reward every step until it ends at 12
    scripts = [[1, 0, 0, 0, 2], [], [1] * 12]
    monkeypatch.setattr(ev, "make_vector_env",
                        lambda env_id, n, cfg: ScriptedVectorEnv(scripts, [None, 3, 12]))
    returns, lengths, stalled = ev.play_vector("x", None, 3, 0, lambda obs: np.zeros(3), 5)
    assert (returns, lengths, stalled) == ([3.0, 0.0, 12.0], [10, 3, 12], 1)
    assert "1 of 3 episodes had no reward in 5 steps" in ev.stall_note(1, 3, 5)
    assert ev.stall_note(0, 3, 5) == ""


def test_plot_updates_draws_the_instruments_of_a_run(tmp_path):
    pytest.importorskip("matplotlib")
    from ga3c.plot import read_updates
    from ga3c.stats import Stats

    run = tmp_path / "run"
    write_csv(run, [(i * 0.1, 100 * (i + 1), float(i % 5)) for i in range(50)])
    stats = Stats()
    stats.log_updates_to(str(run / "updates.csv"))
    for i in range(200):
        stats.add_env_steps(25, np.zeros(0), np.zeros(0))
        stats.add_training(80, np.zeros(80), {"logit_spread": 1.0, "explained_variance": 0.5,
                                              "entropy": 1.7},
                           {"max_abs_advantage": 1.0, "max_step": 2.0, "max_step_unclipped": 9.0,
                            "dead_relu/conv0": i / 200, "dead_relu/dense": 0.4})
    stats.close()
    with open(run / "updates.csv", "a") as f:
        f.write("201,5025,1.0")  # a row cut short by a kill
    up = read_updates(str(run))
    assert len(up["update"]) == 200 and up["dead_relu/conv0"][-1] == pytest.approx(0.995)
    out = tmp_path / "updates.png"
    assert plot_main([f"--logdir={run}", "--updates", f"--out={out}", "--window=10",
                      "--from_steps=1000"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_csv(tmp_path / "plain", [(0.1, 10, 5.0)])
    assert plot_main([f"--logdir={tmp_path / 'plain'}", "--updates", f"--out={out}"]) == 2
