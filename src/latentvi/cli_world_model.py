"""``latentvi world-model``: the world-model agents' command (PlaNet, Dreamer, SLAC, SOLAR and E2C).

One part of the command table of :mod:`latentvi.cli` (kept apart so that each stays short): its
option groups, its parser (E2C has its own options, by their own names) and its runner.
"""

from __future__ import annotations

import argparse

from latentvi.cli_options import Groups, print_result, with_options
from latentvi.config import CommandParser, typed_values
from latentvi.envs.navigation import ENV_ID as NAVIGATION_ID
from latentvi.jobs import e2c, e2c_nav, world_model
from latentvi.models.e2c import E2CConfig
from latentvi.models.ssm import RSSMConfig
from latentvi.presets import resolve
from latentvi.rl.dreamer import DreamerConfig
from latentvi.rl.planet import PlanetConfig
from latentvi.rl.slac import SlacConfig
from latentvi.rl.solar import SolarConfig
from latentvi.rl.world_model_agent import ModelTrainingConfig

__all__ = ["WORLD_MODEL_AGENTS", "WORLD_MODEL_GROUPS", "add_world_model", "resolve_world_model"]

WORLD_MODEL_GROUPS: Groups = (
    ("environment and run", world_model.WorldModelRunConfig),
    ("world model (action-dim and obs-shape are set from the environment)", RSSMConfig),
    ("world-model training", ModelTrainingConfig),
    ("planet", PlanetConfig),
    ("dreamer", DreamerConfig),
    ("slac", SlacConfig),
    ("solar", SolarConfig),
)
E2C_GROUPS: Groups = (("e2c run", e2c.E2CRunConfig), ("e2c model", E2CConfig))
WORLD_MODEL_AGENTS = (*world_model.AGENTS, "e2c")


def add_world_model(subparsers) -> None:
    parser = subparsers.add_parser(
        "world-model",
        help="latent state-space models and model-based RL (see: latentvi world-model train "
        "--help)",
        description="World models learned with a sequence ELBO, and agents that use them.",
    )
    commands = parser.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=CommandParser
    )
    train = commands.add_parser(
        "train",
        help="train an agent on a pixel environment (PlaNet, Dreamer, SLAC, SOLAR, E2C)",
        description="Train PlaNet (CEM planning in the learned latent space), Dreamer (actor-"
        "critic on imagined rollouts), SLAC (soft actor-critic: critics on the latent state, actor "
        "on the frame history) or SOLAR (LQR-FLM in an SVAE latent space) from pixels. Writes "
        "curve.csv/png, open_loop.png/csv/_mse.png (not SOLAR), frames.png, metrics, TensorBoard "
        "scalars, the episodes (episodes/) and resumable checkpoints to --out. --agent e2c runs the "
        "E2C pixel-pendulum experiment (Pendulum-v1 only; latent iLQR swing-up) with E2C's own "
        "options: see latentvi world-model train --agent e2c --help.",
        by_option=("--agent", {"e2c": _e2c_parser()}),
    )
    train.add_argument(
        "--agent",
        default="planet",
        choices=WORLD_MODEL_AGENTS,
        help="the agent (default: planet); only its own option group applies (e2c has its own "
        "options: --agent e2c --help)",
    )
    with_options(
        train,
        _run_world_model,
        WORLD_MODEL_GROUPS,
        resume=True,
        json_help="print the summary as JSON",
        presets=(
            "world-model",
            "debug: CPU, minutes; default: CPU pixel Pendulum, 50k steps; paper: the papers' "
            "sizes, for a GPU; v1: default's DreamerV1 behaviour by name; v3, v3-debug: "
            "DreamerV3's robustness techniques at default and debug sizes",
        ),
    )


def _e2c_parser() -> CommandParser:
    """``world-model train --agent e2c``: E2C's own options, by their own names."""
    parser = CommandParser(
        prog="latentvi world-model train",
        description="Train E2C (Watter et al. 2015) on its pixel pendulum, then swing up from the "
        "bottom with a controller in its latent space (latentvi.jobs.e2c.run_e2c): summary.json "
        "(swing-up success rate), config.json, metrics, the checkpoint and three figures in --out. "
        "Options spelled --e2c-NAME (older command lines) are read as --NAME.",
        old_prefix="e2c",
    )
    parser.add_argument("--agent", choices=WORLD_MODEL_AGENTS, default="e2c", help="e2c")
    parser.add_argument(
        "--env",
        default="Pendulum-v1",
        help="Pendulum-v1 (E2C sets the pendulum's state to collect its data) or "
        "latentvi/PointNav-v0 (random episodes from its fixed start; latentvi.jobs.e2c_nav)",
    )
    parser.add_argument("--out", default=None, help="run folder (required)")
    return with_options(
        parser,
        _run_world_model,
        E2C_GROUPS,
        resume=True,
        json_help="print the summary as JSON",
        presets=(
            "e2c",
            "debug: seconds; default: CPU, BENCHMARKS.md's runs; paper: Watter et al.'s sizes",
        ),
    )


def resolve_world_model(arguments: argparse.Namespace) -> tuple:
    """Every config of a parsed ``world-model train`` command line: for planet, dreamer and
    slac one per :data:`WORLD_MODEL_GROUPS`, for e2c ``(E2CRunConfig, E2CConfig)``."""
    if arguments.agent == "e2c":
        types = [t for _, t in E2C_GROUPS]
        return resolve("e2c", arguments.preset, types, typed_values(arguments, types))
    types = [t for _, t in WORLD_MODEL_GROUPS]
    overrides = typed_values(arguments, types)
    return resolve("world-model", arguments.preset, types, overrides, agent=arguments.agent)


def _run_rssm_agent(arguments: argparse.Namespace) -> dict:
    """PlaNet, Dreamer or SLAC: an RSSM world model and a way to act with it."""
    run, model, training, *agent_configs = resolve_world_model(arguments)
    agent_type = world_model.AGENTS[arguments.agent][0]
    (agent_config,) = (c for c in agent_configs if isinstance(c, agent_type))
    return world_model.train_world_model(
        arguments.agent, run, model, training, agent_config, arguments.resume, arguments.preset
    )


def _run_e2c_agent(arguments: argparse.Namespace) -> dict:
    """E2C (Watter et al. 2015) on its pixel pendulum (:func:`latentvi.jobs.e2c.run_e2c`) or on
    2-D navigation (:func:`latentvi.jobs.e2c_nav.run_e2c_nav`)."""
    if arguments.env not in ("Pendulum-v1", NAVIGATION_ID):
        raise ValueError(
            f"env = {arguments.env!r} is invalid: --agent e2c runs on Pendulum-v1 (it sets the "
            f"pendulum's state to collect its data) or {NAVIGATION_ID}; drop --env"
        )
    if arguments.out is None:
        raise ValueError("out = None is invalid: give a run folder, e.g. --out runs/e2c")
    run, model = resolve_world_model(arguments)
    job = e2c_nav.run_e2c_nav if arguments.env == NAVIGATION_ID else e2c.run_e2c
    return job(run, arguments.out, model, preset=arguments.preset, resume=arguments.resume)


def _run_world_model(arguments: argparse.Namespace) -> None:
    runner = _run_e2c_agent if arguments.agent == "e2c" else _run_rssm_agent
    print_result(runner(arguments), arguments.json)
