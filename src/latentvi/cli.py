"""The ``latentvi`` command line: a thin layer over the Python API.

Every sub-command builds a frozen config from its options (help text from the config's fields),
calls one library function and prints a table, or one JSON object with ``--json``. Bad input is one
line on stderr naming the problem, and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from collections.abc import Callable, Sequence

from latentvi.config import add_arguments, from_arguments
from latentvi.train.signals import RunStopped, exit_now, exit_on_signals

__all__ = ["main"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error format (one line, exit code 2)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_vi(subparsers) -> None:
    from latentvi.jobs.vi import VIConfig

    parser = subparsers.add_parser(
        "vi",
        help="fit a linear-Gaussian data set by per-datapoint and amortized VI with both gradient "
        "estimators; compare with the exact log p(x)",
        description="Fit probabilistic PCA by per-datapoint and amortized variational inference "
        "with the reparameterization and score-function estimators, and compare every bound with "
        "the exact log-likelihood. All values are nats per example.",
    )
    add_arguments(parser, VIConfig)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.set_defaults(handler=_run_vi, config_type=VIConfig)


def _run_vi(arguments: argparse.Namespace) -> None:
    from latentvi.jobs.vi import format_vi_report, run_vi

    config = from_arguments(arguments.config_type, arguments)
    results = run_vi(config, progress=not arguments.json)
    if arguments.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_vi_report(results))


def _add_train(subparsers) -> None:
    from latentvi.jobs.vae import DataConfig
    from latentvi.models.vae import VAEConfig
    from latentvi.train import TrainConfig

    train = subparsers.add_parser(
        "train",
        help="train a model (see: latentvi train vae --help, latentvi train cvae --help)",
        description="Train a model.",
    )
    models = train.add_subparsers(
        dest="model", required=True, metavar="MODEL", parser_class=_Parser
    )
    vae = models.add_parser(
        "vae",
        help="a variational autoencoder on images",
        description="Train a VAE (or IWAE, β-VAE, two-layer VAE) on an image data set. The run "
        "folder gets checkpoints, metrics and the configs; --resume continues a stopped run.",
    )
    for group_name, config_type in (
        ("data", DataConfig),
        ("model", VAEConfig),
        ("training", TrainConfig),
    ):
        add_arguments(vae.add_argument_group(group_name), config_type)
    vae.set_defaults(out="runs/vae")
    vae.add_argument("--resume", action="store_true", help="continue the run in --out")
    vae.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    vae.set_defaults(handler=_run_train_vae)
    _add_train_cvae(models)


def _add_train_cvae(models) -> None:
    from latentvi.jobs.cvae import CVAEDataConfig
    from latentvi.models.cvae import CVAEConfig
    from latentvi.train import TrainConfig

    cvae = models.add_parser(
        "cvae",
        help="a conditional VAE on images: p(image | digit) or p(bottom half | top half)",
        description="Train a conditional VAE on binarized images: label-conditional generation "
        "(--task label; a figure with one row of samples per digit) or structured prediction "
        "(--task halves: the bottom half given the top half, compared with a deterministic "
        "regressor's conditional log-likelihood on test images, nats per example).",
    )
    for group_name, config_type in (
        ("data", CVAEDataConfig),
        ("model", CVAEConfig),
        ("training", TrainConfig),
    ):
        add_arguments(cvae.add_argument_group(group_name), config_type)
    cvae.set_defaults(
        out="runs/cvae", likelihood="bernoulli", latent_dim=16, hidden=(256,), prior="learned"
    )
    cvae.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    cvae.set_defaults(handler=_run_train_cvae)


def _run_train_cvae(arguments: argparse.Namespace) -> None:
    from latentvi.jobs.cvae import CVAEDataConfig, train_cvae
    from latentvi.models.cvae import CVAEConfig
    from latentvi.train import TrainConfig

    summary = train_cvae(
        from_arguments(CVAEConfig, arguments),
        from_arguments(CVAEDataConfig, arguments),
        from_arguments(TrainConfig, arguments),
    )
    _print(summary, arguments.json)


def _run_train_vae(arguments: argparse.Namespace) -> None:
    from latentvi.jobs.vae import DataConfig, train_vae
    from latentvi.models.vae import VAEConfig
    from latentvi.train import TrainConfig
    from latentvi.train.distributed import destroy_distributed, init_distributed

    configs = (
        from_arguments(VAEConfig, arguments),
        from_arguments(DataConfig, arguments),
        from_arguments(TrainConfig, arguments),
    )
    info = init_distributed()  # a no-op unless launched by torchrun with WORLD_SIZE > 1
    try:
        summary = train_vae(*configs, resume=arguments.resume)
    finally:
        destroy_distributed()
    if info.is_main:
        _print(summary, arguments.json)


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for inner, item in value.items():
                print(f"  {inner}: {_format(item)}")
        else:
            print(f"{key}: {_format(value)}")


def _format(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _add_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="held-out ELBO and importance-sampled log-likelihood of a run",
        description="Evaluate a trained run on held-out data: the ELBO and the importance-"
        "sampled log-likelihood (nats per example), each with its standard error.",
    )
    parser.add_argument("run", help="run folder written by latentvi train")
    parser.add_argument(
        "--importance-samples", type=int, default=5000, help="K per example (default: 5000)"
    )
    parser.add_argument(
        "--n-examples", type=int, default=None, help="evaluate the first N examples (default: all)"
    )
    parser.add_argument(
        "--split", choices=("test", "valid"), default="test", help="held-out split (default: test)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_run_eval)


def _run_eval(arguments: argparse.Namespace) -> None:
    from latentvi.jobs.vae import evaluate_run

    result = evaluate_run(
        arguments.run,
        importance_samples=arguments.importance_samples,
        n_examples=arguments.n_examples,
        split=arguments.split,
        progress=not arguments.json,
    )
    _print(result, arguments.json)


def _add_sample(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="draw images from a trained model",
        description="Sample z ~ p(z), x ~ p(x|z).",
    )
    parser.add_argument("run", help="run folder written by latentvi train")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    parser.add_argument("--out", default="samples.png", help="PNG to write (default: samples.png)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.set_defaults(handler=_run_sample)


def _run_sample(arguments: argparse.Namespace) -> None:
    from latentvi.jobs.vae import sample_run

    print(sample_run(arguments.run, arguments.n, arguments.out, arguments.seed))


def _add_plot(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="figures of a trained run",
        description="Reconstructions, prior samples, the 2-D latent manifold (latent-dim 2), a "
        "scatter of posterior means coloured by label, and training curves.",
    )
    parser.add_argument("run", help="run folder written by latentvi train")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: RUN/figures)")
    parser.set_defaults(handler=_run_plot)


def _run_plot(arguments: argparse.Namespace) -> None:
    from latentvi.jobs.vae import plot_run

    for path in plot_run(arguments.run, arguments.out):
        print(path)


def _add_rl(subparsers) -> None:
    from latentvi.jobs.latent_q import PRESETS, RunConfig
    from latentvi.rl.latent_q import LatentQConfig

    rl = subparsers.add_parser(
        "rl",
        help="reinforcement learning (see: latentvi rl latent-q --help)",
        description="Reinforcement-learning agents.",
    )
    agents = rl.add_subparsers(dest="agent", required=True, metavar="AGENT", parser_class=_Parser)
    latent_q = agents.add_parser(
        "latent-q",
        help="Q-learning on a VAE latent of pixel observations (and its baselines)",
        description="Train double DQN (discrete actions) or SAC (continuous) on the true state, on "
        "pixels end to end, or on the latent of a VAE trained on the replay buffer (optionally "
        "pretrained on prior observations). Writes curve.csv/png, reconstructions.png, metrics, "
        "TensorBoard scalars and resumable checkpoints to --out.",
    )
    for group_name, config_type in (("environment and run", RunConfig), ("agent", LatentQConfig)):
        add_arguments(latent_q.add_argument_group(group_name), config_type)
    latent_q.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="default",
        help="debug: a tiny run in seconds; fills only the options left at their defaults",
    )
    latent_q.add_argument("--resume", action="store_true", help="continue the run in --out")
    latent_q.add_argument("--json", action="store_true", help="print the summary as JSON")
    latent_q.set_defaults(handler=_run_latent_q)


def _with_preset(config_type: type, arguments: argparse.Namespace, preset: dict):
    """``config_type`` from the arguments, preset values in place of untouched defaults."""
    import dataclasses

    config = from_arguments(config_type, arguments)
    changes = {
        f.name: preset[f.name]
        for f in dataclasses.fields(config_type)
        if f.name in preset and getattr(config, f.name) == f.default
    }
    return dataclasses.replace(config, **changes)


def _run_latent_q(arguments: argparse.Namespace) -> None:
    from latentvi.jobs.latent_q import PRESETS, RunConfig, run_latent_q
    from latentvi.rl.latent_q import LatentQConfig

    preset = PRESETS[arguments.preset]
    run = _with_preset(RunConfig, arguments, preset)
    agent = _with_preset(LatentQConfig, arguments, preset)
    summary = run_latent_q(agent, run, resume=arguments.resume)
    _print(summary, arguments.json)


def _add_imitate(subparsers) -> None:
    from latentvi.envs.demos import DemoConfig
    from latentvi.jobs.imitation import ImitationConfig
    from latentvi.rl.imitation import PolicyConfig

    parser = subparsers.add_parser(
        "imitate",
        help="imitation learning from multimodal demonstrations (BC, CVAE, chunk CVAE, latent plans)",
        description="Collect scripted demonstrations of a 2-D navigation task that can be solved in "
        "several ways, train a policy on them once per seed, and evaluate it on fresh episodes: "
        "success, collision and the share of episodes taking each mode (mean ± std over seeds). "
        "Writes results.json and a trajectory figure to --out.",
    )
    for group_name, config_type in (
        ("job", ImitationConfig),
        ("policy", PolicyConfig),
        ("demonstrations", DemoConfig),
    ):
        add_arguments(parser.add_argument_group(group_name), config_type)
    parser.add_argument(
        "--out", default=None, help="run folder (default: runs/imitate/TASK-POLICY)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.set_defaults(handler=_run_imitate)


def _run_imitate(arguments: argparse.Namespace) -> None:
    from latentvi.envs.demos import DemoConfig
    from latentvi.jobs.imitation import (
        ImitationConfig,
        format_imitation_table,
        run_imitation,
    )
    from latentvi.rl.imitation import PolicyConfig

    job = from_arguments(ImitationConfig, arguments)
    policy = from_arguments(PolicyConfig, arguments)
    demos = from_arguments(DemoConfig, arguments)
    out = arguments.out or f"runs/imitate/{job.task}-{policy.policy}"
    result = run_imitation(job, policy, demos, out=out)
    if arguments.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_imitation_table([result]))
        for path in result["figures"]:
            print(path)


def _world_model_groups() -> list[tuple[str, type]]:
    """The option groups of ``world-model train``: (group name, config type)."""
    from latentvi.jobs.world_model import WorldModelRunConfig
    from latentvi.models.ssm import RSSMConfig
    from latentvi.rl.dreamer import DreamerConfig
    from latentvi.rl.planet import PlanetConfig
    from latentvi.rl.slac import SlacConfig
    from latentvi.rl.world_model_agent import ModelTrainingConfig

    return [
        ("environment and run", WorldModelRunConfig),
        ("world model (action-dim and obs-shape are set from the environment)", RSSMConfig),
        ("world-model training", ModelTrainingConfig),
        ("planet", PlanetConfig),
        ("dreamer", DreamerConfig),
        ("slac", SlacConfig),
    ]


def _e2c_groups() -> list[tuple[str, type]]:
    """The ``--e2c-*`` option groups of ``world-model train --agent e2c``."""
    from latentvi.jobs.e2c import E2CRunConfig
    from latentvi.models.e2c import E2CConfig

    return [("e2c run (--agent e2c)", E2CRunConfig), ("e2c model (--agent e2c)", E2CConfig)]


# E2C fields set by the shared options of world-model train (--seed, --progress), not --e2c-*.
_E2C_SHARED = ("seed", "progress")


def _run_rssm_agent(arguments: argparse.Namespace) -> dict:
    """PlaNet, Dreamer or SLAC: an RSSM world model and a way to act with it."""
    from latentvi.jobs.world_model import AGENTS, train_world_model

    configs = {config_type: config for config_type, config in _world_model_configs(arguments)}
    run_type, model_type, training_type = (t for _, t in _world_model_groups()[:3])
    agent_type = AGENTS[arguments.agent][0]
    return train_world_model(
        arguments.agent,
        configs[run_type],
        configs[model_type],
        configs[training_type],
        configs[agent_type],
        resume=arguments.resume,
    )


def _run_e2c_agent(arguments: argparse.Namespace) -> dict:
    """E2C (Watter et al. 2015) on its pixel pendulum (:func:`latentvi.jobs.e2c.run_e2c`):
    --preset picks E2C's preset of the same name, --out, --seed and --progress carry over, the
    --e2c-* options set its fields; the other options do not apply."""
    import dataclasses

    from latentvi.config import argument_values
    from latentvi.jobs.e2c import preset, run_e2c

    if arguments.env != "Pendulum-v1":
        raise ValueError(
            f"env = {arguments.env!r} is invalid: --agent e2c runs only on Pendulum-v1 (it sets "
            "the pendulum's state to collect its data); drop --env"
        )
    if arguments.resume:
        raise ValueError("resume = True is invalid: --agent e2c runs cannot resume; drop --resume")
    if arguments.out is None:
        raise ValueError("out = None is invalid: give a run folder, e.g. --out runs/e2c")
    changed = {}  # --e2c-* options set away from their defaults; the preset fills the rest
    for _, config_type in _e2c_groups():
        defaults = {f.name: f.default for f in dataclasses.fields(config_type)}
        for name, value in argument_values(config_type, arguments, "e2c").items():
            if value != defaults[name]:
                changed[name] = value
    run, model = preset(
        arguments.preset, seed=arguments.seed, progress=arguments.progress, **changed
    )
    return run_e2c(run, arguments.out, model)


# world-model agents: name -> runner(parsed arguments) -> summary
WORLD_MODEL_AGENTS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "planet": _run_rssm_agent,
    "dreamer": _run_rssm_agent,
    "slac": _run_rssm_agent,
    "e2c": _run_e2c_agent,
}


def _world_model_configs(arguments: argparse.Namespace) -> list[tuple[type, object]]:
    """Every option group's config, with the preset's values where options were left alone."""
    import dataclasses

    from latentvi.jobs.world_model import preset_config

    configs = []
    for _, config_type in _world_model_groups():
        values = {f.name: getattr(arguments, f.name) for f in dataclasses.fields(config_type)}
        preset = preset_config(config_type, arguments.preset, values, arguments.agent)
        configs.append((config_type, preset))
    return configs


def _add_world_model(subparsers) -> None:
    from latentvi.jobs.world_model import PRESETS

    world_model = subparsers.add_parser(
        "world-model",
        help="latent state-space models and model-based RL (see: latentvi world-model train "
        "--help)",
        description="World models learned with a sequence ELBO, and agents that use them.",
    )
    commands = world_model.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=_Parser
    )
    train = commands.add_parser(
        "train",
        help="train an agent on a pixel environment (PlaNet, Dreamer, SLAC, E2C)",
        description="Train PlaNet (CEM planning in the learned latent space), Dreamer (actor-"
        "critic on imagined rollouts) or SLAC (soft actor-critic: critics on the latent state, "
        "actor on the frame history) from pixels. Writes curve.csv/png, open_loop.png/csv, "
        "open_loop_mse.png, frames.png, metrics, TensorBoard scalars, the episodes (episodes/) "
        "and resumable checkpoints to --out. --agent e2c runs the E2C pixel-pendulum experiment "
        "(Pendulum-v1 only; latent iLQR swing-up) with its --e2c-* options instead.",
    )
    train.add_argument(
        "--agent",
        default="planet",
        choices=tuple(WORLD_MODEL_AGENTS),
        help="the agent (default: planet); only its own option group applies (e2c: --seed, "
        "--out, --preset, --progress and the --e2c-* options)",
    )
    train.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="default",
        help="debug: CPU, minutes; default: CPU pixel Pendulum, 50k steps; paper: the papers' "
        "sizes, for a GPU. Fills only the options left at their defaults",
    )
    for group_name, config_type in _world_model_groups():
        add_arguments(train.add_argument_group(group_name), config_type)
    for group_name, config_type in _e2c_groups():
        group = train.add_argument_group(group_name)
        add_arguments(group, config_type, prefix="e2c", exclude=_E2C_SHARED)
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--json", action="store_true", help="print the summary as JSON")
    train.set_defaults(handler=_run_world_model)


def _run_world_model(arguments: argparse.Namespace) -> None:
    summary = WORLD_MODEL_AGENTS[arguments.agent](arguments)
    _print(summary, arguments.json)


COMMANDS: list[Callable] = [
    _add_vi,
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
    parser = _Parser(
        prog="latentvi",
        description="Latent variable models and variational inference on PyTorch.",
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
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
    except (ValueError, FileNotFoundError) as error:
        print(f"latentvi {arguments.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as error:
        from latentvi.train.errors import TrainingDivergedError

        if not isinstance(error, TrainingDivergedError):
            raise
        print(f"latentvi {arguments.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("latentvi: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
