"""ga3c: a GA3C-style actor-critic trainer.

    import ga3c
    config = ga3c.Config().replace(run__logdir="runs/nb", run__max_env_steps=50_000)
    result = ga3c.train(config)                     # a RunResult: result.ok, result.score...
    policy = ga3c.load_policy("runs/nb")
    actions, values = policy.act(observations)      # greedy; sample=True draws from it

TensorFlow is imported on first use, not by `import ga3c`.
"""

from __future__ import annotations

import contextlib
import sys

from ga3c.config import Config
from ga3c.errors import UserError

__all__ = ["Config", "UserError", "load_policy", "train"]


def train(config: Config, stop=None, *, env_spec=None, hand_over=None):
    """Train until one of `config.run`'s stop conditions (or until `stop`, a threading.Event,
    is set); the `RunResult` (`.ok`, `.error`, `.score`, `.checkpoint`...). UserError for bad
    input, every problem listed at once. `ga3c-train` runs through here too: it passes the
    `env_spec` it checked (and the logdir it checked) and `hand_over`, called with the
    service before it starts (its signal handlers then ask the service to stop)."""
    from ga3c.cli import check_writable_dir, import_tensorflow_quietly
    from ga3c.envs import check_config
    from ga3c.service import build_service

    if env_spec is None:
        env_spec = check_config(config)
        check_writable_dir(config.run.logdir)
    if "tensorflow" not in sys.modules:  # ga3c-train imported it already, configured
        import_tensorflow_quietly(config.run.tf_threads)
    p = config.pipeline
    if p.runner == "ray":  # connected (a bad address refused) before the model is built
        from ga3c.ray_runner import ray_session

        # a local Ray gets a CPU for each runner the autotuner may add, too
        session = ray_session(p.ray_address, max(p.num_runners, p.max_agents) if p.autotune
                              else p.num_runners)
    else:
        session = contextlib.nullcontext()
    with session:  # a Ray this run started is shut down when it ends
        service = build_service(config, env_spec, stop)
        if hand_over is not None:
            hand_over(service)
        return service.run()


def load_policy(logdir: str, checkpoint: str | None = None, seed: int = 0):
    """A run's policy: `.act(observations, sample=False) -> (actions, values)`."""
    from ga3c.policy import load_policy as load

    return load(logdir, checkpoint, seed)
