"""ga3c against Stable-Baselines3 on continuous control, each seed in its own process.

    python benchmarks/vs_sb3.py --side=ga3c --config=configs/pendulum.cfg --seeds=0,1,2 --target=-250
    python benchmarks/vs_sb3.py --side=sb3 --algo=ppo --env=Pendulum-v1 --seeds=0,1,2 --target=-250
    python benchmarks/vs_sb3.py --side=sb3 --algo=a2c --env=HalfCheetah-v5 --steps=1000000
    python benchmarks/vs_sb3.py --side=both --config=configs/pendulum.cfg --algo=ppo --seeds=0

`--side=both` runs the two alternately, seed by seed (ga3c then SB3, each alone on the
machine), and prints per seed the ratio of ga3c's wall seconds to the target to SB3's: the
side-by-side figure of a wall-time bar.

`--side=ga3c` runs `ga3c-train --flagfile=CONFIG --seed=S` (the real CLI, a subprocess) and
reads the run's episodes.csv. `--side=sb3` never imports SB3 here: SB3 is no ga3c
dependency. It makes a virtual environment of its own (`--venv`, default
benchmarks/.venv-sb3, created on first use with `python -m venv` and
`pip install stable-baselines3 gymnasium mujoco`) and runs this same file inside it with
`--worker`, which trains SB3's PPO or A2C with the rl-zoo settings below (VecNormalize where
rl-zoo normalises), recording every training episode's return through a Monitor.

Both sides report per seed: the agent steps and wall seconds at which the mean of the last
100 training episodes first reached `--target` (none if never), the last 100 episodes' mean
at the end, and the run's steps/s; then the median and the worst seed. `--json` writes the
records.

The SB3 settings are rl-baselines3-zoo's hyperparams/ppo.yml (checked against the zoo's file at
commit 00128b5) and a2c.yml (at 02846e4, whose Pendulum entry is written for Pendulum-v0 and
is used for v1 unchanged; its MuJoCo A2C runs are the zoo's defaults: VecNormalize, 1M
steps). "lin_X" is the zoo's linear schedule from X to 0. The venv takes torch 2.13.0, the
CPU build this machine keeps on disk (plain `torch` would fetch a CUDA build of several GB).
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
DEFAULT_VENV = os.path.join(REPO, "benchmarks", ".venv-sb3")
SB3_PACKAGES = ["torch==2.13.0", "stable-baselines3>=2.3", "gymnasium>=1.1", "mujoco>=3",
                "packaging"]

# rl-baselines3-zoo settings (see the module docstring). "normalize": VecNormalize(obs, reward).
ZOO = {
    ("ppo", "Pendulum-v1"): dict(
        n_envs=4, n_timesteps=100_000, normalize=False,
        kwargs=dict(n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0,
                    learning_rate=1e-3, clip_range=0.2, use_sde=True, sde_sample_freq=4)),
    ("a2c", "Pendulum-v1"): dict(
        n_envs=8, n_timesteps=1_000_000, normalize=True,
        kwargs=dict(ent_coef=0.0, max_grad_norm=0.5, n_steps=8, gae_lambda=0.9, vf_coef=0.4,
                    gamma=0.99, use_rms_prop=True, normalize_advantage=False,
                    learning_rate="lin_7e-4", use_sde=True,
                    policy_kwargs=dict(log_std_init=-2, ortho_init=False))),
    # rl-zoo's MuJoCo defaults for A2C: VecNormalize, 1M steps, SB3's default A2C otherwise.
    ("a2c", "HalfCheetah-v5"): dict(n_envs=1, n_timesteps=1_000_000, normalize=True, kwargs={}),
    ("ppo", "HalfCheetah-v5"): dict(
        n_envs=1, n_timesteps=1_000_000, normalize=True,
        kwargs=dict(batch_size=64, n_steps=512, gamma=0.98, learning_rate=2.0633e-05,
                    ent_coef=0.000401762, clip_range=0.1, n_epochs=20, gae_lambda=0.92,
                    max_grad_norm=0.8, vf_coef=0.58096,
                    policy_kwargs=dict(log_std_init=-2, ortho_init=False, activation_fn="relu",
                                       net_arch=dict(pi=[256, 256], vf=[256, 256])))),
}


def solve_point(rows, target: float, window: int = 100):
    """(env_steps, wall_seconds) of the first episode after which the mean of the last
    `window` returns >= target; (None, None) if never. `rows`: (steps, seconds, return)."""
    recent: collections.deque[float] = collections.deque(maxlen=window)
    for steps, seconds, ret in rows:
        recent.append(ret)
        if len(recent) == window and sum(recent) / window >= target:
            return steps, seconds
    return None, None


def summarise(seed: int, rows, target: float) -> dict:
    steps, seconds = solve_point(rows, target)
    last = [r for _, _, r in rows[-100:]]
    total_steps, total_seconds = (rows[-1][0], rows[-1][1]) if rows else (0, 0.0)
    return dict(seed=seed, reached=steps is not None, steps_to_target=steps,
                seconds_to_target=seconds, final_score100=sum(last) / max(len(last), 1),
                episodes=len(rows), env_steps=total_steps,
                env_steps_per_s=total_steps / max(total_seconds, 1e-9))


# -- ga3c ----------------------------------------------------------------------------------
def run_ga3c(seed: int, config: str, target: float, steps: int, workdir: str, timeout: float,
             extra: list[str]) -> dict:
    logdir = os.path.join(workdir, f"ga3c-seed{seed}")
    cmd = [sys.executable, "-m", "ga3c.cli", f"--flagfile={config}", f"--logdir={logdir}",
           f"--seed={seed}", f"--target_score={target}", "--resume=false", *extra]
    if steps:
        cmd.append(f"--max_env_steps={steps}")
    subprocess.run(cmd, cwd=REPO, timeout=timeout, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(logdir, "episodes.csv"), newline="") as f:
        rows = [(int(r["env_steps"]), float(r["wall_time"]), float(r["episode_return"]))
                for r in csv.DictReader(f)]
    return summarise(seed, rows, target)


# -- SB3, in its own venv ------------------------------------------------------------------
def ensure_venv(venv: str) -> str:
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *SB3_PACKAGES], check=True)
    return python


def resolve(kwargs: dict) -> dict:
    """The zoo's strings as SB3 takes them: "lin_X" -> a schedule from X to 0 (SB3 passes the
    progress remaining, 1 -> 0), activation_fn "relu" -> torch.nn.ReLU."""
    out = dict(kwargs)
    for key, value in kwargs.items():
        if isinstance(value, str) and value.startswith("lin_"):
            start = float(value[4:])
            out[key] = lambda progress, start=start: progress * start
    if "activation_fn" in out.get("policy_kwargs", {}):
        import torch.nn

        out["policy_kwargs"] = dict(out["policy_kwargs"], activation_fn={
            "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[out["policy_kwargs"]["activation_fn"]])
    return out


def worker(algo: str, env_id: str, seed: int, steps: int, out: str,
           stop_at: float | None = None) -> None:
    """Inside the SB3 venv: train, and write (steps, seconds, return) per episode to `out`;
    with `stop_at`, stop once the mean of the last 100 episodes reaches it (as ga3c's
    --target_score does)."""
    import stable_baselines3 as sb3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    zoo = ZOO[(algo, env_id)]
    env = make_vec_env(env_id, n_envs=zoo["n_envs"], seed=seed)  # Monitor per env
    if zoo["normalize"]:
        env = VecNormalize(env, gamma=zoo["kwargs"].get("gamma", 0.99))
    rows, start = [], time.monotonic()

    class Episodes(BaseCallback):
        def _on_step(self) -> bool:
            ended = False
            for info in self.locals["infos"]:
                if "episode" in info:  # Monitor's real (unnormalised) return
                    rows.append((self.num_timesteps, time.monotonic() - start,
                                 float(info["episode"]["r"])))
                    ended = True
            # go on unless an episode just ended and the last 100 reach the target
            return not (ended and stop_at is not None
                        and solve_point(rows[-100:], stop_at)[0] is not None)

    model = getattr(sb3, algo.upper())("MlpPolicy", env, seed=seed, device="cpu",
                                       **resolve(zoo["kwargs"]))
    model.learn(steps or zoo["n_timesteps"], callback=Episodes())
    with open(out, "w") as f:
        json.dump(rows, f)


def run_sb3(seed: int, algo: str, env_id: str, target: float, steps: int, venv: str,
            workdir: str, timeout: float, stop_at_target: bool = False) -> dict:
    python = ensure_venv(venv)
    out = os.path.join(workdir, f"sb3-{algo}-seed{seed}.json")
    stop = [f"--target={target}", "--stop_at_target"] if stop_at_target else []
    subprocess.run([python, os.path.abspath(__file__), "--worker", f"--algo={algo}",
                    f"--env={env_id}", f"--seeds={seed}", f"--steps={steps}", f"--out={out}",
                    *stop], check=True, timeout=timeout)
    with open(out) as f:
        rows = [tuple(r) for r in json.load(f)]
    return summarise(seed, rows, target)


def wall_ratio_line(seed: int, ga3c: dict, sb3: dict) -> str:
    """ga3c's wall seconds to the target over SB3's, for one seed run side by side."""
    if not (ga3c["reached"] and sb3["reached"]):
        return (f"seed {seed}: wall ratio ga3c/sb3 not defined (reached: ga3c "
                f"{ga3c['reached']}, sb3 {sb3['reached']})")
    ratio = ga3c["seconds_to_target"] / sb3["seconds_to_target"]
    return (f"seed {seed}: wall seconds to target ga3c {ga3c['seconds_to_target']:.0f}, "
            f"sb3 {sb3['seconds_to_target']:.0f}: ratio ga3c/sb3 {ratio:.2f}; agent steps "
            f"{ga3c['steps_to_target']:,} vs {sb3['steps_to_target']:,}")


def summary(side: str, records: list[dict], target: float) -> str:
    """One side's seeds: how many reached the target, the final scores' median and worst,
    and the steps and seconds to the target of those that reached it."""
    reached = [r for r in records if r["reached"]]
    scores = [r["final_score100"] for r in records]
    text = (f"{side}: {len(reached)}/{len(records)} seeds reached {target:g}; final score100 "
            f"median {statistics.median(scores):.1f}, worst {min(scores):.1f}")
    if reached:
        steps = [r["steps_to_target"] for r in reached]
        secs = [r["seconds_to_target"] for r in reached]
        text += (f"\n{side}: steps to target: median {statistics.median(steps):,.0f}, worst "
                 f"{max(steps):,}; seconds: median {statistics.median(secs):.0f}, worst "
                 f"{max(secs):.0f}")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=["ga3c", "sb3", "both"], default="ga3c")
    parser.add_argument("--config", default="configs/pendulum.cfg", help="--side=ga3c")
    parser.add_argument("--algo", choices=["ppo", "a2c"], default="ppo", help="--side=sb3")
    parser.add_argument("--env", default="Pendulum-v1", help="--side=sb3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--target", type=float, default=-250.0,
                        help="score (mean of the last 100 training episodes) to reach")
    parser.add_argument("--steps", type=int, default=0,
                        help="agent steps per seed (0: the config's / rl-zoo's own)")
    parser.add_argument("--venv", default=DEFAULT_VENV, help="SB3's own virtual environment")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per seed")
    parser.add_argument("--json", help="write the per-seed records here")
    parser.add_argument("--stop_at_target", action="store_true",
                        help="SB3 stops at --target as ga3c does (on with --side=both)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.worker:
        worker(args.algo, args.env, seeds[0], args.steps, args.out,
               args.target if args.stop_at_target else None)
        return 0
    records = []
    with tempfile.TemporaryDirectory(prefix="vs_sb3-") as workdir:
        for seed in seeds:
            pair = {}
            for side in (("ga3c", "sb3") if args.side == "both" else (args.side,)):
                if side == "ga3c":
                    rec = run_ga3c(seed, args.config, args.target, args.steps, workdir,
                                   args.timeout, [e for e in extra if e != "--"])
                else:
                    rec = run_sb3(seed, args.algo, args.env, args.target, args.steps,
                                  args.venv, workdir, args.timeout,
                                  args.stop_at_target or args.side == "both")
                rec["side"] = side
                pair[side] = rec
                records.append(rec)
                print(json.dumps(rec), flush=True)
            if len(pair) == 2:
                print(wall_ratio_line(seed, pair["ga3c"], pair["sb3"]), flush=True)
    for side in sorted({r["side"] for r in records}):
        print(summary(side, [r for r in records if r["side"] == side], args.target))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
