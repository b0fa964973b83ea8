"""The learning-rate schedule as the running service applies it (the table is in test_config)."""

import pytest

from tests.test_cli import TINY, checkpoint_learning_rate, run_cli


@pytest.mark.parametrize("schedule, expect_low", [("linear", True), ("constant", False)])
def test_the_service_decays_the_learning_rate_to_zero_at_the_last_step(tmp_path, schedule,
                                                                        expect_low):
    logdir = str(tmp_path / schedule)
    proc = run_cli(*TINY, f"--logdir={logdir}", "--learning_rate=0.01", "--max_env_steps=4000",
                   f"--lr_schedule={schedule}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lr = checkpoint_learning_rate(logdir)  # the final checkpoint, written at the stop
    if expect_low:
        assert 0.0 <= lr < 0.002, lr  # ~0: the stop came at >= 4,000 of 4,000 steps
    else:
        assert lr == pytest.approx(0.01)
