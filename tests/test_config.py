"""Config dataclasses and flag parsing (no TensorFlow)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from ga3c.cli import parse_config
from ga3c.errors import UserError
from ga3c.config import AlgoConfig, Config, EnvConfig, NetworkConfig, PipelineConfig, RunConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.cfg"))
CARTPOLE = CONFIG_DIR / "cartpole.cfg"


# -- flagfiles ------------------------------------------------------------------------------

def test_config_dir_has_flagfiles():
    assert CONFIG_FILES, f"no *.cfg in {CONFIG_DIR}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_flagfile_line_takes_effect(path):
    """A shipped flagfile parses (parse_config validates), and no line of it is silently
    undone by a later one: repeating any line after the file changes nothing."""
    config = parse_config([f"--flagfile={path}"])
    lines = [line.strip() for line in path.read_text().splitlines()
             if line.strip().startswith("--") and not line.strip().startswith("--flagfile")]
    assert lines
    for line in lines:
        assert parse_config([f"--flagfile={path}", line]) == config, line


def test_flagfile_values_and_comments_are_applied(tmp_path):
    cfg = tmp_path / "x.cfg"
    cfg.write_text("# a comment\n--env=Acrobot-v1\n\n--envs_per_agent=3\n--num_agents=5\n"
                   "// another comment\n--learning_rate=0.0125\n--noseparate_towers\n"
                   "--hidden=8,4\n--target_score=-90\n")
    c = parse_config([f"--flagfile={cfg}"])
    assert c.env == EnvConfig(env_id="Acrobot-v1", envs_per_agent=3)
    assert c.pipeline.num_agents == 5
    assert c.algo.learning_rate == pytest.approx(0.0125)
    assert c.network == NetworkConfig(hidden=(8, 4), separate_towers=False)
    assert c.run.target_score == -90.0
    assert c.run.seed == Config().run.seed  # untouched flags keep their defaults


def test_cartpole_cfg_sets_its_stop_conditions():
    c = parse_config([f"--flagfile={CARTPOLE}"])
    assert c.env.env_id == "CartPole-v1"
    assert c.run.target_score == 475.0
    assert c.run.max_seconds > 0


def test_atari_cfgs_follow_the_baselines_a2c_settings_and_the_min_batch_advice():
    for name, game, lives in [("pong.cfg", "ALE/Pong-v5", False),
                              ("breakout.cfg", "ALE/Breakout-v5", True)]:
        c = parse_config([f"--flagfile={CONFIG_DIR / name}"])
        assert (c.env.env_id, c.env.episodic_life, c.env.clip_rewards) == (game, lives, True)
        assert c.env.env_backend == "ale_vector" and c.env.repeat_action_probability == 0
        assert (c.algo.learning_rate, c.algo.gamma, c.algo.value_coef) == (7e-4, 0.99, 0.5)
        assert (c.network.cnn, c.network.init) == ("nature", "orthogonal")
        assert (c.algo.rmsprop_init, c.algo.normalize_advantages) == (1.0, False)
        # GA3C's maintainers (#22): a training batch below 20-40 was unstable.
        assert c.pipeline.min_train_batch >= 40
        # One agent's segment fills a batch: updates never wait on a second agent.
        assert c.env.envs_per_agent * c.algo.n_step >= c.pipeline.min_train_batch


def test_later_flags_override_the_flagfile():
    base = parse_config([f"--flagfile={CARTPOLE}"])
    c = parse_config([f"--flagfile={CARTPOLE}", "--seed=7", "--num_agents=2",
                      "--logdir=/tmp/elsewhere", "--hidden=32"])
    assert (c.run.seed, c.pipeline.num_agents, c.run.logdir) == (7, 2, "/tmp/elsewhere")
    assert c.network.hidden == (32,)
    # Everything not overridden still comes from the file.
    assert c.env == base.env and c.algo == base.algo
    assert c.pipeline.min_train_batch == base.pipeline.min_train_batch


def test_flagfile_overrides_flags_before_it(tmp_path):
    cfg = tmp_path / "small.cfg"
    cfg.write_text("# comment\n--num_agents=3\n--seed=11\n")
    c = parse_config(["--num_agents=5", f"--flagfile={cfg}", "--seed=12"])
    assert c.pipeline.num_agents == 3  # the file comes later than --num_agents=5
    assert c.run.seed == 12


def test_parses_are_independent():
    assert parse_config(["--seed=5"]).run.seed == 5
    assert parse_config([]).run.seed == Config().run.seed
    assert parse_config([]) == Config()


# -- bool flags -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, want", [
    (["--resume=false"], False),
    (["--resume=False"], False),  # the original GA3C turned the string "False" into True
    (["--resume=0"], False),
    (["--noresume"], False),
    (["--resume"], True),
    (["--resume=true"], True),
    (["--noresume", "--resume"], True),
    ([], True),
])
def test_bool_flags(argv, want):
    assert parse_config(argv).run.resume is want


def test_separate_towers_bool_flag():
    assert parse_config(["--separate_towers=false"]).network.separate_towers is False
    assert parse_config(["--noseparate_towers"]).network.separate_towers is False


def test_target_score_is_unset_by_default():
    assert parse_config([]).run.target_score is None
    assert parse_config(["--target_score=195.5"]).run.target_score == 195.5


# -- validation -----------------------------------------------------------------------------

def test_default_config_is_valid():
    assert Config().validate() == []


def test_validate_lists_every_problem_naming_its_field():
    bad = Config().replace(
        pipeline__num_agents=0,
        pipeline__min_train_batch=-1,
        algo__gamma=2.0,
        algo__learning_rate=math.nan,
        algo__rho=1.0,
        env__env_id="  ",
        network__hidden=(64, 0),
        network__activation="gelu",
        run__seed=-3,
        run__keep_checkpoints=0,
        run__target_score=math.inf,
    )
    problems = bad.validate()
    expected = ["num_agents", "min_train_batch", "gamma", "learning_rate", "rho", "env", "hidden",
                "activation", "seed", "keep_checkpoints", "target_score"]
    assert len(problems) == len(expected), problems
    for name in expected:
        matching = [p for p in problems if p.startswith(f"{name}=")]
        assert len(matching) == 1, (name, problems)
    assert any("gamma=2.0" in p and "(0, 1]" in p for p in problems)
    assert any(p.startswith("seed=-3") for p in problems)


def test_validate_cross_field_predict_batch():
    problems = Config().replace(env__envs_per_agent=16, pipeline__max_predict_batch=8).validate()
    assert len(problems) == 1 and problems[0].startswith("max_predict_batch=8")
    assert "envs_per_agent (16)" in problems[0]


def test_replace_keeps_other_fields_and_accumulates_same_section():
    c = Config().replace(algo__gamma=0.9, algo__n_step=7)
    assert (c.algo.gamma, c.algo.n_step) == (0.9, 7)
    assert c.algo.learning_rate == Config().algo.learning_rate
    assert c.pipeline == Config().pipeline
    assert Config().algo.gamma == AlgoConfig().gamma != 0.9  # the original is untouched
    section = PipelineConfig(num_agents=3)
    assert Config().replace(pipeline=section).pipeline is section


# -- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, fragment", [
    (["--no_such_flag=1"], "no_such_flag"),
    (["--flagfile=/nonexistent/ga3c.cfg"], "/nonexistent/ga3c.cfg"),
    (["--seed=abc"], "seed"),
    (["--gamma=high"], "gamma"),
    (["--num_agents=0"], "num_agents"),
    (["--gamma=1.5"], "gamma"),
    (["--max_predict_batch=4"], "max_predict_batch"),
    (["stray"], "stray"),
    (["--seed=1", "extra", "args"], "extra"),
    (["--hidden=64,abc"], "hidden"),
    (["--hidden=64,-1"], "hidden"),
    (["--hidden="], "hidden"),
])
def test_bad_input(argv, fragment):
    with pytest.raises(UserError) as info:
        parse_config(argv)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message  # shown as one line


def test_env_problems_are_listed_with_the_config_problems():
    """Checks that need the env id run with the others: one edit fixes the command line."""
    with pytest.raises(UserError) as info:
        parse_config(["--env=CartPole-v1", "--episodic_life", "--env_backend=ale_vector",
                      "--num_agents=0"], check_env=True)
    message = str(info.value)
    for needle in ("num_agents=0", "--episodic_life needs an Atari game",
                   "--env_backend=ale_vector steps Atari"):
        assert needle in message, message
    config, spec = parse_config(["--env=CartPole-v1"], check_env=True)
    assert config.env.env_id == "CartPole-v1" and spec.num_actions == 2


def test_bad_flag_inside_flagfile(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("--num_agents=2\n--typo_flag=3\n")
    with pytest.raises(UserError, match="typo_flag"):
        parse_config([f"--flagfile={cfg}"])


def test_out_of_range_reports_all_problems_at_once():
    with pytest.raises(UserError) as info:
        parse_config(["--num_agents=0", "--gamma=0", "--keep_checkpoints=0"])
    message = str(info.value)
    for name in ("num_agents=0", "gamma=0.0", "keep_checkpoints=0"):
        assert name in message


# -- round trip and immutability ------------------------------------------------------------

def custom_config() -> Config:
    return Config(
        env=EnvConfig(env_id="Acrobot-v1", envs_per_agent=4),
        network=NetworkConfig(hidden=(128, 32, 16), separate_towers=False),
        algo=AlgoConfig(n_step=8, gamma=0.95, clip_norm=40.0),
        pipeline=PipelineConfig(num_agents=2, num_trainers=1, max_predict_batch=16),
        run=RunConfig(logdir="/tmp/x", seed=9, target_score=-100.0, resume=False),
    )


@pytest.mark.parametrize("config", [Config(), custom_config(),
                                    parse_config([f"--flagfile={CARTPOLE}"])],
                         ids=["default", "custom", "cartpole"])
def test_round_trip(config):
    assert Config.from_dict(config.to_dict()) == config
    data = json.loads(config.to_json())
    back = Config.from_dict(data)
    assert back == config
    assert isinstance(back.network.hidden, tuple)
    assert back.to_json() == config.to_json()


def test_to_dict_shape():
    d = custom_config().to_dict()
    assert set(d) == {"env", "network", "algo", "pipeline", "run"}
    assert d["network"]["hidden"] == (128, 32, 16)
    assert d["run"]["target_score"] == -100.0


def test_from_dict_fills_missing_with_defaults_and_rejects_unknown():
    c = Config.from_dict({"algo": {"gamma": 0.5}})
    assert c == Config().replace(algo__gamma=0.5)
    with pytest.raises(ValueError, match="bogus"):
        Config.from_dict({"run": {"bogus": 1}})


def test_config_is_frozen():
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.algo = AlgoConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.run.seed = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.pipeline.num_agents = 1
    assert c == Config()
    hash(c)  # frozen dataclasses with tuple fields are hashable


def test_every_config_field_has_a_flag_and_every_flag_a_field():
    from absl import flags

    from ga3c.cli import define_flags

    fv = flags.FlagValues()
    define_flags(fv)
    fields = {f.name for cls in Config.section_types().values()
              for f in dataclasses.fields(cls)}
    assert {"env" if name == "env_id" else name for name in fields} == set(fv)
    # and each flag's default is its field's default
    defaults = {("env" if k == "env_id" else k): v for section in Config().to_dict().values()
                for k, v in section.items()}
    for name in fv:
        want = defaults[name]
        got = fv[name].default
        assert (list(map(str, want)) if name == "hidden" else want) == got, name


@pytest.mark.parametrize("steps, seconds, max_steps, max_seconds, expected", [
    # constant-rate runs are covered by "constant" below; linear decays to 0 at the first limit
    (0, 0.0, 1000, 0.0, 1.0),
    (250, 0.0, 1000, 0.0, 0.75),
    (1000, 0.0, 1000, 0.0, 0.0),
    (5000, 0.0, 1000, 0.0, 0.0),  # past the end (a resumed run): stays at 0
    (0, 15.0, 0, 60.0, 0.75),
    (500, 15.0, 1000, 60.0, 0.5),  # steps are further along than seconds: steps decide
    (100, 45.0, 1000, 60.0, 0.25),  # and the other way round
])
def test_linear_learning_rate_reaches_zero_at_the_first_limit(steps, seconds, max_steps,
                                                               max_seconds, expected):
    c = Config().replace(algo__lr_schedule="linear", algo__learning_rate=2.0,
                         run__max_env_steps=max_steps, run__max_seconds=max_seconds)
    assert c.validate() == []
    assert c.learning_rate_at(steps, seconds) == pytest.approx(2.0 * expected)


def test_constant_learning_rate_and_linear_needs_an_end():
    c = Config().replace(algo__learning_rate=0.3, run__max_env_steps=100)
    assert [c.learning_rate_at(s, t) for s, t in [(0, 0), (100, 9.0), (10**9, 1e9)]] == [0.3] * 3
    problems = Config().replace(algo__lr_schedule="linear").validate()
    assert len(problems) == 1 and problems[0].startswith("lr_schedule='linear'")
    assert "max_env_steps" in problems[0]
    assert any(p.startswith("lr_schedule='cosine'")
               for p in Config().replace(algo__lr_schedule="cosine").validate())
