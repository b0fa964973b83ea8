"""Smoke tests of the benchmark scripts (they are measured by hand, not in CI)."""

import json
import math
import os
import subprocess
import sys
import time

import pytest

from ga3c.autotune import Autotuner
from tests.test_cli import REPO, TINY, cli_env
from tests.test_ray import assert_all_gone, new_descendants

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import throughput  # noqa: E402
from cartpole_solve import solve_point  # noqa: E402

FIELDS = {"throughput", "env_steps_per_s", "predictions_per_s", "mean_predict_batch",
          "trainings_per_s", "mean_train_batch", "samples_per_s", "mean_predict_queue",
          "mean_train_queue", "policy_lag_mean", "policy_lag_p95", "cpu_percent", "peak_rss_mib",
          "gpu_percent", "ceiling_env_steps_per_s", "ceiling_predictions_per_s",
          "ceiling_samples_per_s", "ceiling_model_steps_per_s", "ratio_env", "ratio_predict",
          "ratio_train", "ratio_overall", "label", "sweep", "config", "best", "measured_at"}


def freeze_after_the_first_decision(monkeypatch) -> None:
    """Make `Autotuner.freeze` wait (bounded) for the tuner's first decision.

    A decision takes at least three windows (before, trial, after; five if the trial wins);
    on a loaded machine a fixed tuning time may end before it. Waiting for it instead keeps
    the tuning time as short as it can be and still checks that decisions are made: a tuner
    that never decides leaves `decisions` empty after the wait.
    """
    freeze = Autotuner.freeze

    def wait_then_freeze(tuner, *args, **kwargs):
        deadline = time.monotonic() + 60
        while not tuner.decisions and tuner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        freeze(tuner, *args, **kwargs)

    monkeypatch.setattr(Autotuner, "freeze", wait_then_freeze)


def warm_up_after_the_first_training(monkeypatch) -> None:
    """Make the benchmark's warm-ups start (bounded) once the pipeline has trained.

    A new model's first train step takes 0.5-2 s here under load, longer than the smoke
    test's warm-up: its short windows would then count no training at all. A pipeline that
    never trains still fails the test: its windows count no samples.
    """
    measure_window = throughput.measure_window

    def wait_then_measure(stats, *args, **kwargs):
        deadline = time.monotonic() + 60
        while stats.samples_trained == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        return measure_window(stats, *args, **kwargs)

    monkeypatch.setattr(throughput, "measure_window", wait_then_measure)


def test_throughput_smoke_writes_a_record_per_configuration(tmp_path, capsys, monkeypatch):
    """The benchmark's `main` in this process (TensorFlow imported once for every test), with
    the shortest windows, settling and ceilings that still measure something."""
    warm_up_after_the_first_training(monkeypatch)
    freeze_after_the_first_decision(monkeypatch)
    out = tmp_path / "t.json"
    code = throughput.main(
        ["--seconds=0.3", "--warmup=0.1", f"--json={out}", "--sweep=num_trainers=1,2",
         "--autotune_seconds=0.5", "--autotune_window_seconds=1", *TINY],
        pace=throughput.Pace(settle_seconds=0.25, min_ceiling_seconds=0.25))
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["sweep"] for r in records] == [{"num_trainers": "1"}, {"num_trainers": "2"},
                                             {"autotune": "true"}]
    assert sum(r["best"] for r in records) == 1 and not records[2]["best"]
    tuned = records[2]
    assert tuned["autotuned"] and tuned["config"]["pipeline"]["autotune"]
    assert set(tuned["layout"]) == {"agents", "predictors", "trainers"}
    assert tuned["decisions"], "the tuner made no decision"
    assert tuned["vs_best"] > 0 and "autotune reached" in stdout
    first = tuned["decisions"][0]
    assert f"{first['knob']} {first['before']} -> {first['after']}: " in stdout
    # The best swept layout, re-measured in the same service right after the tuned one.
    [best] = [r for r in records if r["best"]]
    assert tuned["compare_layout"] == best["layout"] and tuned["vs_best_side_by_side"] > 0
    assert tuned["tuned_throughput_again"] > 0
    for r in records[:2]:
        assert r["layout"]["trainers"] == int(r["sweep"]["num_trainers"])
    for r in records:
        assert FIELDS <= set(r), FIELDS - set(r)
        for key in ("env_steps_per_s", "ceiling_env_steps_per_s", "ceiling_predictions_per_s",
                    "ceiling_samples_per_s", "samples_per_s"):
            assert r[key] > 0, key
        assert 0 < r["ratio_overall"] < 5
    assert "*best*" in stdout


