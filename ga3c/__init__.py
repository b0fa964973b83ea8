"""ga3c: a GA3C-style actor-critic trainer.

    import ga3c
    config = ga3c.Config().replace(run__logdir="runs/nb", run__max_env_steps=50_000)
    result = ga3c.train(config)                     # a RunResult: result.ok, result.score...
    policy = ga3c.load_policy("runs/nb")
    actions, values = policy.act(observations)      # greedy; sample=True draws from it

TensorFlow is imported on first use, not by `import ga3c`.
"""

from __future__ import annotations

import sys

from ga3c.config import Config
from ga3c.errors import UserError

__all__ = ["Config", "UserError", "load_policy", "train"]


def train(config: Config, stop=None, *, env_spec=None, hand_over=None):
    """Train until one of `config.run`'s stop conditions (or until `stop`, a threading.Event,
    is set); the `RunResult` (`.ok`, `.error`, `.score`, `.checkpoint`...). UserError for bad
    input, every problem listed at once (the config's, the env's and the logdir's before
    TensorFlow is imported; a checkpoint's after). `ga3c-train` runs
    through here too: it passes the `env_spec` it checked (and the logdir it checked) and
    `hand_over`, called with the service before it starts (its signal handlers then ask the
    service to stop).

    TensorFlow's C++ start-up lines are kept off stderr, unless the caller imported
    TensorFlow before this (they were printed then; `GA3C_TF_VERBOSE=1` shows them)."""
    from ga3c.startup import check_writable_dir, import_tensorflow_quietly

    if env_spec is None:
        from ga3c.envs import check_config

        env_spec = check_config(config)
        check_writable_dir(config.run.logdir)
    if "tensorflow" not in sys.modules:  # else imported already: by ga3c-train, configured
        import_tensorflow_quietly(config.run.tf_threads)
    from ga3c.service import train as run  # imports TensorFlow: after the quiet import

    return run(config, env_spec, stop, hand_over)


def load_policy(logdir: str, checkpoint: str | None = None, seed: int = 0):
    """A run's policy: `.act(observations, sample=False) -> (actions, values)`. TensorFlow's
    C++ start-up lines are kept off stderr, as in `train`."""
    if "tensorflow" not in sys.modules:
        from ga3c.startup import import_tensorflow_quietly

        import_tensorflow_quietly()
    from ga3c.policy import load_policy as load

    return load(logdir, checkpoint, seed)
