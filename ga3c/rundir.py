"""The run directory: the one place that names its files, and reads and writes config.json.

    <logdir>/config.json        the run's settings (earlier, different ones: config.<n>.json)
    <logdir>/checkpoints/       model, optimizer and counters (`ga3c.checkpoints`)
    <logdir>/episodes.csv       one row per finished episode (`ga3c.stats`)
    <logdir>/tb/                TensorBoard scalars
    <logdir>/policy.keras       the latest checkpoint's network, for `ga3c.load_policy`
    <logdir>/eval-*.json        `ga3c-eval` summaries

Used by the service, ga3c-eval, ga3c-plot and the benchmarks. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import json
import os

from ga3c.config import Config
from ga3c.errors import UserError


def keep_aside(path: str) -> None:
    """Rename an existing file `name.ext` to the first free `name.<n>.ext` (never delete it)."""
    if not os.path.exists(path):
        return
    stem, ext = os.path.splitext(path)
    n = 1
    while os.path.exists(f"{stem}.{n}{ext}"):
        n += 1
    os.replace(path, f"{stem}.{n}{ext}")


@dataclasses.dataclass(frozen=True)
class RunDir:
    path: str

    @property
    def config_json(self) -> str:
        return os.path.join(self.path, "config.json")

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.path, "checkpoints")

    @property
    def episodes_csv(self) -> str:
        return os.path.join(self.path, "episodes.csv")

    @property
    def updates_csv(self) -> str:
        return os.path.join(self.path, "updates.csv")

    @property
    def tensorboard(self) -> str:
        return os.path.join(self.path, "tb")

    @property
    def policy(self) -> str:
        return os.path.join(self.path, "policy.keras")

    def eval_json(self, checkpoint: str, policy: str, env_id: str | None = None) -> str:
        """Default summary path of a ga3c-eval (`env_id`: when not the run's own env)."""
        env_part = f"-{env_id.replace('/', '_').replace(':', '_')}" if env_id else ""
        return os.path.join(self.path,
                            f"eval-{os.path.basename(checkpoint)}{env_part}-{policy}.json")

    def write_config(self, config: Config) -> None:
        """Write `config.json`. An earlier one that differs in anything but the `run` section
        (stop conditions, intervals, logdir) is kept as config.<n>.json."""
        path = self.config_json
        if os.path.exists(path):
            try:
                with open(path) as f:
                    old = json.load(f)
            except (OSError, ValueError):
                old = None
            new = config.to_dict()
            if old is None or {k: v for k, v in old.items() if k != "run"} != json.loads(
                    json.dumps({k: v for k, v in new.items() if k != "run"})):
                keep_aside(path)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(config.to_json() + "\n")
        os.replace(tmp, path)

    def read_config(self) -> Config:
        """The run's validated Config; UserError if this is not a readable ga3c run."""
        path = self.config_json
        if not os.path.isdir(self.path):
            raise UserError(f"logdir {self.path!r} does not exist")
        if not os.path.exists(path):
            raise UserError(f"{self.path!r} is not a ga3c run: no config.json in it")
        try:
            with open(path) as f:
                config = Config.from_dict(json.load(f))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
        problems = config.validate()
        if problems:
            raise UserError(f"{path} is not a valid ga3c config: {'; '.join(problems)}")
        return config
