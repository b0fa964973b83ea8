"""episodes.csv: one reader for resume and plots; rates over a window; the stability
instruments' windows, the collapse warning and updates.csv."""

import csv
import os
import time

import numpy as np
import pytest

from ga3c.stats import (CSV_HEADER, Stats, Window, collapse_warning, read_episode_rows,
                        read_recent_returns)


def write(path, rows, tail=""):
    path.write_text(",".join(CSV_HEADER) + "\n" + "".join(f"{r}\n" for r in rows) + tail)


def test_reader_skips_header_and_rows_cut_short(tmp_path):
    p = tmp_path / "episodes.csv"
    write(p, ["1.0,10,5.0,5", "2.0,20,7.0,7", "2.5,25"], tail="3.0,30,9")  # 2 cut rows
    np.testing.assert_array_equal(read_episode_rows(str(p)),
                                  [[1.0, 10, 5.0, 5], [2.0, 20, 7.0, 7]])


def test_resume_counts_only_rows_the_checkpoint_covers(tmp_path):
    p = tmp_path / "episodes.csv"
    write(p, [f"{i}.0,{i * 10},{i}.0,1" for i in range(1, 8)])
    assert read_recent_returns(str(p), max_env_steps=50) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert read_recent_returns(str(p), max_env_steps=50, count=2) == [4.0, 5.0]
    assert read_recent_returns(str(tmp_path / "missing.csv"), max_env_steps=50) == []


def test_rows_a_resumed_run_superseded_are_dropped_at_its_mark(tmp_path):
    """A run killed at 70 steps with its checkpoint at 40 logged episodes at 50-70; the
    resumed run replays 40-70. Readers see the checkpoints' history: 10-40, then the new
    rows; the file keeps every row. The resumed run's first episode ends at 65, past two of
    the killed run's rows: only the mark can tell those (50, 60) are superseded."""
    p = tmp_path / "episodes.csv"
    write(p, [f"{i}.0,{i * 10},{i}.0,1" for i in range(1, 8)])  # 10 ... 70
    stats = Stats(None, start_env_steps=40)
    stats.log_episodes_to(str(p))
    stats.add_env_steps(25, np.array([-1.0]), np.array([2]))  # at 65
    stats.add_env_steps(20, np.array([-2.0]), np.array([3]))  # at 85
    stats.close()
    rows = read_episode_rows(str(p))
    assert rows[:, 1].tolist() == [10, 20, 30, 40, 65, 85]
    assert rows[:, 2].tolist() == [1.0, 2.0, 3.0, 4.0, -1.0, -2.0]
    assert len(p.read_text().splitlines()) == 1 + 7 + 1 + 2  # header, old rows, mark, new


def test_files_without_the_mark_rewind_where_env_steps_go_back(tmp_path):
    p = tmp_path / "episodes.csv"
    write(p, ["1.0,10,1.0,1", "2.0,20,2.0,1", "3.0,30,3.0,1", "4.0,25,9.0,1", "5.0,35,8.0,1"])
    assert read_episode_rows(str(p))[:, 1].tolist() == [10, 20, 25, 35]


def test_stats_writes_rows_and_rates_are_per_window(tmp_path):
    p = tmp_path / "episodes.csv"
    stats = Stats(str(p))
    stats.add_env_steps(100, np.array([3.0]), np.array([3]))
    time.sleep(0.05)
    w = stats.window()
    assert w.env_steps == 100 and w.total_episodes == 1 and w.mean_score == 3.0
    assert w.env_steps_per_s > 0
    w2 = stats.window(stats.snapshot())  # nothing since: a rate, not an average since start
    assert w2.env_steps == 0 and w2.env_steps_per_s == 0.0 and w2.total_env_steps == 100
    stats.close()
    rows = read_episode_rows(str(p))
    assert rows.shape == (1, 4) and rows[0, 1] == 100 and rows[0, 2] == 3.0


