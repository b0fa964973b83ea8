"""This tree's throughput against another commit's, interleaved round by round in one script.

    python benchmarks/compare_commits.py --base=5ced9ac --rounds=3 -- \\
        --flagfile=configs/cartpole.cfg --seconds=15

Checks `--base` out into a temporary git worktree, then runs `benchmarks/throughput.py` with
the flags after `--`, alternately in that worktree (its own ga3c, first on PYTHONPATH) and in
this one, `--rounds` times, so both see the same machine load. Prints each round's pipeline
env steps/s and env-only ceiling for both, the medians, and the median of the per-round
ratios (this tree / base). The worktree is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_throughput(tree: str, flags: list[str], out: str) -> dict:
    """One throughput.py run in `tree`; its first JSON record."""
    env = dict(os.environ, PYTHONPATH=tree)
    proc = subprocess.run([sys.executable, os.path.join(tree, "benchmarks", "throughput.py"),
                           *flags, f"--json={out}"], cwd=tree, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"throughput.py failed in {tree}:\n{proc.stderr[-3000:]}")
    with open(out) as f:
        records = json.load(f)
    return records[0] if isinstance(records, list) else records


def per_cpu_of(records: list[dict]) -> list[float]:
    """Env steps per CPU second of the benchmark's process: less moved by other load on the
    machine than env steps per wall second."""
    return [r["env_steps_per_s"] / max(r["cpu_percent"] / 100, 1e-9) for r in records]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    args, flags = parser.parse_known_args(argv)
    flags = [f for f in flags if f != "--"]
    rows = {"base": [], "this": []}
    with tempfile.TemporaryDirectory() as scratch:
        base_tree = os.path.join(scratch, "base")
        subprocess.run(["git", "worktree", "add", "--detach", "-q", base_tree, args.base],
                       cwd=REPO, check=True)
        try:
            for r in range(args.rounds):
                for name, tree in (("base", base_tree), ("this", REPO)):
                    rec = run_throughput(tree, flags, os.path.join(scratch, f"{name}{r}.json"))
                    rows[name].append(rec)
                    print(f"round {r + 1} {name}: {rec['env_steps_per_s']:,.0f} env steps/s "
                          f"(env-only ceiling {rec['ceiling_env_steps_per_s']:,.0f})", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", base_tree], cwd=REPO)
    cpu_ratios = [t / b for t, b in zip(per_cpu_of(rows["this"]), per_cpu_of(rows["base"]))]
    ratios = [t["env_steps_per_s"] / b["env_steps_per_s"] for t, b in zip(rows["this"], rows["base"])]
    per_cpu = {name: per_cpu_of(rows[name]) for name in rows}
    for name in rows:
        rates = [r["env_steps_per_s"] for r in rows[name]]
        ceilings = [r["ceiling_env_steps_per_s"] for r in rows[name]]
        print(f"{name} ({args.base if name == 'base' else 'this tree'}): median "
              f"{statistics.median(rates):,.0f} env steps/s, env-only ceiling "
              f"{statistics.median(ceilings):,.0f}; {statistics.median(per_cpu[name]):,.0f} "
              "env steps per CPU second (this process's)")
    print(f"this / base, median of {args.rounds} rounds: {statistics.median(ratios):.2f} "
          f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}); per CPU second: "
          f"{statistics.median(cpu_ratios):.2f} (rounds: {', '.join(f'{x:.2f}' for x in cpu_ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
