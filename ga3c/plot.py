"""Learning curves from runs' episodes.csv: score vs env steps and vs wall time.

Used by `ga3c-plot` (flags in `ga3c.cli`). matplotlib is an optional extra:
`pip install -e '.[plot]'`.
"""

from __future__ import annotations

import csv
import os

import numpy as np


class PlotError(Exception):
    """A problem with the user's input (shown as one line, exit 2)."""


def read_episodes(logdir: str) -> dict[str, np.ndarray]:
    """Columns of `<logdir>/episodes.csv`.

    Rows cut short by a killed run are skipped, and so are rows a resumed run superseded
    (written after the checkpoint it resumed from: their env_steps exceed a later row's).
    """
    path = os.path.join(logdir, "episodes.csv")
    if not os.path.exists(path):
        raise PlotError(f"no episodes.csv in {logdir!r}")
    rows = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            try:
                if len(row) == 4:
                    rows.append((float(row[0]), float(row[1]), float(row[2])))
            except ValueError:
                continue  # the header or a partial row
    if not rows:
        raise PlotError(f"{path} has no episodes yet")
    wall, steps, score = np.array(rows).T
    keep = steps <= np.minimum.accumulate(steps[::-1])[::-1]
    wall, steps, score = wall[keep], steps[keep], score[keep]
    return {"wall_time": wall, "env_steps": steps, "episode_return": score}


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at each point (fewer at the start)."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_runs(logdirs: list[str], out: str, window: int = 100, title: str | None = None) -> str:
    if not out.lower().endswith(".png"):
        raise PlotError(f"--out={out!r}: must be a .png file")
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise PlotError(f"cannot write {out!r}: {out_dir} does not exist")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("ga3c-plot needs matplotlib: pip install -e '.[plot]'") from None
    runs = [(logdir, read_episodes(logdir)) for logdir in logdirs]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for i, (logdir, data) in enumerate(runs):
        color = f"C{i % 10}"
        label = os.path.normpath(logdir)
        smooth = rolling_mean(data["episode_return"], window)
        for ax, x_key in zip(axes, ("env_steps", "wall_time")):
            ax.plot(data[x_key], data["episode_return"], color=color, alpha=0.15, lw=0.6)
            ax.plot(data[x_key], smooth, color=color, lw=1.8, label=label,
                    marker="o" if len(smooth) < 20 else None)
    axes[0].set_xlabel("env steps")
    axes[1].set_xlabel("wall time (s of training)")
    axes[0].set_ylabel(f"episode return (faint) and mean of last {window}")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    fig.suptitle(title or "ga3c learning curves")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=110)
    except OSError as exc:
        raise PlotError(f"cannot write {out!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out
