"""Presets (latentvi.presets) through the command line and the Python API: a typed value always
wins over a preset, even one equal to the dataclass default; what is not typed comes from the
preset. Parse and resolve only: nothing trains here."""

import dataclasses

import pytest

from latentvi.cli import build_parser, resolve_latent_q, resolve_world_model
from latentvi.jobs import e2c
from latentvi.jobs.latent_q import RunConfig
from latentvi.jobs.world_model import WorldModelRunConfig
from latentvi.models.e2c import E2CConfig
from latentvi.models.ssm import RSSMConfig
from latentvi.presets import AGENT_PRESETS, ENV_PRESETS, PRESETS, preset_values, resolve
from latentvi.rl.dreamer import DreamerConfig
from latentvi.rl.latent_q import LatentQConfig
from latentvi.rl.planet import PlanetConfig
from latentvi.rl.slac import SlacConfig
from latentvi.rl.solar import SolarConfig
from latentvi.rl.world_model_agent import ModelTrainingConfig

CONFIG_TYPES = {
    "latent-q": (RunConfig, LatentQConfig),
    "world-model": (
        WorldModelRunConfig,
        RSSMConfig,
        ModelTrainingConfig,
        PlanetConfig,
        DreamerConfig,
        SlacConfig,
        SolarConfig,
    ),
    "e2c": (e2c.E2CRunConfig, E2CConfig),
}


def _parse(*argv):
    return build_parser().parse_args(list(argv))


def _default(config_type, name):
    return next(f.default for f in dataclasses.fields(config_type) if f.name == name)


def test_every_preset_names_real_fields_and_builds_valid_configs():
    for command, types in CONFIG_TYPES.items():
        fields = {f.name for t in types for f in dataclasses.fields(t)}
        tables = [PRESETS[command]]
        tables += ENV_PRESETS.get(command, {}).values()
        tables += AGENT_PRESETS.get(command, {}).values()
        for table in tables:
            for name, values in table.items():
                assert set(values) <= fields, (command, name, set(values) - fields)
        for name in PRESETS[command]:
            configs = resolve(command, name, types)  # validated by each __post_init__
            values = preset_values(command, name)
            for config in configs:
                for field in dataclasses.fields(config):
                    if field.name in values:
                        assert getattr(config, field.name) == values[field.name]


# ------------------------------------------------------------------------------ rl latent-q


def test_latent_q_typed_value_equal_to_the_default_beats_the_preset():
    assert _default(RunConfig, "steps") == 30_000 and PRESETS["latent-q"]["debug"]["steps"] == 400
    assert _default(LatentQConfig, "latent_dim") == 32
    arguments = _parse(
        "rl", "latent-q", "--preset", "debug", "--steps", "30000", "--latent-dim", "32"
    )
    run, agent = resolve_latent_q(arguments)
    assert run.steps == 30_000 and agent.latent_dim == 32
    # what was not typed comes from the preset
    debug = PRESETS["latent-q"]["debug"]
    assert run.buffer_size == debug["buffer_size"] and run.image_size == debug["image_size"]
    assert agent.hidden == debug["hidden"] and agent.batch_size == debug["batch_size"]


def test_the_readme_pixel_chain_command_gets_action_repeat_1():
    # README: latentvi rl latent-q --env latentvi/PixelChain-v0 --preset debug --out runs/chain
    argv = ["rl", "latent-q", "--env", "latentvi/PixelChain-v0", "--preset", "debug"]
    run, _ = resolve_latent_q(_parse(*argv, "--out", "runs/chain"))
    assert run.action_repeat == 1 and run.steps == PRESETS["latent-q"]["debug"]["steps"]
    # in every preset, and a typed value still wins (2 is the dataclass default)
    assert resolve_latent_q(_parse(*argv[:4]))[0].action_repeat == 1
    assert resolve_latent_q(_parse(*argv, "--action-repeat", "2"))[0].action_repeat == 2
    # other environments keep the default
    pendulum = _parse("rl", "latent-q", "--env", "Pendulum-v1", "--preset", "debug")
    assert resolve_latent_q(pendulum)[0].action_repeat == _default(RunConfig, "action_repeat") == 2


# ------------------------------------------------------------------------ world-model train


