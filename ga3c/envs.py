"""Environment factory: gymnasium vector envs for the agents, and up-front checks."""

from __future__ import annotations

import dataclasses
import importlib
import warnings

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import TransformObservation

from ga3c.config import Config, EnvConfig
from ga3c.errors import UserError


class EnvError(UserError, ValueError):
    """The environment cannot be used by ga3c (message is shown to the user as is)."""


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int  # Discrete: the number of actions; Box: the action dimension
    # A Box action space (a Gaussian policy) and its bounds; a Discrete one: False, ().
    continuous: bool = False
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()

    def head(self):
        """The agents' action head (`ga3c.distributions`)."""
        from ga3c.distributions import CategoricalHead, GaussianHead

        if self.continuous:
            return GaussianHead(self.action_low, self.action_high)
        return CategoricalHead(self.num_actions)


SUPPORTED = ("ga3c supports Discrete or 1-D Box action spaces (Box bounds finite), with Box "
             "observations: flat vectors (MLP) or uint8 stacked frames (stack, height, width) "
             "(CNN)")


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
    """ROM name of a registered ALE id, as ale-py's registration spells it
    ("ALE/SpaceInvaders-v5" -> "space_invaders"); None for any other id."""
    if not env_id.startswith("ALE/"):
        return None
    try:
        import ale_py
    except ImportError:
        return None
    gym.register_envs(ale_py)
    try:
        return gym.spec(env_id).kwargs.get("game")
    except gym.error.Error:
        return None


def env_backend(env_id: str, env: EnvConfig) -> str:
    """The backend that steps `env_id`: "ale_vector" or "threads" (resolves "auto")."""
    is_ale = ale_game(env_id) is not None
    if env.env_backend == "auto":
        return "ale_vector" if is_ale else "threads"
    if env.env_backend == "ale_vector" and not is_ale:
        raise EnvError(f"--env_backend=ale_vector steps Atari games only (ALE/Name-v5 ids), "
                       f"not {env_id!r}; use --env_backend=threads")
    return env.env_backend


class FireReset(gym.Wrapper):
    """Press FIRE after each reset, for games that wait for it (as ale-py's vector env does)."""

    def reset(self, **kwargs):
        self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        return obs, info


def atari_preprocessing(e: gym.Env) -> gym.Env:
    """gymnasium's Atari preprocessing for a raw (frameskip=1) ALE env: 84x84 grayscale,
    frameskip 4 with max-pool, up to 30 no-op starts, fire on reset, frame stack 4."""
    e = gym.wrappers.AtariPreprocessing(e, noop_max=30, frame_skip=4, screen_size=84,
                                        grayscale_obs=True, scale_obs=False)
    if "FIRE" in e.unwrapped.get_action_meanings()[1:2]:
        e = FireReset(e)
    return gym.wrappers.FrameStackObservation(e, 4)


def _ale_make_kwargs(env: EnvConfig) -> dict:
    import ale_py

    gym.register_envs(ale_py)
    return dict(frameskip=1, repeat_action_probability=env.repeat_action_probability,
                max_num_frames_per_episode=env.max_episode_frames)


def make_atari_threads_env(env_id: str, num_envs: int, env: EnvConfig) -> gym.vector.VectorEnv:
    """`num_envs` ALE games stepped one after another in the calling (agent) thread, with
    gymnasium's own Atari preprocessing (the ale_vector backend's frames, resized by opencv
    instead of ale-py's C++)."""
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                        wrappers=[atari_preprocessing], **_ale_make_kwargs(env))


def make_single_env(env_id: str, env: EnvConfig, render_mode: str | None = None,
                    wrap_raw=None) -> gym.Env:
    """One env that sees what the agents see (for evaluation). Atari games get the threads
    backend's preprocessing; `wrap_raw` (e.g. a video recorder) wraps the raw game first, so
    a video shows the real screen."""
    is_ale = ale_game(env_id) is not None
    e = gym.make(env_id if is_ale else resolve_env_id(env_id), render_mode=render_mode,
                 **(_ale_make_kwargs(env) if is_ale else {}))
    if wrap_raw is not None:
        e = wrap_raw(e)
    if not is_ale:
        return e
    e = atari_preprocessing(e)
    return gym.wrappers.TransformObservation(e, frames_last,
                                             frames_last_space(e.observation_space))


