"""Play a trained policy: the run's saved config and checkpoint, greedy or sampled actions.

Used by `ga3c-eval` (flags in `ga3c.cli`); everything here takes plain arguments.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import warnings

import gymnasium as gym
import numpy as np

from ga3c.envs import env_backend, inspect_env, make_single_env, make_vector_env
from ga3c.errors import UserError
from ga3c.rundir import RunDir


@dataclasses.dataclass
class EvalSummary:
    env: str
    backend: str  # how the episodes were stepped: "ale_vector" or "threads" (gymnasium)
    checkpoint: str
    policy: str
    episodes: int
    mean: float
    std: float
    min: float
    max: float
    mean_length: float
    returns: list[float]
    lengths: list[int]
    videos: list[str]
    note: str = ""
    # Episodes ended by the stall cutoff: no reward in their last `stall_steps` steps.
    stalled: int = 0
    stall_steps: int = 0

    def table(self) -> str:
        return (f"{'env':<14}{'backend':<11}{'policy':<8}{'episodes':>9}{'mean':>10}{'std':>9}"
                f"{'min':>9}{'max':>9}{'length':>9}\n"
                f"{self.env:<14}{self.backend:<11}{self.policy:<8}{self.episodes:>9}"
                f"{self.mean:>10.2f}{self.std:>9.2f}{self.min:>9.2f}{self.max:>9.2f}"
                f"{self.mean_length:>9.1f}")


def check_video_support() -> None:
    # gymnasium's RecordVideo writes mp4 files through moviepy.
    if importlib.util.find_spec("moviepy") is None:
        raise UserError("--video_dir needs moviepy: pip install -e '.[video]'")


# An episode with no reward at all in its last this many steps is ended there (ga3c-eval's
# --stall_steps default): 18,000 Atari frames, 5 minutes of play. A greedy Breakout policy
# that stops serving after a lost life plays on without reward until the 108k-frame cap
# (every game of the 4.05M checkpoint did); its score would not change, only the time.
STALL_STEPS = 4_500


def stall_note(stalled: int, episodes: int, stall_steps: int) -> str:
    if not stalled:
        return ""
    return (f"note: {stalled} of {episodes} episodes had no reward in {stall_steps:,} steps "
            f"and were ended there, with the score they had (a policy that stopped playing, "
            f"e.g. a greedy Breakout policy that does not serve); --policy=sample plays on, "
            f"--stall_steps=0 plays to the env's own end")


def evaluate(logdir: str, episodes: int, policy: str = "greedy", seed: int = 0,
             checkpoint: str | None = None, video_dir: str | None = None,
             env_id: str | None = None, stall_steps: int = STALL_STEPS) -> EvalSummary:
    from ga3c.checkpoints import find_checkpoint
    from ga3c.policy import checkpoint_policy

    if policy not in ("greedy", "sample"):
        raise UserError(f"--policy={policy!r}: must be 'greedy' or 'sample'")
    if episodes < 1:
        raise UserError(f"--episodes={episodes}: must be >= 1")
    if stall_steps < 0:
        raise UserError(f"--stall_steps={stall_steps}: must be >= 0 (0: no cutoff)")
    run_dir = RunDir(logdir)
    config = run_dir.read_config()
    path = find_checkpoint(run_dir.checkpoints, checkpoint)
    run_env = config.env.env_id
    env_id = env_id or run_env
    # The run's env settings (sticky actions, frame cap), on the env asked for; whole games.
    env_config = dataclasses.replace(config.env, env_id=env_id, episodic_life=False,
                                     env_backend="auto")
    spec = inspect_env(env_id, env_config)
    run_spec = spec if env_id == run_env else inspect_env(run_env, config.env)
    if (spec.obs_shape, spec.num_actions) != (run_spec.obs_shape, run_spec.num_actions):
        raise UserError(f"env mismatch: {env_id} has observations {spec.obs_shape} and "
                        f"{spec.num_actions} actions; the run was trained on {run_env} with "
                        f"{run_spec.obs_shape} and {run_spec.num_actions}")
    if video_dir:
        check_video_support()
    if spec.continuous != run_spec.continuous:
        raise UserError(f"env mismatch: {env_id} and {run_env} differ in action space kind")
    played = checkpoint_policy(path, config.network, spec, seed, config.env.normalize_obs)

    def act(obs: np.ndarray) -> np.ndarray:
        return played.act(obs, sample=policy == "sample")[0]

    if video_dir:
        returns, lengths, stalled = _play_recorded(env_id, env_config, episodes, seed,
                                                   video_dir, act, stall_steps)
        backend = "threads"  # gymnasium's envs render the screen; see the docstring
        note = ("" if env_backend(run_env, config.env) != "ale_vector" else
                "note: with --video_dir the episodes are played through gymnasium's Atari "
                "preprocessing (opencv), not ale-py's C++ one this run trained on; without "
                "--video_dir they are played on the training backend")
    else:
        # The run's own backend (ale-py's C++ preprocessing for ale_vector runs): the policy
        # sees exactly the frames it was trained on.
        env_config = dataclasses.replace(env_config, env_backend=(
            config.env.env_backend if env_id == run_env else "auto"), ale_batch_size=0)
        backend, note = env_backend(env_id, env_config), ""
        returns, lengths, stalled = play_vector(env_id, env_config, episodes, seed, act,
                                                stall_steps)
    # RecordVideo names them eval-episode-<i>.mp4; list exactly this evaluation's.
    videos = [os.path.join(video_dir, f"eval-episode-{i}.mp4") for i in range(episodes)
              ] if video_dir else []
    videos = [v for v in videos if os.path.exists(v)]
    r = np.array(returns)
    return EvalSummary(env=env_id, backend=backend, checkpoint=path, policy=policy,
                       episodes=episodes,
                       mean=float(r.mean()), std=float(r.std()), min=float(r.min()),
                       max=float(r.max()), mean_length=float(np.mean(lengths)),
                       returns=returns, lengths=lengths, videos=videos,
                       note="\n".join(n for n in (note, stall_note(stalled, episodes, stall_steps))
                                      if n),
                       stalled=stalled, stall_steps=stall_steps)


# Most envs stepped at once by `play_vector` (more episodes are played in waves).
MAX_EVAL_ENVS = 64


def play_vector(env_id: str, env_config, episodes: int, seed: int, act, stall_steps: int = 0
                ) -> tuple[list[float], list[int], int]:
    """Play `episodes` whole episodes as a vector: waves of up to MAX_EVAL_ENVS envs, each env
    playing exactly one episode per wave (seeds seed, seed+1, ...), so no env's short episodes
    are over-represented. An episode without reward in its last `stall_steps` steps (> 0)
    ends there. Returns each episode's return and length, in seed order, and how many
    stalled."""
    returns: list[float] = []
    lengths: list[int] = []
    stalled = 0
    while len(returns) < episodes:
        n = min(MAX_EVAL_ENVS, episodes - len(returns))
        vec = make_vector_env(env_id, n, env_config)
        try:
            obs, _ = vec.reset(seed=seed + len(returns))
            total, length = np.zeros(n), np.zeros(n, dtype=np.int64)
            quiet = np.zeros(n, dtype=np.int64)  # steps since the last reward
            playing = np.ones(n, dtype=bool)
            while playing.any():
                obs, reward, terminated, truncated, _ = vec.step(act(obs))
                total += np.where(playing, reward, 0.0)
                length += playing
                quiet = np.where(np.asarray(reward) != 0, 0, quiet + 1)
                stall = playing & (quiet >= stall_steps) if stall_steps else False
                stalled += int(np.sum(stall))
                playing &= ~(np.asarray(terminated) | np.asarray(truncated) | stall)
        finally:
            vec.close()
        returns += total.tolist()
        lengths += length.tolist()
    return returns, lengths, stalled


def _play_recorded(env_id: str, env_config, episodes: int, seed: int, video_dir: str, act,
                   stall_steps: int = 0) -> tuple[list[float], list[int], int]:
    """Play episodes one at a time through gymnasium, recording the real screen: ale-py's
    vector env renders no screen, so for Atari these episodes see gymnasium's (opencv)
    preprocessing, not the C++ one an ale_vector run trained on."""

    def record_video(env: gym.Env) -> gym.Env:
        # Fail before playing if the env cannot render (e.g. pygame missing).
        try:
            env.reset(seed=seed)
            frame = env.render()
        except Exception as exc:  # noqa: BLE001 - e.g. pygame missing
            env.close()
            raise UserError(f"cannot render {env_id} for video: {exc}") from None
        if not isinstance(frame, np.ndarray):
            env.close()
            raise UserError(f"{env_id} renders no rgb_array frames, so no video can be made")
        with warnings.catch_warnings():  # the folder exists: ga3c-eval checked it is writable
            warnings.filterwarnings("ignore", message=".*Overwriting existing videos.*")
            return gym.wrappers.RecordVideo(env, video_dir, episode_trigger=lambda _: True,
                                            name_prefix="eval", disable_logger=True)

    env = make_single_env(env_id, env_config, render_mode="rgb_array", wrap_raw=record_video)
    returns, lengths, stalled = [], [], 0
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, length, quiet, done = 0.0, 0, 0, False
            while not done:
                action = act(obs[None])[0]
                obs, reward, terminated, truncated, _ = env.step(
                    int(action) if np.ndim(action) == 0 else action)  # a Box's: a vector
                total += float(reward)
                length += 1
                quiet = 0 if reward != 0 else quiet + 1
                stall = bool(stall_steps) and quiet >= stall_steps
                stalled += stall
                done = terminated or truncated or stall
            returns.append(total)
            lengths.append(length)
    finally:
        env.close()
    return returns, lengths, stalled


def write_summary(summary: EvalSummary, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dataclasses.asdict(summary), f, indent=2)
    os.replace(tmp, path)
