"""A learning curve as a Markdown table: score at milestones of agent steps, from episodes.csv.

    python benchmarks/learning_table.py --logdir=runs/pong --every=500000 [--window=20]

For each milestone (every `--every` agent steps) it prints the training time and episodes at
that point and the mean, over the last `--window` finished games, of the score; plus the first
step at which that mean reached each `--reach` score. Rows a resume superseded are dropped
(as in ga3c-plot), so the table is the run as it continued.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ga3c.errors import UserError
from ga3c.plot import read_episodes, rolling_mean


def table(ep: dict[str, np.ndarray], every: int, window: int, frames_per_step: int
          ) -> list[str]:
    lines = [f"| agent steps | frames | training time | games | mean of last {window} | "
             f"best of last {window} |", "|---|---|---|---|---|---|"]
    steps, returns = ep["env_steps"], ep["episode_return"]
    for milestone in range(every, int(steps[-1]) + 1, every):
        n = int(np.searchsorted(steps, milestone, side="right"))  # games ended by then
        if n == 0:
            continue
        recent = returns[max(0, n - window):n]
        lines.append(f"| {milestone:,} | {milestone * frames_per_step / 1e6:.1f}M | "
                     f"{ep['wall_time'][n - 1] / 60:.0f} min | {n:,} | {recent.mean():.2f} | "
                     f"{recent.max():g} |")
    return lines


def first_reach(ep: dict[str, np.ndarray], window: int, target: float) -> int | None:
    """Index of the first game after which the mean of the last `window` games >= target."""
    mean = rolling_mean(ep["episode_return"], window)
    full = np.arange(len(mean)) >= window - 1
    hits = np.flatnonzero(full & (mean >= target))
    return int(hits[0]) if len(hits) else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--every", type=int, default=500_000)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--frames_per_step", type=int, default=4)
    parser.add_argument("--reach", type=float, action="append", default=[])
    args = parser.parse_args()
    try:
        ep = read_episodes(args.logdir)
    except UserError as exc:
        print(f"learning_table.py: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(table(ep, args.every, args.window, args.frames_per_step)))
    for target in args.reach:
        i = first_reach(ep, args.window, target)
        print(f"mean of last {args.window} >= {target:g}: " + (
            "not reached" if i is None else
            f"at {int(ep['env_steps'][i]):,} agent steps, {ep['wall_time'][i] / 60:.0f} min"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
