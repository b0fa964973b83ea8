"""Learning curves from runs' episodes.csv: score vs env steps and vs wall time.

Each `--logdir` is one run, or a group of runs (seeds of one config) given as a glob pattern
(`'runs/pong_s*'`) or a comma-separated list: a group is drawn as one faint line per seed
and, over the env steps all its seeds reached, the mean of their curves with a min-max band.
Used by `ga3c-plot` (flags in `ga3c.cli`). matplotlib is an optional extra:
`pip install -e '.[plot]'`.
"""

from __future__ import annotations

import glob
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


def expand(spec: str) -> list[str]:
    """The run directories a `--logdir` value names: itself, the comma-separated list, or
    what its glob pattern matches (sorted); UserError if a pattern matches nothing."""
    parts = [p for p in spec.split(",") if p] if "," in spec else [spec]
    out = []
    for part in parts:
        if glob.has_magic(part):
            found = sorted(d for d in glob.glob(part) if os.path.isdir(d))
            if not found:
                raise UserError(f"--logdir={part!r} matches no run directory")
            out += found
        else:
            out.append(part)
    return out


def seed_band(curves: list[tuple[np.ndarray, np.ndarray]], points: int = 400):
    """(x, mean, low, high) of several (env_steps, smoothed score) curves on a common grid
    up to the env steps every one of them reached (a curve holds its last value between
    games, as a score does)."""
    end = min(x[-1] for x, _ in curves)
    start = max(x[0] for x, _ in curves)
    grid = np.linspace(start, end, points) if end > start else np.array([end])
    ys = np.stack([y[np.clip(np.searchsorted(x, grid, side="right") - 1, 0, len(y) - 1)]
                   for x, y in curves])
    return grid, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def plot_runs(logdirs: list[str], out: str, window: int = 100, title: str | None = None) -> str:
    plt = _pyplot(out)
    groups = [(spec, [(d, read_episodes(d)) for d in expand(spec)]) for spec in logdirs]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for i, (spec, runs) in enumerate(groups):
        color = f"C{i % 10}"
        if len(runs) == 1:
            data = runs[0][1]
            smooth = rolling_mean(data["episode_return"], window)
            for ax, x_key in zip(axes, ("env_steps", "wall_time")):
                ax.plot(data[x_key], data["episode_return"], color=color, alpha=0.15, lw=0.6)
                ax.plot(data[x_key], smooth, color=color, lw=1.8,
                        label=os.path.normpath(runs[0][0]),
                        marker="o" if len(smooth) < 20 else None)
            continue
        curves = {key: [(d[key], rolling_mean(d["episode_return"], window)) for _, d in runs]
                  for key in ("env_steps", "wall_time")}
        for ax, key in zip(axes, ("env_steps", "wall_time")):
            for x, y in curves[key]:
                ax.plot(x, y, color=color, alpha=0.3, lw=0.7)
            x, mean, low, high = seed_band(curves[key])
            ax.fill_between(x, low, high, color=color, alpha=0.15, lw=0)
            ax.plot(x, mean, color=color, lw=2.0,
                    label=f"{spec} ({len(runs)} seeds: mean, min-max, each)")
    axes[0].set_xlabel("env steps")
    axes[1].set_xlabel("wall time (s of training)")
    axes[0].set_ylabel(f"episode return (faint) and mean of last {window}")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    fig.suptitle(title or "ga3c learning curves")
    fig.tight_layout()
    return _save(fig, plt, out)


def _pyplot(out: str):
    """matplotlib.pyplot on the Agg backend, once `out` is known to be a writable .png."""
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
    return plt


def _save(fig, plt, out: str) -> str:
    try:
        fig.savefig(out, dpi=110)
    except OSError as exc:
        raise UserError(f"cannot write {out!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out


# The instruments ga3c-plot --updates draws from updates.csv (--log_updates), a panel each.
UPDATE_PANELS = (
    ("policy and value", ("logit_spread", "explained_variance", "entropy")),
    ("dead ReLU units (fraction of a layer)", ("dead_relu/",)),
    ("largest per-weight step (learning rates)", ("max_step_unclipped", "max_step")),
    ("largest |advantage| in the batch", ("max_abs_advantage",)),
)


def read_updates(logdir: str) -> dict[str, np.ndarray]:
    """Columns of `<logdir>/updates.csv` (written with --log_updates), as float arrays."""
    path = RunDir(logdir).updates_csv
    if not os.path.exists(path):
        raise UserError(f"no updates.csv in {logdir!r} (train with --log_updates)")
    import csv

    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f)]
    if len(rows) < 2:
        raise UserError(f"{path} has no updates yet")
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    try:
        data = np.array(body, dtype=np.float64)
    except ValueError:  # a half-written last row, or a second header: keep the numeric rows
        data = np.array([r for r in body if _numeric(r)], dtype=np.float64)
    return {name: data[:, i] for i, name in enumerate(header)}


def _numeric(row: list[str]) -> bool:
    try:
        [float(x) for x in row]
    except ValueError:
        return False
    return True


def plot_updates(logdirs: list[str], out: str, window: int = 50, title: str | None = None,
                 start: float = 0, end: float = 0) -> str:
    """The training steps' instruments of one or more runs against env steps, each smoothed
    over `window` updates (the largest-step panel: the largest in each window), with the
    mean of the last 20 games on top; `start`/`end` (env steps, 0: all) zoom in."""
    plt = _pyplot(out)
    panels = [("mean of the last 20 games", None), *UPDATE_PANELS]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.3 * len(panels)), sharex=True)
    styles = ("-", "--", ":", "-.")
    for i, logdir in enumerate(logdirs):
        color, label = f"C{i % 10}", os.path.normpath(logdir)
        ep, up = read_episodes(logdir), read_updates(logdir)
        keep = (ep["env_steps"] >= start) & ((ep["env_steps"] <= end) if end else True)
        axes[0].plot(ep["env_steps"][keep], rolling_mean(ep["episode_return"], 20)[keep],
                     color=color, label=label)
        x = up["env_steps"]
        inside = (x >= start) & ((x <= end) if end else True)
        for ax, (name, prefixes) in zip(axes[1:], panels[1:]):
            columns = [c for c in up if any(c == p or (p.endswith("/") and c.startswith(p))
                                            for p in prefixes)]
            for j, column in enumerate(columns):
                y = up[column]
                y = _rolling_max(y, window) if column.startswith("max_") else rolling_mean(
                    y, window)
                ax.plot(x[inside], y[inside], color=color, ls=styles[j % len(styles)], lw=1.1,
                        label=f"{column.split('/')[-1]}" + (f" ({label})" if i == 0 and
                                                            len(logdirs) > 1 else ""))
            if i == 0:
                ax.legend(loc="upper left", fontsize="x-small", ncol=4)
    for ax, (name, _) in zip(axes, panels):
        ax.set_title(name, fontsize="small", loc="left")
        ax.grid(alpha=0.3)
    axes[1].set_ylim(bottom=-0.2)  # explained variance starts far below 0
    axes[0].legend(loc="upper left", fontsize="x-small")
    axes[-1].set_xlabel("env steps")
    fig.suptitle(title or f"ga3c training-step instruments (smoothed over {window} updates)")
    fig.tight_layout()
    return _save(fig, plt, out)


def _rolling_max(x: np.ndarray, window: int) -> np.ndarray:
    """The largest of the last `window` values at each point."""
    from numpy.lib.stride_tricks import sliding_window_view

    padded = np.concatenate([np.full(window - 1, x[0]), x])
    return sliding_window_view(padded, window).max(axis=1)
