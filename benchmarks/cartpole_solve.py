"""Time-to-solve benchmark: the real `configs/cartpole.cfg`, several seeds, one after another.

    python benchmarks/cartpole_solve.py [--seeds=0,1,2,3,4] [--json=out.json] [-- extra flags]
    python benchmarks/cartpole_solve.py --stay_seconds=60     # does it stay solved?

For each seed it runs `ga3c-train` in a subprocess (the real CLI) and reads the run's
episodes.csv. It prints, per seed: seconds from training start to the moment the mean of
the last 100 training episodes first reached 475, env steps at that moment, and env steps/s
over the run (env steps / training seconds); then the medians. Flags after `--` are passed
to ga3c-train (e.g. `-- --num_agents=8`), so candidate settings can be compared side by side.

With `--stay_seconds=S` each seed trains for S seconds with the target out of reach (training
goes on after solving), then it also prints the mean of the last 100 training episodes at the
end and the greedy `ga3c-eval --episodes=100` score of the final policy.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLVED = 475.0
sys.path.insert(0, REPO)

from ga3c.rundir import RunDir  # noqa: E402  (no TensorFlow)


def solve_point(episodes_csv: str, window: int = 100, target: float = SOLVED):
    """(wall_time, env_steps) of the first episode after which the rolling mean >= target."""
    recent: collections.deque[float] = collections.deque(maxlen=window)
    last = None
    with open(episodes_csv, newline="") as f:
        for row in csv.DictReader(f):
            recent.append(float(row["episode_return"]))
            last = row
            if len(recent) == window and sum(recent) / window >= target:
                return float(row["wall_time"]), int(row["env_steps"]), last
    return None, None, last


def final_mean(episodes_csv: str, window: int = 100) -> float:
    with open(episodes_csv, newline="") as f:
        returns = [float(row["episode_return"]) for row in csv.DictReader(f)]
    return sum(returns[-window:]) / len(returns[-window:])


def greedy_eval(logdir: str, episodes: int, timeout: float) -> float:
    out = RunDir(logdir).eval_json("latest", "greedy")  # the latest checkpoint, greedy
    cmd = [sys.executable, "-c", "from ga3c.cli import eval_entry_point; eval_entry_point()",
           f"--logdir={logdir}", f"--episodes={episodes}", f"--json={out}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"ga3c-eval exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    with open(out) as f:
        return float(json.load(f)["mean"])


def run_seed(seed: int, extra: list[str], workdir: str, timeout: float,
             stay_seconds: float = 0.0) -> dict:
    logdir = os.path.join(workdir, f"seed{seed}")
    if stay_seconds:
        extra = ["--target_score=1e9", f"--max_seconds={stay_seconds:g}", *extra]
    cmd = [sys.executable, "-m", "ga3c.cli", f"--flagfile={REPO}/configs/cartpole.cfg",
           f"--logdir={logdir}", f"--seed={seed}", "--resume=false", *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    process_seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"seed {seed}: ga3c-train exited {proc.returncode}:\n"
                           f"{proc.stderr[-3000:]}")
    episodes_csv = RunDir(logdir).episodes_csv
    wall, steps, last = solve_point(episodes_csv)
    total_steps, total_wall = int(last["env_steps"]), float(last["wall_time"])
    row = dict(seed=seed, solved=wall is not None, solve_seconds=wall, solve_env_steps=steps,
               env_steps_per_s=total_steps / max(total_wall, 1e-9),
               process_seconds=process_seconds)
    if stay_seconds:
        row["final_score100"] = final_mean(episodes_csv)
        row["greedy_eval100"] = greedy_eval(logdir, 100, timeout)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--json", help="write the per-seed records here")
    parser.add_argument("--timeout", type=float, default=400.0, help="seconds per seed")
    parser.add_argument("--stay_seconds", type=float, default=0.0,
                        help="train this long past the solve (target out of reach), then "
                        "report the final score100 and a greedy 100-episode eval")
    parser.add_argument("--keep_dir", help="keep each seed's run directory here "
                        "(default: a temporary directory, removed at the end)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    print(f"configs/cartpole.cfg {' '.join(extra)}".strip())
    stay = args.stay_seconds
    print(f"{'seed':>4}  {'solved':>6}  {'seconds':>8}  {'env steps':>10}  {'env steps/s':>11}"
          + (f"  {'final score100':>14}  {'greedy eval100':>14}" if stay else ""))
    with tempfile.TemporaryDirectory(prefix="ga3c-solve-") as tmp:
        workdir = args.keep_dir or tmp
        for seed in seeds:
            r = run_seed(seed, extra, workdir, args.timeout, stay)
            rows.append(r)
            secs = f"{r['solve_seconds']:.1f}" if r["solved"] else "-"
            steps = f"{r['solve_env_steps']:,}" if r["solved"] else "-"
            print(f"{seed:>4}  {str(r['solved']):>6}  {secs:>8}  {steps:>10}  "
                  f"{r['env_steps_per_s']:>11,.0f}"
                  + (f"  {r['final_score100']:>14.1f}  {r['greedy_eval100']:>14.1f}"
                     if stay else ""),
                  flush=True)
    solved = [r for r in rows if r["solved"]]
    # A seed that did not solve counts as infinitely slow for the median.
    med = statistics.median([r["solve_seconds"] if r["solved"] else float("inf") for r in rows])
    med_steps = statistics.median([r["solve_env_steps"] if r["solved"] else float("inf")
                                   for r in rows])
    med_rate = statistics.median([r["env_steps_per_s"] for r in rows])
    print(f"median: {len(solved)}/{len(rows)} solved, {med:.1f} s, {med_steps:,.0f} env steps, "
          f"{med_rate:,.0f} env steps/s")
    if stay:
        print(f"after {stay:g} s: final score100 min {min(r['final_score100'] for r in rows):.1f}, "
              f"greedy eval100 min {min(r['greedy_eval100'] for r in rows):.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(extra_flags=extra, runs=rows, median_solve_seconds=med,
                           median_env_steps_per_s=med_rate), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