@pytest.mark.parametrize("agent", ["planet", "dreamer", "slac"])
def test_world_model_typed_value_equal_to_the_default_beats_the_preset(agent):
    # the example: the default preset's 1 free nat against a typed 3.0 (the default)
    assert _default(RSSMConfig, "free_nats") == 3.0
    assert PRESETS["world-model"]["default"]["free_nats"] == 1.0
    argv = ["world-model", "train", "--agent", agent, "--free-nats", "3.0", "--no-grayscale"]
    run, model, training, planet, dreamer, slac, _solar = resolve_world_model(_parse(*argv))
    assert model.free_nats == 3.0 and run.grayscale is False
    # the preset fills the rest
    preset = PRESETS["world-model"]["default"]
    assert model.kl_balance == preset["kl_balance"] and model.hidden == preset["hidden"]
    assert run.steps == preset["steps"] and training.batch_size == preset["batch_size"]
    assert planet.candidates == preset["candidates"] and dreamer.actor_lr == preset["actor_lr"]
    assert slac.model_only_updates == preset["model_only_updates"]
    # without the typed values, the preset's
    run, model, *_ = resolve_world_model(_parse("world-model", "train", "--agent", agent))
    assert model.free_nats == 1.0 and run.grayscale is True


def test_world_model_agent_preset_loses_to_a_typed_value():
    argv = ["world-model", "train", "--agent", "slac", "--preset", "paper"]
    training = resolve_world_model(_parse(*argv))[2]
    assert (training.batch_size, training.chunk_length) == (32, 9)  # SLAC's paper batch
    assert _default(ModelTrainingConfig, "batch_size") == 50
    training = resolve_world_model(_parse(*argv, "--batch-size", "50"))[2]
    assert (training.batch_size, training.chunk_length) == (50, 9)
    # the other agents do not get SLAC's batch
    dreamer = resolve_world_model(_parse(*argv[:3], "dreamer", *argv[4:]))[2]
    assert (dreamer.batch_size, dreamer.chunk_length) == (50, 50)


# ------------------------------------------------------------------------------------- e2c

E2C = ["world-model", "train", "--agent", "e2c"]


@pytest.mark.parametrize("prefix", ["--", "--e2c-"])
def test_e2c_typed_value_equal_to_the_default_beats_the_preset(prefix):
    assert _default(e2c.E2CRunConfig, "zoom") == 1 and PRESETS["e2c"]["default"]["zoom"] == 2
    assert _default(E2CConfig, "consistency") == 0.25
    argv = [*E2C, f"{prefix}zoom", "1", f"{prefix}consistency=0.25", "--seed", "4"]
    run, model = resolve_world_model(_parse(*argv))
    assert run.zoom == 1 and model.consistency == 0.25 and run.seed == 4
    preset = PRESETS["e2c"]["default"]
    assert run.transitions == preset["transitions"] and run.controller == preset["controller"]
    assert model.hidden == preset["hidden"]
    # E2C's own names: --steps and --hidden are E2C's fields here, not the world model's
    run, model = resolve_world_model(_parse(*E2C, "--preset", "debug", "--steps", "4"))
    assert run.steps == 4 and run.image_size == PRESETS["e2c"]["debug"]["image_size"]
    assert resolve_world_model(_parse(*E2C, "--hidden", "8,8"))[1].hidden == (8, 8)
    # a typed boolean in either spelling beats the default preset's regulator = True
    assert PRESETS["e2c"]["default"]["regulator"] is True
    for option in ("--no-regulator", "--no-e2c-regulator"):
        assert resolve_world_model(_parse(*E2C, option))[0].regulator is False
    # --agent=e2c and argparse's abbreviation --ag reach E2C's options too
    for agent in (["--agent=e2c"], ["--ag", "e2c"]):
        argv = ["world-model", "train", *agent, "--transitions", "64"]
        assert resolve_world_model(_parse(*argv))[0].transitions == 64


def test_e2c_refuses_the_other_agents_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(*E2C, "--candidates", "3")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --candidates 3" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        _parse(*E2C, "--help")
    assert exit_info.value.code == 0
    assert "--transitions" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- Python API


def test_python_overrides_win_and_typos_are_refused():
    run, model = e2c.preset("default", zoom=1, consistency=0.25)
    assert run.zoom == 1 and model.consistency == 0.25
    assert run.transitions == PRESETS["e2c"]["default"]["transitions"]
    types = CONFIG_TYPES["world-model"]
    model = resolve("world-model", "default", types, {"free_nats": 3.0}, agent="planet")[1]
    assert model.free_nats == 3.0
    # an environment entry applies when the environment comes from the overrides ...
    chain = {"env": "latentvi/PixelChain-v0"}
    assert resolve("latent-q", "default", (RunConfig,), chain)[0].action_repeat == 1
    # ... and loses to an explicit value
    explicit = {**chain, "action_repeat": 2}
    assert resolve("latent-q", "default", (RunConfig,), explicit)[0].action_repeat == 2
    with pytest.raises(ValueError, match="free_nat"):
        resolve("world-model", "default", types, {"free_nat": 3.0})
    with pytest.raises(ValueError, match=r"preset = 'huge' is invalid.*debug"):
        resolve("e2c", "huge", CONFIG_TYPES["e2c"])
    with pytest.raises(ValueError, match="command = 'e2d'"):
        resolve("e2d", "debug", CONFIG_TYPES["e2c"])
