"""Environment factory: gymnasium vector envs for the agents, and up-front checks."""

from __future__ import annotations

import dataclasses
import importlib

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode


class EnvError(ValueError):
    """The environment cannot be used by ga3c (message is shown to the user as is)."""


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int


def resolve_env_id(env_id: str) -> str:
    """Import the module of a `module:EnvId` id (it registers the env); return the bare id."""
    if ":" not in env_id:
        return env_id
    module, name = env_id.split(":", 1)
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to see
        raise EnvError(f"env {env_id!r}: cannot import module {module!r}: "
                       f"{type(exc).__name__}: {exc}") from None
    return name


def make_vector_env(env_id: str, num_envs: int) -> gym.vector.VectorEnv:
    """`num_envs` copies of `env_id` stepped together.

    Uses the env's own vectorised implementation when it registers one (CartPole does: one
    numpy call steps all copies) and gymnasium's SyncVectorEnv otherwise.
    """
    env_id = resolve_env_id(env_id)
    spec = gym.spec(env_id)
    mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode)
    autoreset = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if autoreset != AutoresetMode.NEXT_STEP:
        env.close()
        raise EnvError(f"env {env_id!r}: vector env autoreset mode {autoreset} is not NEXT_STEP")
    return env


def inspect_env(env_id: str) -> EnvSpec:
    """Check that `env_id` exists and suits ga3c; raise EnvError with one clear line if not."""
    try:
        spec = gym.spec(resolve_env_id(env_id))
    except gym.error.Error as exc:
        raise EnvError(f"unknown env id {env_id!r}: {exc}") from None
    try:
        env = gym.make(spec.id)
    except Exception as exc:  # noqa: BLE001 - any failure to build the env is the user's to see
        raise EnvError(f"env {env_id!r} could not be created: {type(exc).__name__}: {exc}") from None
    try:
        act, obs = env.action_space, env.observation_space
    finally:
        env.close()
    if not isinstance(act, gym.spaces.Discrete):
        raise EnvError(f"env {env_id!r} has action space {act}; ga3c needs a Discrete action space")
    if not isinstance(obs, gym.spaces.Box):
        raise EnvError(f"env {env_id!r} has observation space {obs}; ga3c needs a Box space")
    if len(obs.shape) != 1:
        raise EnvError(f"env {env_id!r} has observations of shape {obs.shape}; "
                       "ga3c's MLP needs flat vector observations")
    try:  # the agents' own construction path, checked once here rather than in a thread
        make_vector_env(env_id, 1).close()
    except EnvError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise EnvError(f"env {env_id!r}: its vector env could not be created: "
                       f"{type(exc).__name__}: {exc}") from None
    dtype = np.dtype(np.float32) if np.issubdtype(obs.dtype, np.floating) else np.dtype(obs.dtype)
    return EnvSpec(tuple(obs.shape), dtype, int(act.n))