def make_atari_vector_env(game: str, num_envs: int, env: EnvConfig, batch_size: int = 0
                          ) -> gym.vector.VectorEnv:
    """ale-py's C++ vector env with the standard preprocessing done outside the GIL:
    84x84 grayscale, frame stack 4, frameskip 4 with max-pool, up to 30 no-op starts, fire on
    reset. Rewards come back unclipped (the agent clips its training copy), so the scores
    reported are the game's. Lives are in `info["lives"]`: ga3c's episodic life ends the
    training episode there itself, because ale-py's own option restarts the whole game."""
    from ale_py import roms
    from ale_py.vector_env import AtariVectorEnv

    with warnings.catch_warnings():  # the EnvError below says it in one line
        warnings.simplefilter("ignore")
        rom = roms.get_rom_path(game)
    if rom is None:
        raise EnvError(f"no Atari ROM named {game!r} in ale-py")
    return AtariVectorEnv(game, num_envs, batch_size=batch_size, num_threads=env.ale_threads,
                          repeat_action_probability=env.repeat_action_probability,
                          max_num_frames_per_episode=env.max_episode_frames,
                          reward_clipping=False, episodic_life=False, noop_max=30,
                          use_fire_reset=True, autoreset_mode=AutoresetMode.NEXT_STEP)


def frames_last(obs: np.ndarray) -> np.ndarray:
    """Stacked frames (..., stack, height, width) -> (..., height, width, stack), contiguous.

    ale-py and gymnasium's FrameStackObservation put the stack first; the CNN (TensorFlow's
    CPU convolutions) wants it last. Moving it once here, in numpy, costs less than a
    transpose inside the model, which would run again for every predict and train pass.
    """
    return np.ascontiguousarray(np.moveaxis(obs, -3, -1))


def frames_last_space(space: gym.spaces.Box) -> gym.spaces.Box:
    return gym.spaces.Box(frames_last(space.low), frames_last(space.high), dtype=space.dtype)


def with_frames_last(vec: gym.vector.VectorEnv) -> gym.vector.VectorEnv:
    """`vec` with stacked-frame observations moved to (height, width, stack); others as is."""
    shape = vec.single_observation_space.shape  # None for Dict and Tuple spaces
    if shape is None or len(shape) != 3:
        return vec
    return TransformObservation(vec, frames_last, frames_last_space(vec.observation_space),
                                frames_last_space(vec.single_observation_space))


class LockStepEnvs:
    """A gymnasium vector env: every env steps on every call (`ids` is always all of them)."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        self.env = env
        self.num_envs = env.num_envs
        self.single_observation_space = env.single_observation_space
        self.single_action_space = getattr(env, "single_action_space", None)
        self._ids = np.arange(env.num_envs)
        self._actions = None

    @classmethod
    def of(cls, envs) -> "LockStepEnvs":
        """`envs` as they are if they are LockStepEnvs already, else a gymnasium vector env in
        lock step."""
        return envs if isinstance(envs, LockStepEnvs) else cls(envs)

    def reset(self, seed: int):
        obs, info = self.env.reset(seed=seed)
        return self._ids, obs, info

    def send(self, actions: np.ndarray) -> None:
        self._actions = actions

    def recv(self):
        obs, rewards, terminated, truncated, info = self.env.step(self._actions)
        return self._ids, obs, rewards, terminated, truncated, info

    def close(self) -> None:
        self.env.close()


class AsyncAtariEnvs(LockStepEnvs):
    """ale-py's AtariVectorEnv with batch_size < num_envs: its C++ threads step the games;
    `recv()` returns the first `batch_size` envs ready (`info["env_id"]`) and `send()`
    answers them in that order. The first time an env shows up it brings its reset frame."""

    def __init__(self, env) -> None:
        super().__init__(env)
        self.single_observation_space = frames_last_space(env.single_observation_space)

    def reset(self, seed: int):
        obs, info = self.env.reset(seed=seed)
        return np.asarray(info["env_id"]), frames_last(obs), info

    def send(self, actions: np.ndarray) -> None:
        self.env.send(actions)

    def recv(self):
        obs, rewards, terminated, truncated, info = self.env.recv()
        return np.asarray(info["env_id"]), frames_last(obs), rewards, terminated, truncated, info


def make_agent_envs(env_id: str, num_envs: int, env: EnvConfig) -> LockStepEnvs:
    """The envs one agent steps: lock step, or ale-py's async batches (`ale_batch_size`)."""
    if env_backend(env_id, env) == "ale_vector" and 0 < env.ale_batch_size < num_envs:
        return AsyncAtariEnvs(make_atari_vector_env(ale_game(env_id), num_envs, env,
                                                    batch_size=env.ale_batch_size))
    return LockStepEnvs(make_vector_env(env_id, num_envs, env))


