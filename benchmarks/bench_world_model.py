"""Latent state-space models and model-based RL (issue 6): PlaNet, Dreamer and SLAC throughput and
curves.

    python benchmarks/bench_world_model.py throughput [--presets debug,default,paper]
        [--agents planet,dreamer] [--updates 10] [--act-steps 20] [--repeats 3]
    python benchmarks/bench_world_model.py collect --run runs/bench-world-model/dreamer-default-seed0
    python benchmarks/bench_world_model.py open-loop --run RUN [--episodes 10] [--horizon 45]
        [--draws 5] [--policy agent|random]
    python benchmarks/bench_world_model.py overshooting --run RUN [--distance 10] [--updates 1000]
    python benchmarks/bench_world_model.py imagination --run RUN [--episodes 10] [--horizon 15]
    python benchmarks/bench_world_model.py table --agent dreamer --preset default [--target -300]
    python benchmarks/bench_world_model.py curve --agent dreamer --preset default --steps 50000
        [--eval-every N] [--eval-episodes N] [--seed 0] [--runs runs/bench-world-model] [--resume]
    python benchmarks/bench_world_model.py diagnose --run RUN [--figure PATH]

``throughput``, per preset and agent, on pixel Pendulum-v1 with the preset's sizes: world-model
updates per second (one batch of chunks each; Dreamer's and SLAC's include their actor-critic
step — SLAC's timed with ``model_only_updates`` = 0, so every update has it), agent steps per
second while acting (filtering + planning or the actor; PlaNet: a full CEM per step),
and environment steps per second (rendering included), each the median of ``--repeats`` timed
repeats after one warm-up. From these it derives the share of wall time of one iteration of the
run's schedule (``train_steps`` updates, then one 200-step episode of 100 agent steps) in model
training, environment stepping and acting, and the hours that 50k environment steps would take
(without evaluation episodes). ``curve`` runs ``latentvi world-model train`` and stores its
curve and summary; ``collect`` stores the evaluations logged so far by a run folder (a run that is
still going or was stopped: its metrics.jsonl ``eval/*`` rows); ``open-loop`` measures the
open-loop prediction of a run's latest checkpoint on fresh episodes
(:mod:`latentvi.jobs.open_loop`: per-step frame error and, on Pendulum, the rod-angle
error and the number of steps it stays under 30°, each episode predicted ``--draws`` times from a
fixed seed, beside Pendulum's own equations run from the true state plus noise; episodes of the
run's agent or, with ``--policy random``, of random actions: files ``..._random``);
``overshooting`` is a probe of PlaNet's latent overshooting on a finished run: it
fine-tunes the world model of the run's latest checkpoint (with its Adam state) for ``--updates``
steps on the run's stored episodes twice, the same batches each time, without and with
overshooting to ``--distance`` steps, and measures the open-loop prediction of the checkpoint and
of both copies on the same fresh episodes of the checkpoint's agent; ``imagination`` (Dreamer runs)
compares, along fresh episodes of the actor acting without noise, the reward the model imagines
the actor collecting over the next ``--horizon`` steps from each filtered state (the actor's mode,
the prior sampled, as in training's imagination) with the reward it actually collected over those
steps, and the reward head on the filtered states with the true rewards; ``diagnose`` (Dreamer
runs) draws the run's critic values, λ-returns, actor entropy, action saturation and return scale
over environment steps in one figure (:mod:`world_model_diagnose`). Results:
benchmarks/results/world_model_*.json (throughput of other agents than planet,dreamer:
``world_model_throughput_AGENTS_Nt.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from latentvi.data.episodes import EpisodeStore
from latentvi.diagnostics import REPORT_SEED, open_loop_errors, recognizable_steps
from latentvi.jobs.open_loop import open_loop_report, report_episodes
from latentvi.jobs.world_model import (
    AGENTS,
    WorldModelRunConfig,
    load_run,
    make_run_env,
    train_world_model,
)
from latentvi.models.ssm import RSSMConfig, WorldModel
from latentvi.optim_step import optimizer_step
from latentvi.presets import resolve
from latentvi.rl.world_model_agent import ModelTrainingConfig
from results_io import median_seconds, save_results

RESULTS = Path(__file__).parent / "results"


def configs(agent: str, preset: str, **run_values):
    types = (WorldModelRunConfig, RSSMConfig, ModelTrainingConfig, AGENTS[agent][0])
    return resolve("world-model", preset, types, run_values, agent=agent)


def throughput_one(agent_name: str, preset: str, args, folder: Path) -> dict:
    run, model_config, training, agent_config = configs(agent_name, preset, out=str(folder))
    if hasattr(agent_config, "model_only_updates"):  # SLAC: time the full update
        agent_config = dataclasses.replace(agent_config, model_only_updates=0)
    env = make_run_env(run)
    model_config = RSSMConfig(
        **{
            **{k: getattr(model_config, k) for k in model_config.__dataclass_fields__},
            "action_dim": int(env.action_space.shape[0]),
            "obs_shape": tuple(env.observation_space.shape),
        }
    )
    torch.manual_seed(0)
    agent = AGENTS[agent_name][1](model_config, training, agent_config)
    store = EpisodeStore(folder / "episodes", seed=0)
    generator = np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high

    def random_episode() -> int:
        obs, _ = env.reset(seed=int(generator.integers(1 << 30)))
        frames, actions, rewards, steps, done = [obs], [], [], 0, False
        while not done:
            action = generator.uniform(-1, 1, low.shape).astype(np.float32)
            obs, reward, terminated, truncated, info = env.step(
                low + (action + 1) / 2 * (high - low)
            )
            frames.append(obs)
            actions.append(action)
            rewards.append(reward)
            steps += info["env_steps"]
            done = terminated or truncated
        if len(store) < 2:
            store.add({"obs": np.stack(frames), "action": np.stack(actions),
                       "reward": np.asarray(rewards, np.float32),
                       "terminal": np.zeros(len(actions), bool)})  # fmt: skip
        return steps

    env_seconds = median_seconds(random_episode, args.repeats)  # one episode
    episode_env_steps = random_episode()

    def updates() -> None:
        for _ in range(args.updates):
            agent.update(store.sample(training.batch_size, training.chunk_length))

    update_seconds = median_seconds(updates, args.repeats) / args.updates
    frame = store.episodes[0]["obs"][0]

    def acting() -> None:
        agent.reset()
        for _ in range(args.act_steps):
            agent.act(frame, explore=True, noise=0.3)

    act_seconds = median_seconds(acting, args.repeats) / args.act_steps
    env.close()
    agent_steps = episode_env_steps // run.action_repeat
    iteration = {
        "model": run.train_steps * update_seconds,
        "env": env_seconds,
        "act": agent_steps * act_seconds,
    }
    total = sum(iteration.values())
    return {
        "agent": agent_name,
        "preset": preset,
        "image": [*model_config.obs_shape],
        "batch": [training.batch_size, training.chunk_length],
        "train_steps_per_episode": run.train_steps,
        "updates_per_second": 1.0 / update_seconds,
        "agent_steps_per_second_acting": 1.0 / act_seconds,
        "env_steps_per_second_random": episode_env_steps / env_seconds,
        "iteration_seconds": total,
        "share": {key: value / total for key, value in iteration.items()},
        "hours_per_50k_env_steps": total * 50_000 / episode_env_steps / 3600,
    }


def throughput(args) -> dict:
    rows = []
    for preset in args.presets.split(","):
        for agent in args.agents.split(","):
            folder = Path(args.runs) / f"throughput-{preset}-{agent}"
            if folder.exists():
                import shutil

                shutil.rmtree(folder)
            row = throughput_one(agent, preset, args, folder)
            print(row)
            rows.append(row)
    return {
        "mode": "throughput",
        "threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(),
        "updates_timed": args.updates,
        "act_steps_timed": args.act_steps,
        "repeats": args.repeats,
        "rows": rows,
    }


def curve(args) -> dict:
    run, model, training, agent_config = configs(
        args.agent,
        args.preset,
        steps=args.steps,
        seed=args.seed,
        out=str(Path(args.runs) / f"{args.agent}-{args.preset}-seed{args.seed}"),
        progress=False,
        **({"eval_every": args.eval_every} if args.eval_every else {}),
        **({"eval_episodes": args.eval_episodes} if args.eval_episodes else {}),
    )
    load_before = os.getloadavg()
    summary = train_world_model(args.agent, run, model, training, agent_config, resume=args.resume)
    import csv

    with open(Path(run.out) / "curve.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {
        "mode": "curve",
        "agent": args.agent,
        "preset": args.preset,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "loadavg_start": load_before,
        "loadavg_end": os.getloadavg(),
        "summary": summary,
        "curve": [{k: float(v) for k, v in row.items()} for row in rows],
    }


def collect(args) -> dict:
    import json

    run = Path(args.run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    config = json.loads((run / "config.json").read_text())
    evaluations = [
        {"env_step": r["step"], "return_mean": r["eval/return_mean"],
         "return_std": r["eval/return_std"]}
        for r in rows if "eval/return_mean" in r
    ]  # fmt: skip
    last = [r for r in rows if "perf/updates" in r][-1]
    return {
        "mode": "collect (partial run)",
        "run": str(run),
        "agent": config["agent"],
        "config": config,
        "loadavg_now": os.getloadavg(),
        "last_logged": {k: v for k, v in last.items() if k.startswith(("perf/", "step"))},
        "curve": evaluations,
    }


def open_loop(args) -> dict:
    """Open-loop errors of the run's latest checkpoint on ``--episodes`` fresh episodes; the
    figures go to results/ beside the JSON."""
    policy = "" if args.policy == "agent" else f"_{args.policy}"
    folder = Path(args.runs) / f"open-loop-{Path(args.run).name}{policy}"
    summary = open_loop_report(args.run, episodes=args.episodes, horizon=args.horizon,
                               out=folder, draws=args.draws, policy=args.policy)  # fmt: skip
    step = summary["checkpoint_step"]
    for suffix in ("", "_errors"):
        source = folder / f"open_loop_report{suffix}.png"
        target = f"world_model_open_loop_{Path(args.run).name}_{step}{policy}{suffix}.png"
        (RESULTS / target).write_bytes(source.read_bytes())
    return {"mode": "open-loop", "loadavg": os.getloadavg(), **summary}


@torch.no_grad()
def imagination(args) -> dict:
    """The ``imagination`` probe (see the module docstring)."""
    from latentvi.train.rng import isolated_rng

    agent_name, agent, run, step = load_run(args.run)
    if agent_name != "dreamer":
        raise ValueError(f"--run {args.run} is a {agent_name} run: the probe needs a Dreamer actor")
    obs, actions, rewards = report_episodes(agent, run, args.episodes, rewards=True)  # [T, B, ...]
    model, horizon = agent.model.eval(), args.horizon
    with isolated_rng(REPORT_SEED):
        posterior = model.observe(obs, actions)  # [T, B]
        starts = obs.shape[0] - horizon  # states t = 0 … T−H−1 have H real steps after them
        start = posterior.map(lambda x: x[:starts]).reshape(-1)
        states, _ = model.rssm.imagine_policy(start, agent.actor.mode, horizon)
        imagined = model.reward(model.rssm.features(states)[1:]).mean.sum(0)  # [N]
        filtered = model.reward(model.rssm.features(posterior)).mean  # [T, B]
    real = torch.stack([rewards[t + 1 : t + 1 + horizon].sum(0) for t in range(starts)])
    gap = imagined.reshape(starts, -1) - real  # [starts, B]
    returns = [float(r) for r in rewards.sum(0)]
    return {
        "mode": "imagination",
        "run": str(args.run),
        "checkpoint_step": step,
        "episodes": args.episodes,
        "horizon": horizon,
        "episode_returns": returns,
        "return_mean": float(np.mean(returns)),
        "real_reward_per_step": float(real.mean() / horizon),
        "imagined_reward_per_step": float(imagined.mean() / horizon),
        "imagined_minus_real_per_step": float(gap.mean() / horizon),
        "imagined_minus_real_per_step_median_abs": float(gap.abs().median() / horizon),
        "reward_head_error_on_filtered_states": float((filtered[1:] - rewards[1:]).abs().mean()),
        "per_episode_gap_per_step": [float(v) for v in gap.mean(0) / horizon],
    }


def overshooting(args) -> dict:
    """The ``overshooting`` probe (see the module docstring)."""
    import copy
    import time

    agent_name, agent, run, step = load_run(args.run)
    training = agent.model_training
    obs, actions = report_episodes(agent, run, args.episodes)
    context = 5  # as open_loop_report's
    horizon = min(args.horizon, obs.shape[0] - context)

    def measure(model) -> dict:
        errors = open_loop_errors(model.eval(), obs, actions, context, horizon, True, args.draws)
        return {
            "recognizable_steps": recognizable_steps(errors["angle_error"]),
            "angle_error": [float(v) for v in errors["angle_error"]],
            "mse": [float(v) for v in errors["mse"]],
        }

    rows = {"checkpoint": {"updates": 0, **measure(agent.model)}}
    for distance in (0, args.distance):
        model = WorldModel(dataclasses.replace(agent.model.config, overshooting=distance))
        model.load_state_dict(agent.model.state_dict())
        model.train()
        optimizer = torch.optim.Adam(model.parameters())  # the checkpoint's Adam, continued:
        optimizer.load_state_dict(copy.deepcopy(agent.optimizers["model"].state_dict()))
        store = EpisodeStore(Path(args.run) / "episodes", seed=args.seed)  # the same batches
        started, losses = time.process_time(), []
        for _ in range(args.updates):
            batch = store.sample(training.batch_size, training.chunk_length)
            loss, metrics, _ = model.loss(batch["obs"], batch["action"], batch["reward"])
            optimizer_step(optimizer, loss, clip=training.grad_clip, name="world-model loss")
            losses.append(metrics)
        seconds = time.process_time() - started
        keys = losses[-1] if losses else {}
        last = {key: float(np.mean([m[key] for m in losses[-100:]])) for key in keys}
        rows[f"finetuned_distance_{distance}"] = {
            "updates": args.updates,
            "cpu_seconds": seconds,
            "last_100_updates": last,
            **measure(model),
        }
        print(distance, {k: v for k, v in rows[f"finetuned_distance_{distance}"].items()
                         if k in ("recognizable_steps", "cpu_seconds")})  # fmt: skip
    return {
        "mode": "overshooting",
        "run": str(args.run),
        "agent": agent_name,
        "checkpoint_step": step,
        "episodes": args.episodes,
        "context": context,
        "horizon": horizon,
        "draws": args.draws,
        "distance": args.distance,
        "loadavg": os.getloadavg(),
        "rows": rows,
    }


def table(args) -> dict:
    """Mean ± std over seeds at each evaluation step, from the ``curve`` results (or ``collect``
    results of runs still going) of ``--agent``/``--preset`` in results/: the curve, the best
    evaluation per seed, and the first step where the mean over seeds reaches ``--target``."""
    import glob
    import json
    import statistics

    # per seed, the curve or partial result that got further (a finished run's curve on a tie)
    by_seed: dict[str, tuple[int, str, list]] = {}
    patterns = (f"world_model_partial_{args.agent}-{args.preset}-seed*.json",
                f"world_model_curve_{args.agent}_{args.preset}_seed*.json")  # fmt: skip
    for pattern in patterns:
        for path in sorted(glob.glob(str(RESULTS / pattern))):
            seed = path.rsplit("seed", 1)[1].removesuffix(".json")
            curve = json.loads(Path(path).read_text())["curve"]
            last = max(int(r["env_step"]) for r in curve)
            if seed not in by_seed or last >= by_seed[seed][0]:
                by_seed[seed] = (last, path, curve)
    curves = {path: curve for _, path, curve in by_seed.values()}
    if not curves:
        raise SystemExit(f"no curve or partial results for {args.agent} {args.preset} in {RESULTS}")
    steps = sorted(set.intersection(*({int(r["env_step"]) for r in c} for c in curves.values())))
    rows = []
    for step in steps:
        values = [next(r["return_mean"] for r in c if int(r["env_step"]) == step)
                  for c in curves.values()]  # fmt: skip
        rows.append({"env_step": step, "returns": values, "mean": statistics.fmean(values),
                     "std": statistics.pstdev(values)})  # fmt: skip
    reached = next((r["env_step"] for r in rows if r["mean"] >= args.target), None)
    return {
        "mode": "table",
        "agent": args.agent,
        "preset": args.preset,
        "sources": sorted(Path(p).name for p in curves),
        "target": args.target,
        "first_step_mean_reaches_target": reached,
        "best_per_seed": [max(r["return_mean"] for r in c) for c in curves.values()],
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "mode",
        choices=(
            "throughput",
            "curve",
            "collect",
            "open-loop",
            "overshooting",
            "imagination",
            "table",
            "diagnose",
        ),
    )
    parser.add_argument("--figure", default=None, help="diagnose: the PNG (default: results/)")
    parser.add_argument("--distance", type=int, default=10, help="overshooting: distance D")
    parser.add_argument("--target", type=float, default=-300.0, help="table: the return bar")
    parser.add_argument("--run", default=None, help="collect, open-loop: the run folder")
    parser.add_argument("--episodes", type=int, default=10, help="open-loop: fresh episodes")
    parser.add_argument("--horizon", type=int, default=45, help="open-loop: steps predicted")
    parser.add_argument(
        "--draws", type=int, default=5, help="open-loop, overshooting: predictions per episode"
    )
    parser.add_argument(
        "--policy",
        default="agent",
        choices=("agent", "random"),
        help="open-loop: episodes' actions",
    )
    parser.add_argument("--presets", default="debug,default,paper")
    parser.add_argument("--agents", default="planet,dreamer")
    parser.add_argument("--updates", type=int, default=10, help="throughput, overshooting")
    parser.add_argument("--act-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--agent", default="dreamer", choices=tuple(AGENTS))
    parser.add_argument("--preset", default="default")
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--runs", default="runs/bench-world-model")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode == "throughput":
        result = throughput(args)
        agents = "" if args.agents == "planet,dreamer" else args.agents.replace(",", "-") + "_"
        name = f"world_model_throughput_{agents}{args.threads}t.json"
    elif args.mode == "collect":
        result = collect(args)
        name = f"world_model_partial_{Path(args.run).name}.json"
    elif args.mode == "diagnose":
        from world_model_diagnose import diagnose

        figure = args.figure or RESULTS / f"world_model_diagnose_{Path(args.run).name}.png"
        result = diagnose(args.run, figure)
        name = f"world_model_diagnose_{Path(args.run).name}.json"
    elif args.mode == "table":
        result = table(args)
        name = f"world_model_table_{args.agent}_{args.preset}.json"
    elif args.mode == "overshooting":
        result = overshooting(args)
        name = f"world_model_overshooting_{Path(args.run).name}_{result['checkpoint_step']}.json"
    elif args.mode == "imagination":
        result = imagination(args)
        name = f"world_model_imagination_{Path(args.run).name}_{result['checkpoint_step']}.json"
    elif args.mode == "open-loop":
        result = open_loop(args)
        suffix = "" if args.policy == "agent" else f"_{args.policy}"
        name = (
            f"world_model_open_loop_{Path(args.run).name}_{result['checkpoint_step']}{suffix}.json"
        )
    else:
        result = curve(args)
        name = f"world_model_curve_{args.agent}_{args.preset}_seed{args.seed}.json"
    save_results(RESULTS / name, result)


if __name__ == "__main__":
    main()