def test_sweeps_move_linked_flags_together_and_ray_rows_get_the_same_envs():
    assert throughput.parse_sweeps(["runner/num_agents=threads/2,ray/4", "num_trainers=1,2"]) == [
        {"runner": "threads", "num_agents": "2", "num_trainers": "1"},
        {"runner": "threads", "num_agents": "2", "num_trainers": "2"},
        {"runner": "ray", "num_agents": "4", "num_trainers": "1"},
        {"runner": "ray", "num_agents": "4", "num_trainers": "2"}]
    with pytest.raises(throughput.UserError, match="name1/name2=a1/a2"):
        throughput.parse_sweeps(["runner/num_agents=threads/2,ray"])
    same = throughput.same_envs
    assert same({"runner": "ray", "num_agents": "4", "envs_per_agent": "8"}, []) == {
        "runner": "ray", "num_runners": "4", "envs_per_agent": "8"}
    assert same({"runner": "ray"}, ["--num_agents=3"]) == {"runner": "ray", "num_runners": "3"}
    for combo, flags in (({"runner": "ray"}, ["--num_agents=3", "--num_runners=5"]),
                         ({"runner": "ray", "num_runners": "5"}, []),
                         ({"runner": "threads", "num_agents": "4"}, [])):
        assert same(combo, flags) == combo


def test_ray_rows_compare_with_threads_in_their_round_and_project_the_learner_bound(capsys):
    def record(runner, round_, thru, envs=8):
        return dict(runner=runner, round=round_, throughput=thru, num_envs=envs,
                    autotuned=False, ceiling_env_steps_per_s=10.0 * thru,
                    sweep={"runner": runner}, label=f"runner={runner} #{round_}")

    records = [record("threads", 1, 100.0), record("threads", 1, 90.0), record("ray", 1, 80.0),
               record("threads", 2, 200.0), record("ray", 2, 100.0), record("ray", 2, 5.0, 16)]
    throughput.compare_with_threads(records)
    assert [r.get("vs_threads") for r in records] == [None, None, 0.8, None, 0.5, None]
    assert records[2]["vs_threads_label"] == "runner=threads #1"
    assert records[4]["vs_threads_env_ceiling"] == 0.5
    ray_row = dict(runner="ray", ceiling_env_steps_per_s=1000.0, ceiling_runner_cpu_percent=50.0,
                   ceiling_cpu_percent=25.0, ceiling_model_steps_per_s=3000.0,
                   ceiling_runner_env_steps_per_s_stats={"min": 300.0, "median": 400.0,
                                                        "max": 500.0})
    # A runner steps 2,000/s per CPU second; the learner's Python side 4,000/s per CPU second,
    # its model 3,000/s: 1.5 busy runners, or 7.5 as fast as here, saturate it.
    assert throughput.project(ray_row) == dict(
        per_runner_cpu=2000.0, per_runner=400.0, model=3000.0, learner_python=4000.0,
        bound=3000.0, runners_busy=1.5, runners_here=7.5)
    assert throughput.project({**ray_row, "runner": "threads"}) is None
    assert throughput.project({**ray_row, "ceiling_runner_cpu_percent": None}) is None
    for r in records:
        r["projection"] = throughput.project(ray_row) if r["runner"] == "ray" else None
    throughput.summarise(records[:5], rounds=2)
    out = capsys.readouterr().out
    assert "runner=ray: throughput 90 (80, 100); vs threads 0.65 (0.80, 0.50)" in out
    assert "1.5-7.5 runners saturate it" in out
    assert records[0]["over_rounds"]["throughput"] == 100.0  # of 100, 90 and 200


