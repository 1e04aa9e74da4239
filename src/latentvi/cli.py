"""The ``latentvi`` command line: a thin layer over the Python API, one table of commands.

Every sub-command builds frozen configs from its options (help text from the config's fields),
calls one library function and prints a table, or one JSON object with ``--json``. The options
record only what was typed (:mod:`latentvi.config`), so a ``--preset`` (:mod:`latentvi.presets`)
fills the rest and a typed value always wins, even one equal to the default. Bad input is one line
on stderr naming the problem, and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from latentvi import __version__
from latentvi.cli_options import (
    Groups,
    add_progress_option,
    command,
    error_report,
    print_result,
    to_json,
    with_options,
)
from latentvi.config import CommandParser, from_arguments, typed_values
from latentvi.envs.demos import DemoConfig
from latentvi.envs.navigation import ENV_ID as NAVIGATION_ID
from latentvi.jobs import cvae, e2c, e2c_nav, em, imitation, latent_q, runs, vae, vi, world_model
from latentvi.models.cvae import CVAEConfig
from latentvi.models.e2c import E2CConfig
from latentvi.models.ssm import RSSMConfig
from latentvi.models.vae import VAEConfig
from latentvi.presets import resolve
from latentvi.rl.dreamer import DreamerConfig
from latentvi.rl.imitation import PolicyConfig
from latentvi.rl.latent_q import LatentQConfig
from latentvi.rl.planet import PlanetConfig
from latentvi.rl.slac import SlacConfig
from latentvi.rl.world_model_agent import ModelTrainingConfig
from latentvi.train import TrainConfig
from latentvi.train.distributed import destroy_distributed, init_distributed
from latentvi.train.runs import check_writable
from latentvi.train.signals import RunStopped, exit_now, exit_on_signals

__all__ = ["build_parser", "main", "resolve_latent_q", "resolve_world_model"]


VAE_GROUPS: Groups = (("data", vae.DataConfig), ("model", VAEConfig), ("training", TrainConfig))
CVAE_GROUPS: Groups = (
    ("data", cvae.CVAEDataConfig),
    ("model", CVAEConfig),
    ("training", TrainConfig),
)
IMITATE_GROUPS: Groups = (
    ("job", imitation.ImitationConfig),
    ("policy", PolicyConfig),
    ("demonstrations", DemoConfig),
)
LATENT_Q_GROUPS: Groups = (("environment and run", latent_q.RunConfig), ("agent", LatentQConfig))


def _add_vi(subparsers) -> None:
    command(
        subparsers,
        "vi",
        _run_vi,
        (("options", vi.VIConfig),),
        json_help="print the results as one JSON object",
        help="fit a linear-Gaussian data set by per-datapoint and amortized VI with both gradient "
        "estimators; compare with the exact log p(x)",
        description="Fit probabilistic PCA by per-datapoint and amortized variational inference "
        "with the reparameterization and score-function estimators, and compare every bound with "
        "the exact log-likelihood. All values are nats per example.",
    )


def _run_vi(arguments: argparse.Namespace) -> None:
    results = vi.run_vi(from_arguments(vi.VIConfig, arguments))
    print(to_json(results) if arguments.json else vi.format_vi_report(results))


def _add_em(subparsers) -> None:
    command(
        subparsers,
        "em",
        _run_em,
        (("options", em.EMConfig),),
        json_help="print the results as one JSON object",
        help="EM, hard EM, per-datapoint and amortized VI and gradient ascent on the exact "
        "log p(x), from one start: log p(x) against passes and wall time",
        description="The expected log-likelihood: fit probabilistic PCA (and a Gaussian mixture) "
        "by EM, hard EM, variational inference and gradient ascent on the exact log p(x) from "
        "the same start, and compare the exact log-likelihood against passes and wall time. "
        "All values are nats per example.",
    )


def _run_em(arguments: argparse.Namespace) -> None:
    results = em.run_em(from_arguments(em.EMConfig, arguments))
    print(to_json(results) if arguments.json else em.format_em_report(results))


def _add_train(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a model (see: latentvi train vae --help, latentvi train cvae --help)",
        description="Train a model.",
    )
    models = train.add_subparsers(
        dest="model", required=True, metavar="MODEL", parser_class=CommandParser
    )
    vae_parser = command(
        models,
        "vae",
        _run_train_vae,
        VAE_GROUPS,
        resume=True,
        help="a variational autoencoder on images",
        description="Train a VAE (or IWAE, β-VAE, two-layer VAE) on an image data set. The run "
        "folder gets checkpoints, metrics and the configs; --resume continues a stopped run.",
    )
    vae_parser.set_defaults(out="runs/vae")
    cvae_parser = command(
        models,
        "cvae",
        _run_train_cvae,
        CVAE_GROUPS,
        help="a conditional VAE on images: p(image | digit) or p(bottom half | top half)",
        description="Train a conditional VAE on binarized images: label-conditional generation "
        "(--task label; a figure with one row of samples per digit) or structured prediction "
        "(--task halves: the bottom half given the top half, compared with a deterministic "
        "regressor's conditional log-likelihood on test images, nats per example).",
    )
    cvae_parser.set_defaults(
        out="runs/cvae", likelihood="bernoulli", latent_dim=16, hidden=(256,), prior="learned"
    )


def _run_train_vae(arguments: argparse.Namespace) -> None:
    data, model, training = (from_arguments(t, arguments) for _, t in VAE_GROUPS)
    info = init_distributed()  # a no-op unless launched by torchrun with WORLD_SIZE > 1
    try:
        summary = vae.train_vae(model, data, training, resume=arguments.resume)
    finally:
        destroy_distributed()
    if info.is_main:
        print_result(summary, arguments.json)


def _run_train_cvae(arguments: argparse.Namespace) -> None:
    data, model, training = (from_arguments(t, arguments) for _, t in CVAE_GROUPS)
    print_result(cvae.train_cvae(model, data, training), arguments.json)


def _add_eval(subparsers) -> None:
    parser = command(
        subparsers,
        "eval",
        _run_eval,
        json_help="print one JSON object",
        help="evaluate a run of any kind (held-out bounds, or evaluation episodes)",
        description="Evaluate a trained run. vae: the held-out ELBO and importance-sampled "
        "log-likelihood; cvae: the conditional ones (nats per example, with standard errors); "
        "imitate: success and mode shares on fresh episodes; rl latent-q, world-model: the "
        "return of evaluation episodes; e2c: swing-up trials.",
    )
    parser.add_argument("run", help="run folder written by a latentvi training command")
    parser.add_argument(
        "--importance-samples",
        type=int,
        default=None,
        help="K per example (default: 5000 for vae, the run's own for cvae)",
    )
    parser.add_argument(
        "--n-examples", type=int, default=None, help="evaluate the first N examples (default: all)"
    )
    parser.add_argument(
        "--split", choices=("test", "valid"), default="test", help="held-out split (default: test)"
    )
    parser.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="evaluation episodes of agents and policies, trials of e2c (default: the run's)",
    )
    add_progress_option(parser, "a bar over the evaluation batches (vae)")


def _run_eval(arguments: argparse.Namespace) -> None:
    for name in ("importance_samples", "n_examples", "episodes"):
        value = getattr(arguments, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} = {value} is invalid: use a positive integer")
    result = runs.evaluate(
        arguments.run,
        importance_samples=arguments.importance_samples,
        n_examples=arguments.n_examples,
        split=arguments.split,
        episodes=arguments.episodes,
        progress=arguments.progress,
    )
    print_result(result, arguments.json)


def _add_sample(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="draw images from a trained vae or cvae",
        description="Sample z ~ p(z), x ~ p(x|z) (cvae: digit i mod 10, or test top halves "
        "completed).",
    )
    parser.add_argument("run", help="run folder written by latentvi train")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    parser.add_argument("--out", default="samples.png", help="PNG to write (default: samples.png)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_progress_option(parser, "nothing (sampling draws no bar; accepted like everywhere)")
    parser.set_defaults(handler=_run_sample)


def _run_sample(arguments: argparse.Namespace) -> None:
    check_writable(arguments.out, "out", folder=False)
    print(runs.sample(arguments.run, arguments.n, arguments.out, arguments.seed))


def _add_plot(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="figures of a trained run of any kind",
        description="vae: reconstructions, prior samples, the 2-D latent manifold (latent-dim 2), "
        "posterior means coloured by label, training curves; cvae: samples per digit or completed "
        "halves; imitate: trajectories; rl latent-q: the return curve; world-model: the curve and "
        "open-loop predictions; e2c: reconstructions, latents and a swing-up.",
    )
    parser.add_argument("run", help="run folder written by a latentvi training command")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: RUN/figures)")
    add_progress_option(parser, "nothing (plotting draws no bar; accepted like everywhere)")
    parser.set_defaults(handler=_run_plot)


def _run_plot(arguments: argparse.Namespace) -> None:
    if arguments.out is not None:
        check_writable(arguments.out, "out")
    for path in runs.plot(arguments.run, arguments.out):
        print(path)


def _add_imitate(subparsers) -> None:
    parser = command(
        subparsers,
        "imitate",
        _run_imitate,
        IMITATE_GROUPS,
        resume=True,
        json_help="print the results as one JSON object",
        help="imitation learning from multimodal demonstrations (BC, CVAE, chunk CVAE, latent plans)",
        description="Collect scripted demonstrations of a 2-D navigation task that can be solved in "
        "several ways, train a policy on them once per seed, and evaluate it on fresh episodes: "
        "success, collision and the share of episodes taking each mode (mean ± std over seeds). "
        "Writes results.json and a trajectory figure to --out.",
    )
    parser.add_argument(
        "--out", default=None, help="run folder (default: runs/imitate/TASK-POLICY)"
    )


def _run_imitate(arguments: argparse.Namespace) -> None:
    job, policy, demos = (from_arguments(t, arguments) for _, t in IMITATE_GROUPS)
    out = arguments.out or f"runs/imitate/{job.task}-{policy.policy}"
    result = imitation.run_imitation(job, policy, demos, out=out, resume=arguments.resume)
    if arguments.json:
        print(to_json(result))
    else:
        print(imitation.format_imitation_table([result]))
        for path in result["figures"]:
            print(path)


def _add_rl(subparsers) -> None:
    rl = subparsers.add_parser(
        "rl",
        help="reinforcement learning (see: latentvi rl latent-q --help)",
        description="Reinforcement-learning agents.",
    )
    agents = rl.add_subparsers(
        dest="agent", required=True, metavar="AGENT", parser_class=CommandParser
    )
    command(
        agents,
        "latent-q",
        _run_latent_q,
        LATENT_Q_GROUPS,
        resume=True,
        json_help="print the summary as JSON",
        presets=(
            "latent-q",
            "debug: a tiny run in seconds; latentvi/PixelChain-v0 gets action repeat 1 in any "
            "preset",
        ),
        help="Q-learning on a VAE latent of pixel observations (and its baselines)",
        description="Train double DQN (discrete actions) or SAC (continuous) on the true state, on "
        "pixels end to end, or on the latent of a VAE trained on the replay buffer (optionally "
        "pretrained on prior observations). Writes curve.csv/png, reconstructions.png, metrics, "
        "TensorBoard scalars and resumable checkpoints to --out.",
    )


def resolve_latent_q(arguments: argparse.Namespace) -> tuple:
    """``(RunConfig, LatentQConfig)`` of a parsed ``rl latent-q`` command line."""
    types = [t for _, t in LATENT_Q_GROUPS]
    return resolve("latent-q", arguments.preset, types, typed_values(arguments, types))


def _run_latent_q(arguments: argparse.Namespace) -> None:
    run, agent = resolve_latent_q(arguments)
    summary = latent_q.run_latent_q(agent, run, resume=arguments.resume, preset=arguments.preset)
    print_result(summary, arguments.json)


WORLD_MODEL_GROUPS: Groups = (
    ("environment and run", world_model.WorldModelRunConfig),
    ("world model (action-dim and obs-shape are set from the environment)", RSSMConfig),
    ("world-model training", ModelTrainingConfig),
    ("planet", PlanetConfig),
    ("dreamer", DreamerConfig),
    ("slac", SlacConfig),
)
E2C_GROUPS: Groups = (("e2c run", e2c.E2CRunConfig), ("e2c model", E2CConfig))
WORLD_MODEL_AGENTS = (*world_model.AGENTS, "e2c")


def _add_world_model(subparsers) -> None:
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
        help="train an agent on a pixel environment (PlaNet, Dreamer, SLAC, E2C)",
        description="Train PlaNet (CEM planning in the learned latent space), Dreamer (actor-"
        "critic on imagined rollouts) or SLAC (soft actor-critic: critics on the latent state, "
        "actor on the frame history) from pixels. Writes curve.csv/png, open_loop.png/csv, "
        "open_loop_mse.png, frames.png, metrics, TensorBoard scalars, the episodes (episodes/) "
        "and resumable checkpoints to --out. --agent e2c runs the E2C pixel-pendulum experiment "
        "(Pendulum-v1 only; latent iLQR swing-up) with E2C's own options: see "
        "latentvi world-model train --agent e2c --help.",
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
            "sizes, for a GPU",
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
        help="Pendulum-v1 (its state is set to collect data) or latentvi/PointNav-v0 (e2c_nav)",
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
    """E2C (Watter et al. 2015) on its pixel pendulum or on 2-D navigation (``e2c_nav``)."""
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


COMMANDS: list[Callable] = [
    _add_vi,
    _add_em,
    _add_train,
    _add_eval,
    _add_sample,
    _add_plot,
    _add_imitate,
    _add_rl,
    _add_world_model,
]


def build_parser() -> argparse.ArgumentParser:
    """The full ``latentvi`` parser with every sub-command."""
    parser = CommandParser(
        prog="latentvi",
        description="Latent variable models and variational inference on PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"latentvi {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=CommandParser
    )
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``latentvi`` script; returns the exit code."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with exit_on_signals():  # training loops checkpoint first (latentvi.train.signals)
            arguments.handler(arguments)
    except RunStopped as stop:  # 143 after SIGTERM, 130 after SIGINT
        print(f"latentvi {arguments.command}: {stop}", file=sys.stderr)
        if argv is None:  # this is the program (not a call from Python): end it now
            exit_now(stop.exit_code)
        return stop.exit_code
    except (ValueError, OSError, MemoryError, RuntimeError) as error:
        line, code = error_report(error)  # one line: exit 2 before a run, 1 during one
        if line is None:
            raise
        print(f"latentvi {arguments.command}: {line}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("latentvi: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
