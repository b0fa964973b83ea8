"""Environment factory: gymnasium vector envs for the agents, and up-front checks."""

from __future__ import annotations

import dataclasses
import importlib
import re
import warnings

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from ga3c.config import EnvConfig


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


def ale_game(env_id: str) -> str | None:
    """ROM name of an `ALE/Name-vN` id ("ALE/SpaceInvaders-v5" -> "space_invaders")."""
    match = re.fullmatch(r"ALE/([A-Za-z0-9]+)-v\d+", env_id)
    if match is None:
        return None
    return re.sub(r"(?<!^)(?=[A-Z])", "_", match.group(1)).lower()


def make_atari_vector_env(game: str, num_envs: int, env: EnvConfig) -> gym.vector.VectorEnv:
    """ale-py's C++ vector env with the standard preprocessing done outside the GIL:
    84x84 grayscale, frame stack 4, frameskip 4 with max-pool, up to 30 no-op starts, fire on
    reset. Rewards come back unclipped (the agent clips its training copy), so the scores
    reported are the game's."""
    from ale_py import roms
    from ale_py.vector_env import AtariVectorEnv

    with warnings.catch_warnings():  # the EnvError below says it in one line
        warnings.simplefilter("ignore")
        rom = roms.get_rom_path(game)
    if rom is None:
        raise EnvError(f"no Atari ROM named {game!r} in ale-py")
    return AtariVectorEnv(game, num_envs, num_threads=env.ale_threads,
                          repeat_action_probability=env.repeat_action_probability,
                          reward_clipping=False, episodic_life=False, noop_max=30,
                          use_fire_reset=True, autoreset_mode=AutoresetMode.NEXT_STEP)


def make_vector_env(env_id: str, num_envs: int, env: EnvConfig | None = None
                    ) -> gym.vector.VectorEnv:
    """`num_envs` copies of `env_id` stepped together.

    Atari ids (`ALE/Pong-v5`) get ale-py's C++ vector env; others use the env's own vectorised
    implementation when it registers one (CartPole does: one numpy call steps all copies)
    and gymnasium's SyncVectorEnv otherwise.
    """
    game = ale_game(env_id)
    if game is not None:
        return make_atari_vector_env(game, num_envs, env or EnvConfig(env_id=env_id))
    env_id = resolve_env_id(env_id)
    spec = gym.spec(env_id)
    mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode)
    autoreset = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if autoreset != AutoresetMode.NEXT_STEP:
        env.close()
        raise EnvError(f"env {env_id!r}: vector env autoreset mode {autoreset} is not NEXT_STEP")
    return env


def inspect_env(env_id: str, env: EnvConfig | None = None) -> EnvSpec:
    """Check that `env_id` exists and suits ga3c; raise EnvError with one clear line if not.

    The spaces are read from the vector env the agents will use (for Atari: the preprocessed
    (4, 84, 84) uint8 frames, not the raw screen).
    """
    if ale_game(env_id) is None:
        try:
            gym.spec(resolve_env_id(env_id))
        except gym.error.Error as exc:
            raise EnvError(f"unknown env id {env_id!r}: {exc}") from None
    try:
        vec = make_vector_env(env_id, 1, env)
    except EnvError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to build the env is the user's to see
        raise EnvError(f"env {env_id!r} could not be created: {type(exc).__name__}: {exc}") from None
    try:
        act, obs = vec.single_action_space, vec.single_observation_space
    finally:
        vec.close()
    if not isinstance(act, gym.spaces.Discrete):
        raise EnvError(f"env {env_id!r} has action space {act}; ga3c needs a Discrete action space")
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) not in (1, 3):
        raise EnvError(f"env {env_id!r} has observation space {obs}; ga3c needs flat vectors "
                       "(MLP) or stacked frames (stack, height, width) (CNN)")
    if len(obs.shape) == 3 and obs.dtype != np.uint8:
        raise EnvError(f"env {env_id!r} has {obs.dtype} frames; the CNN takes uint8 frames")
    dtype = np.dtype(np.float32) if np.issubdtype(obs.dtype, np.floating) else np.dtype(obs.dtype)
    return EnvSpec(tuple(obs.shape), dtype, int(act.n))