@pytest.mark.ray
def test_throughput_sweeps_threads_and_ray_runners_and_leaves_no_ray_process(
        tmp_path, capsys, monkeypatch):
    """`--sweep=runner=threads,ray` in this process: the Ray row steps the threads row's envs
    (2 runners x 4), has its round trip and each runner's env steps/s and a ratio to the
    threads row; the Ray it started is gone at the end."""
    ray = pytest.importorskip("ray")
    warm_up_after_the_first_training(monkeypatch)
    out = tmp_path / "t.json"
    with new_descendants() as seen:  # Ray's GCS, raylet and workers are this one's
        code = throughput.main(
            ["--seconds=0.5", "--warmup=0.1", f"--json={out}", "--sweep=runner=threads,ray",
             *TINY], pace=throughput.Pace(settle_seconds=0.25, min_ceiling_seconds=0.25))
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr[-3000:]
    threads_row, ray_row = json.loads(out.read_text())
    assert ray_row["sweep"] == {"runner": "ray", "num_runners": "2"}
    assert ray_row["config"]["pipeline"]["runner"] == "ray"
    assert threads_row["num_envs"] == ray_row["num_envs"] == 8
    for r in (threads_row, ray_row):
        assert FIELDS <= set(r), FIELDS - set(r)
        assert math.isfinite(r["throughput"]) and r["throughput"] > 0
    assert threads_row["round_trip_p50_ms"] is None and not threads_row["runner_env_steps_per_s"]
    assert "vs_threads" not in threads_row
    for prefix in ("", "ceiling_"):  # the pipeline's window, and the free model's
        assert 0 < ray_row[f"{prefix}round_trip_p50_ms"] <= ray_row[f"{prefix}round_trip_p95_ms"]
        assert set(ray_row[f"{prefix}runner_env_steps_per_s"]) == {"runner-0", "runner-1"}
        spread = ray_row[f"{prefix}runner_env_steps_per_s_stats"]
        assert 0 < spread["min"] <= spread["median"] <= spread["max"]
    assert math.isfinite(ray_row["vs_threads"]) and ray_row["vs_threads"] > 0
    assert ray_row["vs_threads_label"] == "runner=threads"
    assert "rtt ms p50/p95" in stdout and "runner=ray num_runners=2" in stdout
    assert not ray.is_initialized()
    assert len(seen) >= 3, seen  # at least GCS, raylet and a runner's worker
    assert_all_gone(seen)


def test_throughput_bad_sweep_is_one_line():
    proc = subprocess.run([sys.executable, "benchmarks/throughput.py", "--sweep=num_agents"],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "throughput.py: error: --sweep='num_agents': expected name=v1,v2,... or "
        "name1/name2=a1/a2,b1/b2,..."]


def test_solve_point_finds_the_first_window_at_target(tmp_path):
    path = tmp_path / "episodes.csv"
    rows = ["wall_time,env_steps,episode_return,episode_length"]
    rows += [f"{i * 0.1:.1f},{(i + 1) * 100},{400.0 if i < 100 else 500.0},1" for i in range(180)]
    path.write_text("\n".join(rows) + "\n")
    wall, steps, _ = solve_point(str(path), window=100, target=475.0)
    # mean of the last 100 >= 475 first when 75 of them are 500: the 175th episode (index 174)
    assert (wall, steps) == (17.4, 17500)
    assert solve_point(str(path), window=100, target=501.0)[:2] == (None, None)


def test_learning_table_from_a_hand_made_run(tmp_path):
    from learning_table import first_reach, table

    from ga3c.plot import read_episodes

    # A run killed after its checkpoint at 610 steps wrote a game at 700; it resumed from 610.
    rows = [(60, 100, -21), (120, 250, -20), (180, 420, -19), (240, 610, -10), (300, 650, 5),
            (330, 1000, 7)]
    text = "wall_time,env_steps,episode_return,episode_length\n" + "".join(
        f"{t},{s},{r},10\n" for t, s, r in rows[:4]) + "250,700,99,10\n" + "".join(
        f"{t},{s},{r},10\n" for t, s, r in rows[4:])
    (tmp_path / "episodes.csv").write_text(text)
    ep = read_episodes(str(tmp_path))
    assert list(ep["episode_return"]) == [-21, -20, -19, -10, 5, 7]  # 99 was superseded
    lines = table(ep, every=500, window=2, frames_per_step=4)
    # At 500 steps: games ending at 100, 250, 420 -> last two -20, -19; at 1,000: all six.
    assert lines[2:] == ["| 500 | 0.0M | 3 min | 3 | -19.50 | -19 |",
                         "| 1,000 | 0.0M | 6 min | 6 | 6.00 | 7 |"]
    assert first_reach(ep, 2, -10) == 4 and first_reach(ep, 2, 10) is None


