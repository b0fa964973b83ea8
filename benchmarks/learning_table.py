"""A learning curve as a Markdown table: score at milestones of agent steps, from episodes.csv.

    python benchmarks/learning_table.py --logdir=runs/pong --every=500000 [--window=20]
    python benchmarks/learning_table.py --logdir='results/pong_s*' --reach=18 --hold=10

For each milestone (every `--every` agent steps) it prints the training time and episodes at
that point and the mean, over the last `--window` finished games, of the score; plus the first
step at which that mean reached each `--reach` score, and the lowest it fell to after that.
Rows a resume superseded are dropped (as in ga3c-plot), so the table is the run as it
continued. Several runs (`--logdir` repeated, a glob pattern or a comma-separated list: the
seeds of one config) give one column per seed and the median and worst seed at each
milestone and for each `--reach`; `--hold=X` says for each seed whether its mean stayed >= X
from the moment it first reached the target.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ga3c.errors import UserError
from ga3c.plot import expand, read_episodes, rolling_mean


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


def lowest_after(ep: dict[str, np.ndarray], window: int, index: int) -> float:
    """The lowest mean of the last `window` games from game `index` on."""
    return float(rolling_mean(ep["episode_return"], window)[index:].min())


def seeds_table(runs: list[tuple[str, dict[str, np.ndarray]]], every: int, window: int
                ) -> list[str]:
    """One row per milestone: each seed's mean of its last `window` games (blank once a seed
    has ended), the median and the worst seed among those that reached the milestone."""
    names = [name for name, _ in runs]
    lines = [f"| agent steps | {' | '.join(names)} | median | worst |",
             "|---|" + "---|" * (len(names) + 2)]
    last = max(int(ep["env_steps"][-1]) for _, ep in runs)
    for milestone in range(every, last + 1, every):
        cells, values = [], []
        for _, ep in runs:
            n = int(np.searchsorted(ep["env_steps"], milestone, side="right"))
            if n == 0 or ep["env_steps"][-1] < milestone:
                cells.append("")
                continue
            values.append(float(ep["episode_return"][max(0, n - window):n].mean()))
            cells.append(f"{values[-1]:.2f}")
        if values:
            lines.append(f"| {milestone:,} | {' | '.join(cells)} | {np.median(values):.2f} | "
                         f"{min(values):.2f} |")
    return lines


def reach_lines(runs: list[tuple[str, dict[str, np.ndarray]]], window: int, target: float,
                hold: float | None) -> list[str]:
    """For each seed, the first step at which the mean of its last `window` games reached
    `target` and the lowest that mean fell to after it; the median and worst (latest) step
    over seeds, a seed that never reached it counting as the worst."""
    lines, steps = [], []
    for name, ep in runs:
        i = first_reach(ep, window, target)
        if i is None:
            lines.append(f"  {name}: not reached in {int(ep['env_steps'][-1]):,} agent steps")
            steps.append(np.inf)
            continue
        steps.append(float(ep["env_steps"][i]))
        low = lowest_after(ep, window, i)
        held = "" if hold is None else (f", stayed >= {hold:g}" if low >= hold
                                        else f", FELL below {hold:g}")
        lines.append(f"  {name}: at {int(ep['env_steps'][i]):,} agent steps "
                     f"({ep['wall_time'][i] / 60:.0f} min), lowest after: {low:.2f}{held}")
    def text(x):
        return "not reached" if not np.isfinite(x) else f"{int(x):,}"

    return [f"mean of last {window} >= {target:g}: median seed {text(np.median(steps))}, "
            f"worst seed {text(max(steps))} agent steps", *lines]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", required=True, action="append",
                        help="a run, or seeds of one (repeat, glob pattern or comma list)")
    parser.add_argument("--every", type=int, default=500_000)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--frames_per_step", type=int, default=4)
    parser.add_argument("--reach", type=float, action="append", default=[])
    parser.add_argument("--hold", type=float, default=None,
                        help="with --reach: did each seed stay >= this after reaching it")
    args = parser.parse_args()
    try:
        logdirs = [d for spec in args.logdir for d in expand(spec)]
        runs = [(os.path.basename(os.path.normpath(d)), read_episodes(d)) for d in logdirs]
    except UserError as exc:
        print(f"learning_table.py: error: {exc}", file=sys.stderr)
        return 2
    if len(runs) > 1:
        print("\n".join(seeds_table(runs, args.every, args.window)))
        for target in args.reach:
            print("\n".join(reach_lines(runs, args.window, target, args.hold)))
        return 0
    ep = runs[0][1]
    print("\n".join(table(ep, args.every, args.window, args.frames_per_step)))
    for target in args.reach:
        i = first_reach(ep, args.window, target)
        print(f"mean of last {args.window} >= {target:g}: " + (
            "not reached" if i is None else
            f"at {int(ep['env_steps'][i]):,} agent steps, {ep['wall_time'][i] / 60:.0f} min"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
