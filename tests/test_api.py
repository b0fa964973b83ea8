"""The Python API: ga3c.train(config) -> result, ga3c.load_policy(logdir) -> actions, values."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import ga3c

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(env__envs_per_agent=4, pipeline__max_predict_batch=8, pipeline__min_train_batch=16,
            network__hidden=(16,), run__log_every_seconds=60.0)


def test_train_then_load_the_policy_and_act(tmp_path, capsys):
    logdir = str(tmp_path / "nb")
    result = ga3c.train(ga3c.Config().replace(run__logdir=logdir, run__max_env_steps=1500,
                                              **TINY))
    assert result.ok and result.env_steps >= 1500, result
    assert result.stop_reason == "reached --max_env_steps=1,500"
    assert result.checkpoint.endswith(f"ckpt-{result.env_steps}")
    assert "error" not in capsys.readouterr().err
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    policy = ga3c.load_policy(logdir)  # policy.keras
    actions, values = policy.act(obs)
    assert actions.shape == (5,) and values.shape == (5,) and set(actions) <= {0, 1}
    sampled, _ = policy.act(obs, sample=True)
    assert sampled.shape == (5,) and set(sampled) <= {0, 1}
    # The checkpoint's network alone gives the same numbers as policy.keras.
    from_checkpoint = ga3c.load_policy(logdir, checkpoint="latest")
    assert from_checkpoint.checkpoint == result.checkpoint
    for a, b in zip(policy.logits_and_values(obs), from_checkpoint.logits_and_values(obs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_config_lists_every_problem_including_the_envs(tmp_path):
    config = ga3c.Config().replace(env__env_id="CartPole-v1", env__episodic_life=True,
                                   pipeline__num_agents=0, run__logdir=str(tmp_path / "x"))
    with pytest.raises(ga3c.UserError) as info:
        ga3c.train(config)
    assert "num_agents=0" in str(info.value) and "--episodic_life" in str(info.value)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ga3c.UserError, match="no config.json"):
        ga3c.load_policy(str(tmp_path))


# TensorFlow's C++ start-up lines, e.g. "I0000 00:00:1796289119.342456    2893
# cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used."
TF_STARTUP = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|absl::InitializeLog|cudart_stub|"
                        r"cpu_feature_guard|oneDNN custom operations|cuda_platform|cuInit",
                        re.M)


def test_import_ga3c_then_train_prints_nothing_of_tensorflows_start_up(tmp_path):
    """A notebook's `import ga3c; ga3c.train(config)`, in a fresh process: TensorFlow is
    imported by ga3c, quietly, so none of its C++ start-up lines reach stderr."""
    script = ("import ga3c\n"
              f"config = ga3c.Config().replace(run__logdir={str(tmp_path / 'nb')!r}, "
              f"run__max_env_steps=1500, **{TINY!r})\n"
              "result = ga3c.train(config)\n"
              "print('ok', result.ok)\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "GA3C_TF_VERBOSE")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "ok True" in proc.stdout, proc.stderr[-3000:]
    assert not TF_STARTUP.search(proc.stderr), proc.stderr[-3000:]


def test_the_library_does_not_import_the_command_line():
    """`ga3c.train` and `ga3c.load_policy` reach nothing in ga3c/cli.py."""
    for name in ("__init__.py", "service.py", "startup.py", "policy.py", "evaluate.py"):
        with open(os.path.join(REPO, "ga3c", name)) as f:
            assert not re.search(r"^\s*(from ga3c\.cli |import ga3c\.cli)", f.read(), re.M), name
