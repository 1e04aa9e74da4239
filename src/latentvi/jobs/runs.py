"""Open a run folder of any kind: :func:`load` (``latentvi.load``), and the ``eval``, ``sample``
and ``plot`` commands over every kind they make sense for.

A run folder's ``run.json`` names its kind (:mod:`latentvi.train.runs`); each kind has one row
in :data:`KINDS`: how to load it, and its evaluation, sampling and plotting (None where the
command does not apply: the command then says so in one line). Loading reads JSON and
safetensors only; no code runs from the folder.

==============  ===================================  =========================================
kind            :func:`load` gives                   eval
==============  ===================================  =========================================
vae             the VAE                              held-out ELBO and log p(x)
cvae            the CVAE                             held-out conditional ELBO and log p(y|x)
cvae-regressor  the halves task's regressor          its exact held-out log p(y|x)
imitation       the policy's model (first seed of    success, collision and mode shares on
                a job's folder)                      fresh episodes
latent-q        the agent                            return of evaluation episodes
world-model     the agent (planet, dreamer, slac,    return of evaluation episodes
                solar)
e2c             the E2C model                        swing-up trials from the bottom
==============  ===================================  =========================================
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentvi.config import from_dict, require
from latentvi.train.checkpoint import build_for_checkpoint, load_checkpoint
from latentvi.train.runs import FIGURES, Run, read_run

__all__ = ["KINDS", "Kind", "evaluate", "load", "plot", "sample"]


def _source(run: Run, checkpoint) -> str | os.PathLike:
    return run.path if checkpoint is None else checkpoint


def _configs(run: Run, types: dict[str, type]) -> dict[str, Any]:
    try:
        return {name: from_dict(kind, run.config(name)) for name, kind in types.items()}
    except TypeError as error:
        raise ValueError(f"{run.path} holds a corrupt {run.kind} run ({error})") from None


# --------------------------------------------------------------------------------------------------
# Loading, one function per kind: (run, map_location, checkpoint) -> the trained object, eval mode


def _load_vae(run: Run, map_location, checkpoint):
    from latentvi.jobs.vae import load as load_vae

    return load_vae(run.path, map_location, checkpoint)


def _load_cvae(run: Run, map_location, checkpoint):
    from latentvi.jobs.cvae import load_cvae

    return load_cvae(run.path, map_location, checkpoint)


def _load_imitation(run: Run, map_location, checkpoint):
    """The policy's model, with ``policy_config`` and ``task``; a job's folder gives its first
    seed's (``run.info["runs"]``)."""
    from latentvi.envs.tasks import make_task
    from latentvi.rl.imitation import PolicyConfig, policy_model

    if "runs" in run.info:
        return load(run.path / run.info["runs"][0], map_location, checkpoint)
    config = _configs(run, {"policy": PolicyConfig})["policy"]
    task = run.info.get("task")
    require(task is not None, "task", task, f"{run.path} does not say its task; retrain it")
    if "state_dim" in run.info:
        state_dim, action_dim = int(run.info["state_dim"]), int(run.info["action_dim"])
    else:  # an older run: the task's spaces
        env = make_task(task)
        state_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    model = policy_model(state_dim, action_dim, config)
    load_checkpoint(_source(run, checkpoint), model, map_location=map_location, restore_rng=False)
    model.policy_config, model.task = config, task
    return model.eval()


MAX_SPACE_VALUES = 10**8  # a 3×64×64 frame stack holds 10⁴..10⁵


def _space(description: dict[str, Any], where: Path):
    import gymnasium as gym

    if "n" in description:
        return gym.spaces.Discrete(int(description["n"]))
    shape, dtype = tuple(int(n) for n in description["shape"]), np.dtype(description["dtype"])
    size = int(np.prod(shape, dtype=object))
    if not 0 < size <= MAX_SPACE_VALUES or min(shape) < 1:
        raise ValueError(
            f"{where} declares a space of shape {list(shape)} ({size} values, at most "
            f"{MAX_SPACE_VALUES}); the file is damaged or was edited: restore it or retrain"
        )

    def bound(value) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, np.float64).reshape(-1), (int(np.prod(shape)),))

    low = bound(description["low"]).reshape(shape).astype(dtype)
    high = bound(description["high"]).reshape(shape).astype(dtype)
    return gym.spaces.Box(low, high, shape, dtype)


def _pixels(agent_config, run_config) -> bool:
    """Whether a latent-Q run observes pixels (its option, else its variant's default)."""
    from latentvi.rl.latent_q import PIXEL_VARIANTS

    if run_config.pixels is not None:
        return run_config.pixels
    return agent_config.variant in PIXEL_VARIANTS


