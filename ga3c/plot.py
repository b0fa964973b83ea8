"""Learning curves from runs' episodes.csv: score vs env steps and vs wall time.

Used by `ga3c-plot` (flags in `ga3c.cli`). matplotlib is an optional extra:
`pip install -e '.[plot]'`.
"""

from __future__ import annotations

import os

import numpy as np

from ga3c.errors import UserError
from ga3c.rundir import RunDir
from ga3c.stats import read_episode_rows


def read_episodes(logdir: str) -> dict[str, np.ndarray]:
    """Columns of `<logdir>/episodes.csv` (complete rows; see stats.read_episode_rows).

    Rows a resumed run superseded are dropped too: written after the checkpoint it resumed
    from, their env_steps exceed a later row's.
    """
    path = RunDir(logdir).episodes_csv
    if not os.path.exists(path):
        raise UserError(f"no episodes.csv in {logdir!r}")
    rows = read_episode_rows(path)
    if not len(rows):
        raise UserError(f"{path} has no episodes yet")
    steps = rows[:, 1]
    rows = rows[steps <= np.minimum.accumulate(steps[::-1])[::-1]]
    return {"wall_time": rows[:, 0], "env_steps": rows[:, 1], "episode_return": rows[:, 2]}


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at each point (fewer at the start)."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_runs(logdirs: list[str], out: str, window: int = 100, title: str | None = None) -> str:
    if not out.lower().endswith(".png"):
        raise UserError(f"--out={out!r}: must be a .png file")
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise UserError(f"cannot write {out!r}: {out_dir} does not exist")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("ga3c-plot needs matplotlib: pip install -e '.[plot]'") from None
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
        raise UserError(f"cannot write {out!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out