def test_any_number_of_readers_share_the_counters():
    """Reading changes nothing: two readers with their own snapshots see the same window,
    with the losses and policy lags of the training batches inside it only."""
    stats = Stats(None)
    stats.add_training(4, np.array([1, 1, 1, 1]), {"loss": 10.0})
    a = stats.snapshot()
    stats.add_env_steps(50, np.zeros(0), np.zeros(0))
    stats.add_training(2, np.array([3, 5]), {"loss": 2.0})
    stats.add_training(2, np.array([7, 9]), {"loss": 4.0})
    b = stats.snapshot()
    first, second = stats.window(a, b), stats.window(a, b)
    assert first.env_steps == second.env_steps == 50
    assert first.losses == second.losses == {"loss": 3.0}
    assert first.policy_lag_mean == second.policy_lag_mean == 6.0
    assert first.mean_train_batch == 2.0
    since_start = stats.window(until=b)
    assert since_start.trainings_per_s * since_start.seconds == pytest.approx(3)
    assert since_start.losses == {"loss": 16.0 / 3}
    assert first.throughput == min(first.env_steps_per_s, first.samples_per_s) > 0


def test_ray_runners_rates_and_round_trips_are_per_window():
    """Each runner's env steps/s and the round-trip percentiles cover the window only; the
    console shows them only when runners report (never under --runner=threads)."""
    stats = Stats(None)
    stats.add_env_steps(10, np.zeros(0), np.zeros(0))  # an agent's: no source
    assert stats.window().runners_text() == "" and stats.window().round_trip_p50 is None
    stats.add_env_steps(100, np.zeros(0), np.zeros(0), source="runner-0")
    stats.add_round_trip(9.0)  # before the window: left out
    a = stats.snapshot()
    stats.add_env_steps(30, np.zeros(0), np.zeros(0), source="runner-10")
    stats.add_env_steps(60, np.zeros(0), np.zeros(0), source="runner-2")
    for t in range(1, 101):
        stats.add_round_trip(t / 1000)
    b = stats.snapshot()
    w = stats.window(a, b)
    assert {k: v * w.seconds for k, v in w.source_env_steps_per_s.items()} == pytest.approx(
        {"runner-0": 0, "runner-2": 60, "runner-10": 30})
    assert w.round_trip_p50 == pytest.approx(0.0505) and w.round_trip_p95 == pytest.approx(0.09505)
    text = w.runners_text()
    assert text.startswith("  runner env/s 0 ") and text.endswith("rtt p50 50.5 p95 95.0 ms")
    assert text.index(f"{60 / w.seconds:,.0f}") < text.rindex(f"{30 / w.seconds:,.0f}")
    assert w.console_line({"predict": 0}).endswith(text)
    for i in range(3, 6):  # past four runners: min / median / max
        stats.add_env_steps(1, np.zeros(0), np.zeros(0), source=f"runner-{i}")
    assert "runner env/s min " in stats.window(a).runners_text()
    assert "(6)" in stats.window(a).runners_text()
    # a runner that ended (retired) is left out of windows after its last steps
    stats.end_source("runner-5")
    assert "(6)" in stats.window(a).runners_text()  # its steps are in this one
    c = stats.snapshot()
    stats.add_env_steps(1, np.zeros(0), np.zeros(0), source="runner-4")
    assert set(stats.window(c).source_env_steps_per_s) == {f"runner-{i}" for i in
                                                           (0, 2, 10, 3, 4)}
    assert stats.snapshot().source_steps["runner-5"] == 1  # still counted


def test_dropped_transitions_are_counted_and_shown_only_when_some_were():
    """Transitions lost with dead Ray runner actors: per window and in all, on the console
    (after the runners' rates) only once there are some."""
    stats = Stats(None)
    stats.add_env_steps(100, np.zeros(0), np.zeros(0), source="runner-0")
    w = stats.window()
    assert w.dropped_transitions == w.total_dropped_transitions == 0
    assert "dropped" not in w.console_line({"predict": 0})
    stats.add_dropped(37)
    a = stats.snapshot()
    stats.add_dropped(5)
    w = stats.window(a)
    assert (w.dropped_transitions, w.total_dropped_transitions) == (5, 42)
    assert stats.dropped_transitions == 42
    assert w.runners_text().endswith("  dropped 42")
    assert w.console_line({"predict": 0}).endswith("  dropped 42")


# -- the stability instruments: windows, the collapse warning, updates.csv ----------------