def _load_latent_q(run: Run, map_location, checkpoint):
    """The agent, optimizers included (it can train on), with ``run_config`` and ``env_steps``."""
    from latentvi.jobs.latent_q import RunConfig, make_run_env
    from latentvi.rl.latent_q import LatentQAgent, LatentQConfig

    configs = _configs(run, {"agent": LatentQConfig, "run": RunConfig})
    if "observation_space" in run.info:
        observations = _space(run.info["observation_space"], run.path / "run.json")
        actions = _space(run.info["action_space"], run.path / "run.json")
    else:  # an older run: the environment's spaces
        env = make_run_env(configs["run"], _pixels(configs["agent"], configs["run"]))
        observations, actions = env.observation_space, env.action_space
        env.close()
    agent = build_for_checkpoint(
        lambda: LatentQAgent(configs["agent"], observations, actions),
        _source(run, checkpoint), run.path / "run.json",
    )  # fmt: skip
    loaded = load_checkpoint(
        _source(run, checkpoint), agent, map_location=map_location, restore_rng=False
    )
    agent.load_optimizer_state(loaded["optimizers"])
    agent.run_config, agent.env_steps = configs["run"], int(loaded["counters"]["env_steps"])
    return agent.eval()


def _load_world_model(run: Run, map_location, checkpoint):
    """The agent, optimizers included (it can train on), with ``agent_name``, ``run_config``
    and ``env_steps``."""
    from latentvi.jobs.world_model import load_run

    name, agent, config, env_steps = load_run(run.path, map_location, checkpoint)
    agent.agent_name, agent.run_config, agent.env_steps = name, config, env_steps
    return agent


def _load_e2c(run: Run, map_location, checkpoint):
    """The E2C model with ``run_config``."""
    from latentvi.jobs.e2c import E2CRunConfig
    from latentvi.models.e2c import E2C, E2CConfig

    configs = _configs(run, {"run": E2CRunConfig, "model": E2CConfig})
    size = configs["run"].image_size
    model = build_for_checkpoint(lambda: E2C((2, size, size), 1, configs["model"]),
                                 _source(run, checkpoint), run.path / "run.json")  # fmt: skip
    load_checkpoint(_source(run, checkpoint), model, map_location=map_location, restore_rng=False)
    model.run_config = configs["run"]
    return model.eval()


# --------------------------------------------------------------------------------------------------
# eval: one function per kind, (run, options) -> JSON-ready results


def _eval_vae(run: Run, options: dict[str, Any]) -> dict[str, Any]:
    from latentvi.jobs.vae import evaluate_run

    return evaluate_run(
        run.path,
        importance_samples=options.get("importance_samples") or 5000,
        n_examples=options.get("n_examples"),
        split=options.get("split") or "test",
        progress=options.get("progress", False),
    )


def _eval_cvae(run: Run, options: dict[str, Any]) -> dict[str, Any]:
    from latentvi.jobs.cvae import evaluate_cvae

    split = options.get("split") or "test"
    require(split == "test", "split", split, "cvae runs are evaluated on the test split")
    return evaluate_cvae(run.path, options.get("importance_samples"), options.get("n_examples"))


def _eval_imitation(run: Run, options: dict[str, Any]) -> dict[str, Any]:
    """Every seed's policy (a job's folder) or the one policy, on the same fresh episodes."""
    from latentvi.rl.imitation import EVAL_SEED, evaluate_policy, make_controller, summarize

    folders = [run.path / name for name in run.info.get("runs", [])] or [run.path]
    job = run.configs.get("job", {})
    episodes = options.get("episodes") or job.get("episodes", 200)
    per_seed = []
    for folder in folders:
        model = load(folder)
        controller = make_controller(model, model.policy_config, model.task)
        metrics, _ = evaluate_policy(model.task, controller, episodes, EVAL_SEED)
        per_seed.append({"seed": model.policy_config.seed, **metrics})
    summary = {k: summarize([r[k] for r in per_seed]) for k in ("success", "collision", "timeout")}
    return {"episodes_per_seed": episodes, "summary": summary, "per_seed": per_seed}


def _eval_latent_q(run: Run, options: dict[str, Any]) -> dict[str, Any]:
    """The deterministic policy on the run's evaluation episodes (same reset seeds as the run's
    evaluations: with the run's ``eval_episodes`` the numbers of its last curve row)."""
    from latentvi.jobs.latent_q import evaluate_policy, make_run_env

    agent = load(run.path)
    config = agent.run_config
    episodes = options.get("episodes") or config.eval_episodes
    env = make_run_env(config, _pixels(agent.config, config))
    try:
        result = evaluate_policy(agent, env, episodes, config.seed)
    finally:
        env.close()
    return {"env_steps": agent.env_steps, "episodes": episodes, **result}


