"""Shared fixtures: one tiny real training run for every test that needs a finished logdir."""

import pytest

from tests.test_cli import TINY, train_cli


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny real CartPole run through `ga3c-train`'s entry function: (logdir, CliRun). Do
    not modify it: tests that change or resume a run work on a copy (see test_cli.copy_run)."""
    logdir = str(tmp_path_factory.mktemp("run") / "cp")
    proc = train_cli(*TINY, f"--logdir={logdir}", "--max_env_steps=3000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return logdir, proc