def test_probe_windows_have_mean_and_max_over_their_updates(tmp_path):
    stats = Stats()
    start = stats.snapshot()
    for i, (dead, step) in enumerate([(0.1, 1.0), (0.3, 9.0), (0.2, 2.0)]):
        stats.add_training(8, np.zeros(8), {"loss": float(i)},
                           {"dead_relu/dense": dead, "max_step": step})
        if i == 0:
            first = stats.snapshot()
    w = stats.window(start)
    assert w.probes_mean == pytest.approx({"dead_relu/dense": 0.2, "max_step": 4.0})
    assert w.probes_max == pytest.approx({"dead_relu/dense": 0.3, "max_step": 9.0})
    later = stats.window(first)
    assert later.probes_max["max_step"] == 9.0 and later.probes_mean["max_step"] == 5.5
    assert "dead 20%  step 9.0x" in w.console_line({})
    assert stats.window(stats.snapshot()).probes_mean == {}  # no update in it


def window(spread, ev, dead=0.0, steps=1000, step=1.0):
    return Window(seconds=10, env_steps=0, episodes=0, total_env_steps=steps, total_episodes=0,
                  env_steps_per_s=0, predictions_per_s=0, trainings_per_s=0, samples_per_s=0,
                  mean_predict_batch=0, mean_train_batch=0, mean_score=None,
                  policy_lag_mean=None, policy_lag_p95=None,
                  losses={"logit_spread": spread, "explained_variance": ev}, rss_mib=0,
                  probes_mean={"dead_relu/dense": dead},
                  probes_max={"max_step": step, "max_abs_advantage": 1.5})


def test_collapse_warning_when_spread_or_ev_halves_within_a_window():
    line = collapse_warning(window(1.23, 0.93), window(0.61, 0.41, dead=0.9, steps=2_051_234,
                                                       step=9.9))
    assert line == ("warning: logit spread 1.23 -> 0.61 and explained variance 0.93 -> 0.41 "
                    "within one window, at 2,051,234 env steps; dead ReLUs dense 0% -> 90%; "
                    "largest step 9.9x lr, largest |advantage| 1.50")
    assert "explained variance" not in collapse_warning(window(1.2, 0.9), window(0.5, 0.8))
    assert collapse_warning(window(1.2, 0.9), window(0.7, 0.5)) is None  # less than half
    assert collapse_warning(window(0.15, 0.25), window(0.01, 0.01)) is None  # below floors
    assert collapse_warning(window(0.5, 0.9), window(0.6, 0.95)) is None  # rose


def test_updates_csv_has_a_row_per_update_with_probes(tmp_path):
    path = tmp_path / "updates.csv"
    stats = Stats()
    stats.log_updates_to(str(path))
    stats.add_env_steps(100, np.zeros(0), np.zeros(0))
    stats.add_training(8, np.array([1, 3]), {"loss": 0.5}, {"max_step": 2.0})
    stats.add_training(8, np.array([0, 0]), {"loss": 0.25}, {"max_step": 1.0})
    stats.close()
    rows = list(csv.DictReader(open(path)))
    assert [r["update"] for r in rows] == ["1", "2"]
    assert rows[0]["env_steps"] == "100" and float(rows[0]["lag_mean"]) == 2.0
    assert float(rows[1]["loss"]) == 0.25 and float(rows[1]["max_step"]) == 1.0
    stats = Stats()  # a resumed run appends, without a second header
    stats.log_updates_to(str(path))
    stats.add_training(8, np.zeros(2), {"loss": 0.1}, {"max_step": 3.0})
    stats.close()
    assert [r["update"] for r in csv.DictReader(open(path))] == ["1", "2", "1"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_under_the_logs_is_a_log_write_error():
    """/dev/full fails every flush with ENOSPC, as a full disk fails the logs' buffered
    writes: the flush (a snapshot, a full buffer in a worker thread) raises LogWriteError
    naming the file, which the service reports as one line."""
    from ga3c.errors import LogWriteError

    stats = Stats(None)
    stats.log_episodes_to("/dev/full")
    stats.add_env_steps(10, np.array([1.0]), np.array([10]))
    with pytest.raises(LogWriteError, match="cannot write /dev/full: No space left on device"):
        stats.snapshot()
    stats = Stats(None)
    stats.log_updates_to("/dev/full")
    with pytest.raises(LogWriteError, match="cannot write /dev/full: No space left on device"):
        for _ in range(5000):  # fills the 64 KiB buffer: the write in add_training flushes it
            stats.add_training(8, np.zeros(8), {"policy": 0.123456789, "value": 1.0})
