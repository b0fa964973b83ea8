"""The learning-rate schedule as the running service applies it (the table is in test_config)."""

import pytest

import ga3c
from tests.test_api import TINY
from tests.test_cli import checkpoint_learning_rate


@pytest.mark.parametrize("schedule, expect_low", [("linear", True), ("constant", False)])
def test_the_service_decays_the_learning_rate_to_zero_at_the_last_step(tmp_path, schedule,
                                                                        expect_low):
    """A run in this process (`ga3c.train`, as ga3c-train runs it): the final checkpoint,
    written at the stop, holds the optimizer's learning rate as the service last set it."""
    logdir = str(tmp_path / schedule)
    result = ga3c.train(ga3c.Config().replace(
        run__logdir=logdir, run__max_env_steps=1000, algo__learning_rate=0.01,
        algo__lr_schedule=schedule, **TINY))
    assert result.ok and result.stop_reason == "reached --max_env_steps=1,000", result
    lr = checkpoint_learning_rate(logdir)
    if expect_low:
        assert 0.0 <= lr < 0.002, lr  # ~0: the stop came at >= 1,000 of 1,000 steps
    else:
        assert lr == pytest.approx(0.01)