def world_model_returns(agent, config, episodes: int) -> list[float]:
    """Returns of ``episodes`` evaluation episodes without exploration noise: the reset seeds
    and random state of a world-model run's own evaluations."""
    from latentvi.data.episodes import EpisodeRunner
    from latentvi.jobs.world_model import make_run_env
    from latentvi.train.env_loop import EVAL_SEED, evaluation_returns
    from latentvi.train.rng import mixed_seed

    env = make_run_env(config)
    runner = EpisodeRunner(env, {"model": 0.0, "env": 0.0, "act": 0.0})
    try:
        return evaluation_returns(
            lambda seed: runner.run(seed, agent, explore=False)[1],
            episodes, config.seed, mixed_seed(config.seed, EVAL_SEED),
        )  # fmt: skip
    finally:
        env.close()


def _eval_world_model(run: Run, options: dict[str, Any]) -> dict[str, Any]:
    agent = load(run.path)
    episodes = options.get("episodes") or agent.run_config.eval_episodes
    returns = np.asarray(world_model_returns(agent, agent.run_config, episodes))
    return {
        "agent": agent.agent_name,
        "env_steps": agent.env_steps,
        "episodes": episodes,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
    }


def _e2c_trials(model, config) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The run's swing-up trials with its controller: (control result, the data it used)."""
    from latentvi.jobs.e2c import (
        LATENT_BOX_SAMPLES,
        TRIAL_SEED,
        collect_transitions,
        control,
        latent_controller,
    )
    from latentvi.train.rng import mixed_seed

    small = dataclasses.replace(config, transitions=min(config.transitions, 3000))
    data = collect_transitions(small, mixed_seed(config.seed, 1))
    with torch.no_grad():
        latents = model.encode(data["x"][:LATENT_BOX_SAMPLES]).mean
    controller = latent_controller(model, config, latents=latents)
    return control(model, config, TRIAL_SEED + config.seed, controller), data


def _eval_e2c(run: Run, options: dict[str, Any]) -> dict[str, Any]:
    from latentvi.jobs.e2c import goal_stability

    model = load(run.path)
    config = model.run_config
    if options.get("episodes"):
        config = dataclasses.replace(config, trials=options["episodes"])
    result, _ = _e2c_trials(model, config)
    return {
        **goal_stability(model, config),
        "success_rate": float(result["success"].mean()),
        "successes": int(result["success"].sum()),
        "trials": config.trials,
        "final_abs_angle_mean": float(np.abs(result["angles"][:, -1]).mean()),
    }


# --------------------------------------------------------------------------------------------------
# sample and plot


def _sample_vae(run: Run, n: int, out, seed: int) -> Path:
    from latentvi.jobs.vae import sample_run

    return sample_run(run.path, n, out, seed)


def _sample_cvae(run: Run, n: int, out, seed: int) -> Path:
    from latentvi.jobs.cvae import sample_cvae

    return sample_cvae(run.path, n, out, seed)


def _plot_vae(run: Run, out: Path) -> list[Path]:
    from latentvi.jobs.vae import plot_run

    return plot_run(run.path, out)


def _plot_cvae(run: Run, out: Path) -> list[Path]:
    from latentvi.jobs.cvae import plot_cvae

    return plot_cvae(run.path, out)


def _plot_imitation(run: Run, out: Path) -> list[Path]:
    """The demonstrations beside the (first seed's) policy on fresh episodes."""
    from latentvi.envs.demos import DemoConfig
    from latentvi.jobs.imitation import plot_episodes
    from latentvi.rl.imitation import EVAL_SEED, evaluate_policy, make_controller

    model = load(run.path)
    demos = run.configs.get("demos")
    if demos is None and (run.path.parent / "run.json").is_file():
        demos = read_run(run.path.parent).configs.get("demos")
    demos = from_dict(DemoConfig, demos or {})
    controller = make_controller(model, model.policy_config, model.task)
    _, episodes = evaluate_policy(model.task, controller, 20, EVAL_SEED)
    path = out / f"trajectories-{model.policy_config.policy}.png"
    return [plot_episodes(model.task, model.policy_config, demos, episodes, path)]


def _curve(run: Run, out: Path, name: str) -> list[Path]:
    """The run's evaluation returns against environment steps (its ``curve.csv``)."""
    from latentvi.jobs.latent_q import plot_learning_curves

    source = run.path / "curve.csv"
    if not source.is_file():
        return []
    with open(source, newline="") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    return [plot_learning_curves({name: rows}, out / "curve.png")]


def _plot_latent_q(run: Run, out: Path) -> list[Path]:
    return _curve(run, out, run.configs.get("agent", {}).get("variant", "latent-q"))