def test_learning_table_over_seeds_median_worst_and_hold(tmp_path):
    from learning_table import reach_lines, seeds_table

    from ga3c.plot import expand, read_episodes

    games = {  # (env_steps, return) per seed
        "s0": [(100, 0), (200, 10), (300, 20), (400, 20), (500, 5), (600, 20)],
        "s1": [(100, 0), (200, 0), (300, 10), (400, 20), (500, 20), (600, 20)],
        "s2": [(100, 0), (200, 0), (300, 0), (400, 0)],
    }
    for name, rows in games.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "episodes.csv").write_text(
            "wall_time,env_steps,episode_return,episode_length\n"
            + "".join(f"{s / 10},{s},{r},10\n" for s, r in rows))
    runs = [(d.rsplit("/", 1)[-1], read_episodes(d)) for d in expand(str(tmp_path / "s*"))]
    assert [name for name, _ in runs] == ["s0", "s1", "s2"]
    lines = seeds_table(runs, every=200, window=2)
    # at 200: s0 (0+10)/2, s1 0, s2 0; at 400: 20, 15, 0; at 600 s2 has ended: 12.5, 20
    assert lines[2:] == ["| 200 | 5.00 | 0.00 | 0.00 | 0.00 | 0.00 |",
                         "| 400 | 20.00 | 15.00 | 0.00 | 15.00 | 0.00 |",
                         "| 600 | 12.50 | 20.00 |  | 16.25 | 12.50 |"]
    out = reach_lines(runs, window=2, target=20, hold=14)
    # s0 first reaches a mean of 20 at 400, then falls to 12.5 at 500; s1 at 500, stays
    assert out[0] == ("mean of last 2 >= 20: median seed 500, worst seed not reached "
                      "agent steps")
    assert out[1] == "  s0: at 400 agent steps (1 min), lowest after: 12.50, FELL below 14"
    assert out[2] == "  s1: at 500 agent steps (1 min), lowest after: 20.00, stayed >= 14"
    assert out[3] == "  s2: not reached in 400 agent steps"


def test_precision_counts_the_nature_cnn_by_hand_and_runs(tmp_path, capsys):
    """benchmarks/precision.py: the Nature CNN's multiply-adds per row, counted by hand
    (conv 8x8/4 -> 20x20x32, 4x4/2 -> 9x9x64, 3x3/1 -> 7x7x64, fc 3136 -> 512, heads 6 + 1),
    and a one-round run on CartPole that prints both precisions and writes its JSON."""
    import precision

    from ga3c.config import NetworkConfig
    from ga3c.network import build_network

    pytest.importorskip("tensorflow")
    model = build_network((84, 84, 4), "uint8", 6, NetworkConfig(cnn="nature"))
    by_hand = (20 * 20 * 32 * 8 * 8 * 4 + 9 * 9 * 64 * 4 * 4 * 32 + 7 * 7 * 64 * 3 * 3 * 64
               + 3136 * 512 + 512 * 6 + 512)
    assert precision.multiply_adds(model) == by_hand == 9_346_560
    assert precision.train_flops(model, 80, 16) == 2 * by_hand * (3 * 80 + 16)
    out = tmp_path / "p.json"
    assert precision.main([*TINY, "--rounds=1", "--calls=2", f"--json={out}"]) == 0
    record = json.loads(out.read_text())
    assert set(record["parts"]) == {"predict@16", "next_values@16", "train@80"}
    assert all(p["float32_ms"] > 0 and p["bfloat16_ms"] > 0 for p in record["parts"].values())
    assert "bf16 flags:" in capsys.readouterr().out


def test_dead_units_reads_a_cnn_checkpoint_and_refuses_an_mlp_one(tmp_path, capsys,
                                                                trained_run):
    """benchmarks/dead_units.py on a tiny leaky_relu Catch run: one line per trunk layer under
    the trunk's names, 32 conv0 channels whose kernel sums are the checkpoint's; an MLP run
    (CartPole) is one line, exit 2."""
    import dead_units

    import ga3c
    from tests.test_cli import train_cli

    logdir = str(tmp_path / "catch")
    proc = train_cli("--env=tests.catch_env:Catch84-v0", "--cnn=nature",
                     "--activation=leaky_relu", "--num_agents=1", "--envs_per_agent=2",
                     "--max_predict_batch=2", "--min_train_batch=10", f"--logdir={logdir}",
                     "--max_env_steps=200")
    assert proc.returncode == 0, proc.stderr[-3000:]
    capsys.readouterr()
    assert dead_units.main([f"--logdir={logdir}", "--envs=2", "--steps=20", "--every=5"]) == 0
    out = capsys.readouterr().out
    assert "8 frames" in out
    for layer, units in [("conv0", 32), ("conv1", 64), ("conv2", 64), ("dense", 512)]:
        assert f"  {layer}: " in out and f" of {units} units fire" in out, out
    kernel = ga3c.load_policy(logdir, checkpoint="latest").model.get_layer("conv0").kernel
    sums = kernel.numpy().reshape(-1, 32).sum(axis=0)
    rows = [line.split() for line in out.splitlines() if line.startswith("    ")]
    assert [int(r[0]) for r in rows] == list(range(32))
    assert all(0.0 <= float(r[1]) <= 1.0 for r in rows)
    assert [float(r[2]) for r in rows] == pytest.approx(sums, abs=0.006)
    assert dead_units.main([f"--logdir={trained_run[0]}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no conv0" in err[0], err
