"""Frozen, validated configuration for a ga3c run.

Flags are read once in `ga3c.cli` and turned into a `Config`; every other module receives
plain config objects. `Config.validate()` returns *every* problem at once, each naming the
field, the value and what is allowed, so a bad command line is fixed in one edit.

No TensorFlow here: this module is imported by tests that run without it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any


ENV_BACKENDS = ("auto", "threads", "ale_vector")
LR_SCHEDULES = ("constant", "linear")
ACTIVATIONS = ("relu", "leaky_relu")  # the CNN trunk's; leaky_relu's slope below 0 is 0.01
RUNNERS = ("threads", "ray")


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    env_id: str = "CartPole-v1"
    # Each environment thread (agent) steps a small vector of envs to amortise Python overhead.
    envs_per_agent: int = 96
    # Atari (ALE/... ids): sticky actions. 0 as in GA3C's "Deterministic" Pong and the
    # NoFrameskip-v4 setups of SB3/CleanRL baselines, so scores compare; 0.25 is Machado et
    # al.'s harder protocol.
    repeat_action_probability: float = 0.0
    # Clip training rewards to [-1, 1] (Atari); scores in logs and episodes.csv stay real.
    clip_rewards: bool = False
    # How the environments are stepped. "threads": gymnasium envs in the agents' Python threads
    # (any gymnasium id; Atari preprocessing by gymnasium's wrappers). "ale_vector": ale-py's
    # C++ vector env (ALE/... ids only), preprocessing in C++ outside the GIL. "auto":
    # ale_vector for ALE ids, threads otherwise.
    env_backend: str = "auto"
    # ale-py C++ worker threads per agent's Atari vector env.
    ale_threads: int = 1
    # ale_vector: how many envs each recv() returns (0: all of them, lock step). Smaller
    # batches let the C++ threads step some games while the rest wait for actions.
    ale_batch_size: int = 0
    # Atari: an episode is truncated (time limit, bootstrapped) after this many frames
    # (108,000 frames = 30 minutes of play, the ALE standard).
    max_episode_frames: int = 108_000
    # Atari: a lost life ends the training episode (no bootstrap across it); scores and
    # episode counts still follow whole games.
    episodic_life: bool = False
    # Vector observations: normalise by a running mean and variance (clipped to +-10). The
    # statistics are variables of the network: checkpointed, and applied alike in training,
    # ga3c-eval and ga3c.load_policy.
    normalize_obs: bool = False
    # Divide training rewards by a running std of the discounted return (per agent's envs,
    # as SB3's VecNormalize; not checkpointed). Scores stay the env's.
    normalize_reward: bool = False


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    # Hidden layer sizes of the MLP used for vector observations.
    hidden: tuple[int, ...] = (64, 64)
    # Separate policy and value towers (True) or one shared trunk with two heads (False).
    separate_towers: bool = True
    # CNN trunk for image observations: "ga3c" (GA3C's small net) or "nature" (Nature DQN).
    cnn: str = "ga3c"
    # Kernel init of the trunk and value head: "orthogonal" (gain sqrt(2) trunk, 1 value head,
    # as OpenAI baselines / SB3) or "glorot" (Keras' default). The policy head is always
    # orthogonal with gain 0.01.
    init: str = "orthogonal"
    # Activation of the CNN trunk: "relu" (Nature DQN) or "leaky_relu" (slope 0.01 below 0),
    # under which a unit that is negative on every frame still gets a gradient and can come
    # back (docs/stability.md: Pong's conv0 lost 30 of its 32 ReLU channels for good).
    activation: str = "relu"
    # CNN: subtract each frame's mean pixel inside the model (ga3c.network.FrameCentering), so
    # that a conv0 channel's response to a uniform background is its bias alone.
    center_frames: bool = False
    # Box action spaces: the Gaussian policy's state-independent log-std starts here.
    log_std_init: float = 0.0


@dataclasses.dataclass(frozen=True)
class AlgoConfig:
    # Defaults are the CartPole-tuned values of configs/cartpole.cfg (see the README).
    n_step: int = 5
    gamma: float = 0.98
    learning_rate: float = 4e-3
    # "constant", or "linear": decays to 0 at the end of the run's budget, whichever of
    # --max_env_steps (global env steps) and --max_seconds (this process's training) comes
    # first, as OpenAI baselines' A2C decays over its total steps. Late in a run smaller steps
    # keep a solved policy solved (CartPole at a constant 4e-3 swung between 500 and 90 after
    # solving).
    lr_schedule: str = "constant"
    rho: float = 0.99  # RMSProp decay
    # Added inside the square root, as in Keras 3 and TF1's RMSProp (GA3C used 0.1).
    epsilon: float = 1e-5
    # Starting value of RMSProp's mean-square accumulator. Keras 3 starts it at 0, so its first
    # steps are sign steps of ~10x the learning rate; TF1 (GA3C) and SB3's RMSpropTFLike (the
    # rl-zoo Atari A2C settings) start it at 1, so early steps are small.
    rmsprop_init: float = 0.0
    # Bound on each weight tensor's RMSProp step: its root-mean-square, in units of the
    # learning rate, is scaled down to at most this (Adafactor's update clipping; 0: off, plain
    # RMSProp). Steady steps have an RMS of ~1; a weight whose accumulator decayed while its
    # gradients were ~0 steps up to 10x lr (rho 0.99) on its next real gradient (ga3c.optimizer).
    update_clip: float = 0.0
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    clip_norm: float = 0.5  # global-norm gradient clipping; 0 disables it
    # Standardise advantages over each training batch: without it, CartPole at this learning
    # rate collapsed to a one-action policy in 2-4 of 10 seeds; with it, 10 of 10 solved.
    normalize_advantages: bool = True
    # Box actions: weight of a penalty on policy means beyond the action space's bounds,
    # mean over the batch of sum_i relu(mu_i - high_i)^2 + relu(low_i - mu_i)^2 (rl_games'
    # "bounds loss"). The env sees samples clipped to the bounds, so a mean far outside them
    # gets every sample clipped to the same action, advantages that no longer depend on the
    # sample, and nothing that pulls it back (Pendulum seed 1 stalled so); 0: off.
    bound_coef: float = 0.0


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    # On CPU each TensorFlow call costs ~0.5 ms whatever its size: few agents with many envs
    # each, and large batches, are what make CartPole fast on 2 cores.
    num_agents: int = 2
    num_predictors: int = 1
    num_trainers: int = 2
    min_train_batch: int = 256
    max_predict_batch: int = 192
    # Queue bounds (items): prediction requests and training batches.
    prediction_queue_size: int = 256
    training_queue_size: int = 64
    # Dynamic adjustment (ga3c.autotune): move one of agents / predictors / trainers by one,
    # measure env steps/s over a window, keep the change if it helped by `autotune_margin`.
    # With runner "ray" the agents are the Ray runners (`max_agents` bounds them too; each
    # one more needs a free CPU in the cluster, which a local Ray is sized for).
    autotune: bool = False
    autotune_window_seconds: float = 10.0
    autotune_margin: float = 0.05
    max_agents: int = 16
    max_predictors: int = 4
    max_trainers: int = 4
    # Where the envs run. "threads": `num_agents` agent threads in this process. "ray":
    # `num_runners` Ray actors (ga3c.ray_runner), on any node of a Ray cluster, each stepping
    # `envs_per_agent` envs; prediction and training stay batched in this process.
    runner: str = "threads"
    num_runners: int = 2
    # --runner=ray: a runner's envs are split into this many groups, all kept in flight, so
    # its env stepping overlaps the round trip and inference (1: one group, no overlap, full
    # predict batches: faster for few envs per runner on a small machine; see the README).
    runner_groups: int = 2
    # --runner=ray: "" starts a local Ray for the run (and shuts it down at its end); else the
    # address of a running cluster ("auto", host:port or ray://host:port).
    ray_address: str = ""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    logdir: str = "runs/ga3c"
    seed: int = 0
    max_env_steps: int = 0  # 0: no limit
    max_seconds: float = 0.0  # 0: no limit
    target_score: float | None = None  # stop when the mean of the last 100 episodes reaches it
    checkpoint_every_seconds: float = 60.0
    keep_checkpoints: int = 3
    log_every_seconds: float = 2.0
    resume: bool = True
    # Write updates.csv: a row per training step (loss terms and instruments), for looking at
    # what the updates before a collapse did. ~210 bytes per update (Pong: 6.6 MB for the 30,939
    # updates of 2.60M agent steps); CartPole makes ~70-90 updates/s.
    log_updates: bool = False
    tf_threads: int = 0  # TensorFlow intra-op threads; 0 lets TensorFlow decide
    xla: bool = False  # compile predict and train with XLA (batches padded to powers of two)
    # bfloat16 compute with float32 variables, heads, loss and optimizer state: "on", "off",
    # or "auto" (on where the CPU or GPU multiplies bfloat16 natively: ga3c.hardware).
    # true/false/1/0/yes/no (and a bool, as an old config.json holds) mean on/off.
    mixed_precision: str = "auto"

    def __post_init__(self) -> None:
        value = self.mixed_precision
        if isinstance(value, str):
            value = value.strip().lower()
        on = {True: "on", "true": "on", "1": "on", "yes": "on",
              False: "off", "false": "off", "0": "off", "no": "off"}
        if isinstance(value, (str, bool)):  # anything else is left for validate() to name
            value = on.get(value, value)
        object.__setattr__(self, "mixed_precision", value)


@dataclasses.dataclass(frozen=True)
class Config:
    env: EnvConfig = EnvConfig()
    network: NetworkConfig = NetworkConfig()
    algo: AlgoConfig = AlgoConfig()
    pipeline: PipelineConfig = PipelineConfig()
    run: RunConfig = RunConfig()

    def validate(self) -> list[str]:
        """Every problem with this config, one readable string each (empty list: valid)."""
        problems: list[str] = []

        def check(ok: bool, name: str, value: Any, need: str) -> None:
            if not ok:
                problems.append(f"{name}={value!r}: must be {need}")

        def finite(x: float) -> bool:
            return isinstance(x, (int, float)) and math.isfinite(x)

        e, n, a, p, r = self.env, self.network, self.algo, self.pipeline, self.run
        check(bool(e.env_id.strip()), "env", e.env_id, "a gymnasium env id")
        check(e.envs_per_agent >= 1, "envs_per_agent", e.envs_per_agent, ">= 1")
        check(e.env_backend in ENV_BACKENDS, "env_backend", e.env_backend,
              " or ".join(repr(b) for b in ENV_BACKENDS))
        check(e.ale_threads >= 1, "ale_threads", e.ale_threads, ">= 1")
        check(e.max_episode_frames >= 1, "max_episode_frames", e.max_episode_frames, ">= 1")
        check(0 <= e.ale_batch_size <= e.envs_per_agent, "ale_batch_size", e.ale_batch_size,
              f"in [0, envs_per_agent={e.envs_per_agent}] (0: all)")
        check(finite(e.repeat_action_probability) and 0 <= e.repeat_action_probability < 1,
              "repeat_action_probability", e.repeat_action_probability, "in [0, 1)")
        check(len(n.hidden) >= 1 and all(h >= 1 for h in n.hidden), "hidden", list(n.hidden),
              "one or more positive layer sizes")
        check(n.cnn in ("ga3c", "nature"), "cnn", n.cnn, "'ga3c' or 'nature'")
        check(n.init in ("orthogonal", "glorot"), "init", n.init, "'orthogonal' or 'glorot'")
        check(n.activation in ACTIVATIONS, "activation", n.activation,
              " or ".join(repr(a) for a in ACTIVATIONS))
        check(finite(n.log_std_init) and -5 <= n.log_std_init <= 2, "log_std_init",
              n.log_std_init, "in [-5, 2]")
        check(not (e.clip_rewards and e.normalize_reward), "normalize_reward",
              e.normalize_reward, "false with --clip_rewards (one reward transform at a time)")
        check(a.n_step >= 1, "n_step", a.n_step, ">= 1")
        check(finite(a.gamma) and 0.0 < a.gamma <= 1.0, "gamma", a.gamma, "in (0, 1]")
        check(finite(a.learning_rate) and a.learning_rate > 0, "learning_rate", a.learning_rate, "> 0")
        check(a.lr_schedule in LR_SCHEDULES, "lr_schedule", a.lr_schedule,
              " or ".join(repr(x) for x in LR_SCHEDULES))
        check(a.lr_schedule != "linear" or r.max_env_steps > 0 or r.max_seconds > 0,
              "lr_schedule", a.lr_schedule,
              "'constant' unless --max_env_steps or --max_seconds sets the run's end")
        check(finite(a.rho) and 0.0 <= a.rho < 1.0, "rho", a.rho, "in [0, 1)")
        check(finite(a.epsilon) and a.epsilon > 0, "epsilon", a.epsilon, "> 0")
        check(finite(a.rmsprop_init) and a.rmsprop_init >= 0, "rmsprop_init", a.rmsprop_init,
              ">= 0")
        check(finite(a.update_clip) and a.update_clip >= 0, "update_clip", a.update_clip,
              ">= 0 (0 disables)")
        check(finite(a.entropy_coef) and a.entropy_coef >= 0, "entropy_coef", a.entropy_coef, ">= 0")
        check(finite(a.value_coef) and a.value_coef > 0, "value_coef", a.value_coef, "> 0")
        check(finite(a.bound_coef) and a.bound_coef >= 0, "bound_coef", a.bound_coef,
              ">= 0 (0 disables)")
        check(finite(a.clip_norm) and a.clip_norm >= 0, "clip_norm", a.clip_norm, ">= 0 (0 disables)")
        check(p.num_agents >= 1, "num_agents", p.num_agents, ">= 1")
        check(p.num_predictors >= 1, "num_predictors", p.num_predictors, ">= 1")
        check(p.num_trainers >= 1, "num_trainers", p.num_trainers, ">= 1")
        check(p.runner in RUNNERS, "runner", p.runner, " or ".join(repr(x) for x in RUNNERS))
        check(p.num_runners >= 1, "num_runners", p.num_runners, ">= 1")
        check(p.runner_groups >= 1, "runner_groups", p.runner_groups, ">= 1")
        for knob in ("agents", "predictors", "trainers") if p.autotune else ():
            first = "num_runners" if knob == "agents" and p.runner == "ray" else f"num_{knob}"
            start, top = getattr(p, first), getattr(p, f"max_{knob}")
            check(top >= start, f"max_{knob}", top, f">= {first}={start} (with --autotune)")
        check(finite(p.autotune_window_seconds) and p.autotune_window_seconds >= 1,
              "autotune_window_seconds", p.autotune_window_seconds, ">= 1")
        check(finite(p.autotune_margin) and 0 <= p.autotune_margin < 1, "autotune_margin",
              p.autotune_margin, "in [0, 1)")
        check(p.min_train_batch >= 1, "min_train_batch", p.min_train_batch, ">= 1")
        check(p.max_predict_batch >= e.envs_per_agent, "max_predict_batch", p.max_predict_batch,
              f">= envs_per_agent ({e.envs_per_agent}) so one agent's request fits in a batch")
        check(p.prediction_queue_size >= 1, "prediction_queue_size", p.prediction_queue_size, ">= 1")
        check(p.training_queue_size >= 1, "training_queue_size", p.training_queue_size, ">= 1")
        check(bool(r.logdir.strip()), "logdir", r.logdir, "a directory path")
        check(0 <= r.seed < 2**31, "seed", r.seed, "in [0, 2**31)")
        check(r.max_env_steps >= 0, "max_env_steps", r.max_env_steps, ">= 0 (0: no limit)")
        check(finite(r.max_seconds) and r.max_seconds >= 0, "max_seconds", r.max_seconds,
              ">= 0 (0: no limit)")
        check(r.target_score is None or finite(r.target_score), "target_score", r.target_score,
              "a finite number or unset")
        check(finite(r.checkpoint_every_seconds) and r.checkpoint_every_seconds > 0,
              "checkpoint_every_seconds", r.checkpoint_every_seconds, "> 0")
        check(r.keep_checkpoints >= 1, "keep_checkpoints", r.keep_checkpoints, ">= 1")
        check(finite(r.log_every_seconds) and r.log_every_seconds > 0, "log_every_seconds",
              r.log_every_seconds, "> 0")
        check(r.tf_threads >= 0, "tf_threads", r.tf_threads, ">= 0 (0: TensorFlow decides)")
        check(r.mixed_precision in ("auto", "on", "off"), "mixed_precision", r.mixed_precision,
              "auto, on or off (or true/false)")
        return problems

    def learning_rate_at(self, env_steps: int, seconds: float) -> float:
        """The learning rate after `env_steps` global env steps and `seconds` of this
        process's training, under `algo.lr_schedule`."""
        a, r = self.algo, self.run
        if a.lr_schedule == "constant":
            return a.learning_rate
        progress = max(env_steps / r.max_env_steps if r.max_env_steps else 0.0,
                       seconds / r.max_seconds if r.max_seconds else 0.0)
        return a.learning_rate * max(0.0, 1.0 - progress)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def section_types(cls) -> dict[str, type]:
        """{"env": EnvConfig, "network": NetworkConfig, ...}"""
        return {f.name: f.type if isinstance(f.type, type) else globals()[f.type]
                for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """Inverse of `to_dict` (used to rebuild a run from its saved config.json)."""
        sections = {}
        for name, section_cls in cls.section_types().items():
            raw = dict(data.get(name, {}))
            known = {f.name for f in dataclasses.fields(section_cls)}
            unknown = set(raw) - known
            if unknown:
                raise ValueError(f"unknown {name} settings: {sorted(unknown)}")
            if "hidden" in raw:
                raw["hidden"] = tuple(raw["hidden"])
            sections[name] = section_cls(**raw)
        return cls(**sections)

    def replace(self, **sections: Any) -> "Config":
        """Copy with whole sections or `section__field=value` overrides (handy in tests)."""
        updates: dict[str, Any] = {}
        for key, value in sections.items():
            if "__" in key:
                section, name = key.split("__", 1)
                base = updates.get(section, getattr(self, section))
                updates[section] = dataclasses.replace(base, **{name: value})
            else:
                updates[key] = value
        return dataclasses.replace(self, **updates)