def _plot_world_model(run: Run, out: Path) -> list[Path]:
    """The curve, and open-loop predictions on an evaluation episode (as at the end of a run)."""
    from latentvi.data.episodes import EpisodeRunner
    from latentvi.jobs.world_model import OPEN_LOOP_SEED, make_run_env, open_loop_figures
    from latentvi.train.rng import isolated_rng, mixed_seed

    agent = load(run.path)
    config = agent.run_config
    written = _curve(run, out, agent.agent_name)
    if not hasattr(agent, "model"):  # SOLAR: no RSSM, no open-loop predictions
        return written
    env = make_run_env(config)
    try:
        runner = EpisodeRunner(env, {"model": 0.0, "env": 0.0, "act": 0.0})
        with isolated_rng(mixed_seed(config.seed, OPEN_LOOP_SEED)):
            episode, _, _ = runner.run(mixed_seed(config.seed, OPEN_LOOP_SEED), agent, False)
            files = open_loop_figures(agent, episode, config, out)
    finally:
        env.close()
    return [*written, *(Path(files[k]) for k in ("open_loop_png", "open_loop_mse_png"))]


def _plot_e2c(run: Run, out: Path) -> list[Path]:
    """Reconstructions and predictions, the latent means by angle, and trial 0 swinging up."""
    from latentvi.jobs.e2c import plot_e2c

    model = load(run.path)
    result, data = _e2c_trials(model, model.run_config)
    return plot_e2c(model, data, result, out)


# --------------------------------------------------------------------------------------------------
# The table of kinds and the four entry points


@dataclasses.dataclass(frozen=True)
class Kind:
    """What each command does with a run of one kind (None: the command does not apply)."""

    load: Callable[[Run, Any, Any], Any]
    evaluate: Callable[[Run, dict[str, Any]], dict[str, Any]] | None
    sample: Callable[[Run, int, Any, int], Path] | None
    plot: Callable[[Run, Path], list[Path]] | None


KINDS: dict[str, Kind] = {
    "vae": Kind(_load_vae, _eval_vae, _sample_vae, _plot_vae),
    "cvae": Kind(_load_cvae, _eval_cvae, _sample_cvae, _plot_cvae),
    "cvae-regressor": Kind(_load_cvae, _eval_cvae, None, None),
    "imitation": Kind(_load_imitation, _eval_imitation, None, _plot_imitation),
    "latent-q": Kind(_load_latent_q, _eval_latent_q, None, _plot_latent_q),
    "world-model": Kind(_load_world_model, _eval_world_model, None, _plot_world_model),
    "e2c": Kind(_load_e2c, _eval_e2c, None, _plot_e2c),
}


def _kind(run_dir: str | os.PathLike, command: str) -> tuple[Run, Any]:
    run = read_run(run_dir)
    action = getattr(KINDS[run.kind], command)
    if action is None:
        applies = [name for name, kind in KINDS.items() if getattr(kind, command) is not None]
        raise ValueError(
            f"{command} does not apply to {str(run.path)!r}, a {run.kind} run; it works on "
            f"{', '.join(applies)} runs"
        )
    return run, action


def load(
    run_dir: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    checkpoint: str | os.PathLike | None = None,
    model: torch.nn.Module | None = None,
):
    """The trained object of a run folder of any kind, in eval mode (see the module's table):
    the weights of ``checkpoint`` (e.g. ``RUN/checkpoints/step-000100``), or of the latest.

    With ``model`` (a module you built, e.g. a :class:`~latentvi.models.vae.CustomVAE` of your own
    networks, trained by :func:`latentvi.train.fit`), the checkpoint's weights go into it instead
    (names and shapes must match, or one line says which differ) and it is returned: no code and
    no architecture is taken from the folder."""
    if model is not None:
        require(
            isinstance(model, torch.nn.Module),
            "model",
            type(model).__name__,
            "pass the torch.nn.Module to fill, built as the trained one was",
        )
        source = run_dir if checkpoint is None else checkpoint
        load_checkpoint(source, model, map_location=map_location, restore_rng=False)
        return model.eval()
    run, action = _kind(run_dir, "load")
    return action(run, map_location, checkpoint)


def evaluate(run_dir: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """The kind's evaluation (module table). ``options``: ``importance_samples``,
    ``n_examples``, ``split`` (vae, cvae), ``episodes`` (agents, policies; E2C: trials),
    ``progress``; those a kind does not use are ignored."""
    run, action = _kind(run_dir, "evaluate")
    return action(run, options)


def sample(run_dir: str | os.PathLike, n: int, out: str | os.PathLike, seed: int = 0) -> Path:
    """``n`` images drawn from a vae or cvae run, as a grid PNG at ``out``."""
    run, action = _kind(run_dir, "sample")
    return action(run, n, out, seed)


def plot(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """The kind's figures into ``out`` (default ``RUN/figures``); returns the written files."""
    run, action = _kind(run_dir, "plot")
    folder = Path(out) if out is not None else run.path / FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    return action(run, folder)