def make_vector_env(env_id: str, num_envs: int, env: EnvConfig | None = None
                    ) -> gym.vector.VectorEnv:
    """`num_envs` copies of `env_id` stepped together.

    Atari ids (`ALE/Pong-v5`) get ale-py's C++ vector env; others use the env's own vectorised
    implementation when it registers one (CartPole does: one numpy call steps all copies)
    and gymnasium's SyncVectorEnv otherwise.
    """
    env = env or EnvConfig(env_id=env_id)
    backend = env_backend(env_id, env)
    if backend == "ale_vector":
        return with_frames_last(make_atari_vector_env(ale_game(env_id), num_envs, env))
    if ale_game(env_id) is not None:
        return with_frames_last(make_atari_threads_env(env_id, num_envs, env))
    env_id = resolve_env_id(env_id)
    spec = gym.spec(env_id)
    mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    vec = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode)
    autoreset = vec.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if autoreset != AutoresetMode.NEXT_STEP:
        vec.close()
        raise EnvError(f"env {env_id!r}: vector env autoreset mode {autoreset} is not NEXT_STEP")
    return with_frames_last(vec)


def inspect_env(env_id: str, env: EnvConfig | None = None) -> EnvSpec:
    """Check that `env_id` exists and suits ga3c; raise EnvError with one clear line if not.

    The spaces are read from the vector env the agents will use (for Atari: the preprocessed
    uint8 frames, stack moved last: (84, 84, 4), not the raw screen).
    """
    is_ale = ale_game(env_id) is not None
    problems = []
    if env is not None and env.episodic_life and not is_ale:
        problems.append(f"--episodic_life needs an Atari game (ALE/Name-v5 ids), not {env_id!r}")
    if env is not None and env.env_backend == "ale_vector" and not is_ale:
        problems.append(f"--env_backend=ale_vector steps Atari games only (ALE/Name-v5 ids), "
                        f"not {env_id!r}; use --env_backend=threads")
    if not is_ale:
        try:
            gym.spec(resolve_env_id(env_id))
        except EnvError as exc:
            problems.append(str(exc))
        except gym.error.Error as exc:
            problems.append(f"unknown env id {env_id!r}: {exc}")
    if problems:  # all of them at once: the env cannot be built to check the rest
        raise EnvError("; ".join(problems))
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
    box = isinstance(act, gym.spaces.Box)
    if not (isinstance(act, gym.spaces.Discrete)
            or box and len(act.shape) == 1 and act.shape[0] >= 1
            and np.all(np.isfinite(act.low)) and np.all(np.isfinite(act.high))):
        raise EnvError(f"env {env_id!r} has action space {act}; {SUPPORTED}")
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) not in (1, 3):
        raise EnvError(f"env {env_id!r} has observation space {obs}; {SUPPORTED}")
    if len(obs.shape) == 3 and obs.dtype != np.uint8:
        raise EnvError(f"env {env_id!r} has {obs.dtype} frames; the CNN takes uint8 frames")
    problems = []
    if len(obs.shape) == 3 and box:
        problems.append(f"env {env_id!r} has frame observations and a Box action space: the "
                        "CNN is for Discrete actions (Box actions take vector observations)")
    if env is not None and env.normalize_obs and len(obs.shape) == 3:
        problems.append(f"--normalize_obs is for vector observations; {env_id!r} has frames "
                        "(the CNN scales them to [0, 1] itself)")
    if problems:
        raise EnvError("; ".join(problems))
    dtype = np.dtype(np.float32) if np.issubdtype(obs.dtype, np.floating) else np.dtype(obs.dtype)
    if box:
        return EnvSpec(tuple(obs.shape), dtype, int(act.shape[0]), True,
                       tuple(float(x) for x in act.low), tuple(float(x) for x in act.high))
    return EnvSpec(tuple(obs.shape), dtype, int(act.n))


def combination_problems(config: Config, spec: EnvSpec) -> list[str]:
    """What `config` asks that this env's spaces cannot take."""
    problems = []
    frames = len(spec.obs_shape) == 3
    if not frames and config.network.cnn != "ga3c":
        problems.append(f"--cnn={config.network.cnn} is for frame observations; "
                        f"{config.env.env_id!r} has vectors {spec.obs_shape}, which the MLP "
                        "takes (--hidden)")
    if spec.continuous and config.pipeline.runner == "ray":
        problems.append("--runner=ray steps Discrete action spaces only; use --runner=threads "
                        f"for {config.env.env_id!r}'s Box actions")
    return problems


def check_config(config: Config) -> EnvSpec:
    """The env's spec, after every check of `config` (its own and the env's): UserError
    listing every problem at once."""
    problems = config.validate()
    spec = None
    if config.env.env_id.strip():
        try:
            spec = inspect_env(config.env.env_id, config.env)
        except EnvError as exc:
            problems.append(str(exc))
    if spec is not None:
        problems += combination_problems(config, spec)
    if problems:
        raise UserError("invalid config: " + "; ".join(problems))
    return spec
