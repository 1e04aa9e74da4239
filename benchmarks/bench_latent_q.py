"""RL representations (issue 5): state vs raw pixels vs VAE latent (online / pretrained).

Protocol (``full``): for each environment — pixel Pendulum-v1 with SAC, pixel CartPole-v1 with
double DQN — and each variant (state, pixels, vae, vae-pretrained), train ``--seeds`` seeds for
``--steps`` environment steps with the default configuration of ``latentvi rl latent-q`` (equal
steps and equal seeds across variants), evaluate 10 episodes every ``--eval-every`` steps, and
report the final evaluation return as mean ± std over seeds. Pendulum's must-reach checks are
computed from the same numbers: the vae agent's mean ≥ −400, at least 80% of the way from the
random policy's return to the state agent's at the same step count, and above the pixels agent.

    python benchmarks/bench_latent_q.py full [--steps 30000] [--seeds 3] [--envs Pendulum-v1]
    python benchmarks/bench_latent_q.py throughput [--agent-steps 300]
    python benchmarks/bench_latent_q.py curve --env Pendulum-v1 --variant vae --steps 6000
    python benchmarks/bench_latent_q.py probe [--frames 5000] [--updates 1000]
    python benchmarks/bench_latent_q.py table --env Pendulum-v1

``--agent NAME=VALUE`` (repeatable) sets a LatentQConfig option in ``full`` and ``curve`` runs,
and ``--tag`` names them apart (run folders, result files, and the ``table`` that gathers them):
``curve --variant vae --agent critic_norm=none --tag=-no-norm``.

``throughput`` times the training phase (act, store, one update per agent step) of every
variant on both pixel environments; ``curve`` runs one seed of one variant. Runs go to
``--runs`` (default runs/bench-latent-q); results to benchmarks/results/latent_q_*.json.

``table`` gathers the ``curve`` results already in benchmarks/results for one environment (every
variant and seed found) into the same summary and checks as ``full``, and plots them.

``probe`` is the diagnosis of the agent's VAE on pixel Pendulum, offline: ``--frames`` stacked
observations of a uniform random policy (with the true state of each newest frame), the agent's
VAE fitted for ``--updates`` batches with centred (the default) and uncentred frames, then on
the last 20% of the frames: the reconstruction's squared error over the mean frame's, the spread
of the encoder means across frames, and the R² of a linear probe from z to cos θ, sin θ, θ̇.

``optimum`` is a reference for Pendulum's table: the return of a near-optimal controller on the
same 10 evaluation episodes of each seed — finite-horizon dynamic programming on Pendulum-v1's
own equations over a (θ, θ̇) grid with bilinear interpolation, one stage per agent step (action
repeat 2), acting by one-step lookahead on the true state — beside the ``curve`` results' final
returns per seed. It bounds how far any agent can be ahead of another there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from latentvi.config import to_dict
from latentvi.envs.pendulum import MAX_SPEED, MAX_TORQUE, pendulum_step
from latentvi.envs.pixels import newest_frame
from latentvi.jobs.latent_q import (
    EVAL_SEED,
    RunConfig,
    make_run_env,
    new_replay_buffer,
    plot_learning_curves,
    run_latent_q,
)
from latentvi.rl.latent_q import VARIANTS, LatentQAgent, LatentQConfig
from latentvi.train.rng import mixed_seed
from results_io import save_results

RESULTS = Path(__file__).parent / "results"
ENVS = ("Pendulum-v1", "CartPole-v1")
# Action repeat per environment: Pendulum's 200-step episodes at repeat 2 (common in pixel
# control); CartPole at 1, where a repeated push loses the pole quickly.
ACTION_REPEAT = {"Pendulum-v1": 2, "CartPole-v1": 1}


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def run_config(
    env: str, variant: str, seed: int, steps: int, runs: Path, tag: str = "", **extra
) -> RunConfig:
    return RunConfig(
        env=env,
        action_repeat=ACTION_REPEAT.get(env, 2),
        steps=steps,
        seed=seed,
        out=str(runs / f"{env}-{variant}{tag}-seed{seed}"),
        progress=False,
        **extra,
    )


def agent_options(pairs: list[str]) -> dict:
    """``["critic_norm=none", "lr=1e-3"]`` -> LatentQConfig field values, typed by each field's
    default (bool, int, float or str)."""
    fields = {f.name: f for f in dataclasses.fields(LatentQConfig)}
    options = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if name not in fields or not text:
            raise SystemExit(f"--agent {pair!r}: use NAME=VALUE with NAME one of {sorted(fields)}")
        default = fields[name].default
        if isinstance(default, bool):
            options[name] = text.lower() in ("1", "true", "yes")
        elif isinstance(default, int | float):
            options[name] = type(default)(text)
        else:
            options[name] = text
    return options


def one_run(
    env: str, variant: str, seed: int, steps: int, runs: Path, resume: bool,
    agent: dict | None = None, tag: str = "", **extra,
):  # fmt: skip
    config = run_config(env, variant, seed, steps, runs, tag, **extra)
    resume = resume and (Path(config.out) / "checkpoints").is_dir()
    started, cpu_started = time.perf_counter(), time.process_time()
    agent_config = LatentQConfig(variant=variant, **(agent or {}))
    summary = run_latent_q(agent_config, config, resume=resume)
    summary["agent_options"] = dict(agent or {})
    summary["agent_config"] = to_dict(agent_config)
    summary["seconds"] = time.perf_counter() - started
    # CPU time of this process: wall time under other jobs says little about the run's own cost
    summary["cpu_seconds"] = time.process_time() - cpu_started
    with open(Path(config.out) / "curve.csv") as handle:
        rows = [line.split(",") for line in handle.read().splitlines()[1:]]
    summary["curve"] = [
        {"env_step": int(r[0]), "return_mean": float(r[1]), "return_std": float(r[2])} for r in rows
    ]
    return summary


def random_action(env, generator: np.random.Generator):
    """A uniform random action of ``env``: an int (Discrete) or a float32 array (Box)."""
    space = env.action_space
    if hasattr(space, "n"):
        return int(generator.integers(space.n))
    return generator.uniform(space.low, space.high).astype(np.float32)


def random_policy_return(env_id: str, episodes: int) -> float:
    """Mean return of uniformly random actions over ``episodes`` seeded episodes."""
    env = make_run_env(run_config(env_id, "state", 0, 1, Path("unused")), pixels=False)
    generator = np.random.default_rng(0)
    returns = []
    for episode in range(episodes):
        env.reset(seed=episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(random_action(env, generator))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def full(args) -> dict:
    runs = Path(args.runs)
    results: dict = {"machine": machine(), "steps": args.steps, "seeds": args.seeds, "envs": {}}
    for env in args.envs:
        per_variant = {}
        for variant in args.variants:
            # fmt: off
            summaries = [
                one_run(
                    env, variant, seed, args.steps, runs, args.resume, agent_options(args.agent),
                    args.tag, eval_every=args.eval_every,
                )
                for seed in range(args.seeds)
            ]
            # fmt: on
            finals = [s["final_return_mean"] for s in summaries]
            per_variant[variant] = {
                "final_returns": finals,
                "mean": statistics.fmean(finals),
                "std": statistics.pstdev(finals) if len(finals) > 1 else 0.0,
                "seconds_per_seed": [s["seconds"] for s in summaries],
                "curves": [s["curve"] for s in summaries],
            }
        results["envs"][env] = _entry(env, per_variant, args.episodes)
        curves = {
            variant: [
                {
                    "env_step": row["env_step"],
                    "return_mean": float(np.mean([c[i]["return_mean"] for c in v["curves"]])),
                    "return_std": float(np.std([c[i]["return_mean"] for c in v["curves"]])),
                }
                for i, row in enumerate(v["curves"][0])
            ]
            for variant, v in per_variant.items()
        }
        plot_learning_curves(
            curves,
            RESULTS / f"latent_q_{env}.png",
            f"{env} from pixels (state: true state); mean ± std over {args.seeds} seeds",
        )
    return save_results(RESULTS / "latent_q_full.json", results)


def _entry(env: str, per_variant: dict, episodes: int) -> dict:
    """Per-variant results plus the random policy's return and the must-reach checks."""
    random_return = random_policy_return(env, episodes)
    entry = {"variants": per_variant, "random_policy_return": random_return}
    if {"state", "vae", "pixels"} <= set(per_variant):
        vae, state = per_variant["vae"]["mean"], per_variant["state"]["mean"]
        fraction = (vae - random_return) / (state - random_return)
        entry["checks"] = {
            "vae_mean_at_least_-400": vae >= -400 if env == "Pendulum-v1" else None,
            "vae_fraction_of_random_to_state": fraction,
            "vae_at_least_80_percent": fraction >= 0.8,
            "vae_above_pixels": vae > per_variant["pixels"]["mean"],
        }
    return entry


def table(args) -> dict:
    """The ``full`` summary from the ``curve`` results in benchmarks/results for ``--env``."""
    rows = dict(row.split("=", 1) for row in args.rows) or {v: f"{v}{args.tag}" for v in VARIANTS}
    per_variant = {}
    for variant, stem in rows.items():
        paths = sorted(RESULTS.glob(f"latent_q_curve_{args.env}_{stem}_seed*.json"))
        summaries = [json.loads(p.read_text()) for p in paths]
        if not summaries:
            continue
        finals = [s["final_return_mean"] for s in summaries]
        per_variant[variant] = {
            "seeds": [int(p.stem.rsplit("seed", 1)[1]) for p in paths],
            "env_steps": [s["env_steps"] for s in summaries],
            "seconds": [s.get("seconds") for s in summaries],
            "final_returns": finals,
            "mean": statistics.fmean(finals),
            "std": statistics.pstdev(finals) if len(finals) > 1 else 0.0,
        }
        curves = [s["curve"] for s in summaries]
        steps = min(len(c) for c in curves)
        per_variant[variant]["curve"] = [
            {
                "env_step": curves[0][i]["env_step"],
                "return_mean": float(np.mean([c[i]["return_mean"] for c in curves])),
                "return_std": float(np.std([c[i]["return_mean"] for c in curves])),
            }
            for i in range(steps)
        ]
        curve = per_variant[variant]["curve"]
        per_variant[variant]["results"] = stem
        # less noisy than one evaluation: the seeds' mean over the last 3 evaluations
        per_variant[variant]["last_3_evaluations_mean"] = float(
            np.mean([row["return_mean"] for row in curve[-3:]])
        )
        if args.env == "Pendulum-v1":
            reached = [row["env_step"] for row in curve if row["return_mean"] >= -400]
            per_variant[variant]["first_step_mean_at_least_-400"] = reached[0] if reached else None
    entry = _entry(args.env, per_variant, args.episodes)
    name = args.env.split("-")[0].lower()
    plot_learning_curves(
        {f"{v} ({len(r['seeds'])} seed{'s' * (len(r['seeds']) > 1)})": r["curve"]
         for v, r in per_variant.items()},
        RESULTS / f"latent_q_{name}{args.tag}_curves.png",
        f"{args.env}: mean ± std over seeds (pixels; state: the true state)",
    )  # fmt: skip
    return save_results(
        RESULTS / f"latent_q_{name}{args.tag}_table.json", {"env": args.env, **entry}
    )


def _steps(env, agent, buffer, generator, n: int, learn: bool, batch_size: int, every: int) -> int:
    """``n`` agent steps (random actions unless ``learn``; then an update every ``every``)."""
    channels = buffer.frame_shape[0]
    taken, done, obs = 0, True, None
    for step in range(1, n + 1):
        if done:
            obs, _ = env.reset(seed=int(generator.integers(2**31)))
            buffer.start(newest_frame(obs, channels))
        space = env.action_space
        if learn:
            action = agent.act(obs, explore=True, epsilon=0.1)
        elif hasattr(space, "n"):
            action = int(generator.integers(space.n))
        else:
            action = generator.uniform(space.low, space.high).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        buffer.add(action, reward, newest_frame(obs, channels), terminated, truncated)
        done = terminated or truncated
        taken += info.get("env_steps", 1)
        if learn and step % every == 0:
            agent.update(buffer.sample(batch_size))
    return taken


def throughput(args) -> dict:
    """Environment steps per second in the training phase, with the run's default update rate
    (one update every ``update_every`` agent steps)."""
    results: dict = {"machine": machine(), "agent_steps": args.agent_steps, "rates": {}}
    results["load_average_before"] = os.getloadavg()
    for env_id in args.envs:
        for variant in args.variants:
            config = LatentQConfig(variant=variant)
            run = run_config(env_id, variant, 0, 10**6, Path(args.runs))
            pixels = variant != "state"
            env = make_run_env(run, pixels)
            torch.manual_seed(0)
            agent = LatentQAgent(config, env.observation_space, env.action_space)
            buffer = new_replay_buffer(env, 10_000, run.frame_stack if pixels else 1, 0)
            generator = np.random.default_rng(0)
            every = run.update_every
            _steps(env, agent, buffer, generator, 300, False, config.batch_size, every)
            _steps(env, agent, buffer, generator, 10, True, config.batch_size, every)  # warm-up
            started = time.perf_counter()
            taken = _steps(
                env, agent, buffer, generator, args.agent_steps, True, config.batch_size, every
            )
            seconds = time.perf_counter() - started
            rate = taken / seconds
            results["rates"][f"{env_id} {variant}"] = {
                "env_steps_per_second": rate,
                "agent_steps_per_second": args.agent_steps / seconds,
                "minutes_for_30k_env_steps": 30_000 / rate / 60,
            }
            print(f"{env_id:12s} {variant:15s} {rate:8.1f} env steps/s", flush=True)
            env.close()
    results["load_average_after"] = os.getloadavg()
    return save_results(RESULTS / f"latent_q_throughput_{torch.get_num_threads()}t.json", results)


def curve(args) -> dict:
    summary = one_run(
        args.env, args.variant, args.seed, args.steps, Path(args.runs), args.resume,
        agent_options(args.agent), args.tag, eval_every=args.eval_every,
    )  # fmt: skip
    summary["machine"] = machine()
    name = f"latent_q_curve_{args.env}_{args.variant}{args.tag}_seed{args.seed}.json"
    return save_results(RESULTS / name, summary)


def _pendulum_frames(frames: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Stacked pixel observations of a uniform random policy ``uint8 [N, k·C, H, W]`` and the
    state (cos θ, sin θ, θ̇) at each newest frame ``[N, 3]``."""
    env = make_run_env(run_config("Pendulum-v1", "vae", seed, 1, Path("unused")), pixels=True)
    generator = np.random.default_rng(seed)
    observations, states, done, episode = [], [], True, 0
    while len(observations) < frames:
        if done:
            obs, _ = env.reset(seed=seed * 100_000 + episode)
            episode += 1
        angle, velocity = env.unwrapped.state
        observations.append(obs)
        states.append([np.cos(angle), np.sin(angle), velocity])
        action = generator.uniform(env.action_space.low, env.action_space.high)
        obs, _, terminated, truncated, _ = env.step(action.astype(np.float32))
        done = terminated or truncated
    env.close()
    return torch.from_numpy(np.stack(observations)), np.asarray(states)


def still(args) -> dict:
    """How much a 64×64 frame changes from one step to the next under a uniform random policy:
    the share of steps whose newest frame equals the previous one exactly, the mean number of
    pixels that change, and on CartPole the cart's and the pole tip's mean displacement per step
    in 64×64 pixels (600 screen pixels span the 4.8 m track; the pole is 1 m long)."""
    results = {"machine": machine(), "steps": args.frames, "envs": {}}
    for env_id in args.envs:
        config = run_config(env_id, "vae", 0, 1, Path("unused"))
        env = make_run_env(config, pixels=True)
        generator = np.random.default_rng(0)
        same, changed, cart, tip, taken, episode = 0, [], [], [], 0, 0
        obs, _ = env.reset(seed=episode)
        channels = 1 if config.grayscale else 3
        previous = newest_frame(obs, channels)
        while taken < args.frames:
            before = np.array(env.unwrapped.state, dtype=np.float64)
            obs, _, terminated, truncated, _ = env.step(random_action(env, generator))
            frame = newest_frame(obs, channels)
            difference = frame.astype(np.int16) != previous.astype(np.int16)
            same += not difference.any()
            changed.append(int(difference.sum()))
            if env_id.startswith("CartPole"):
                after = np.array(env.unwrapped.state, dtype=np.float64)
                pixels_per_metre = frame.shape[-1] / 4.8
                cart.append(abs(after[0] - before[0]) * pixels_per_metre)
                tip.append(abs(after[2] - before[2]) * pixels_per_metre)  # 1 m pole
            previous, taken = frame, taken + 1
            if terminated or truncated:
                episode += 1
                obs, _ = env.reset(seed=episode)
                previous = newest_frame(obs, channels)
        env.close()
        entry = {
            "share_unchanged": same / taken,
            "mean_changed_pixels": float(np.mean(changed)),
            "pixels_per_frame": int(np.prod(frame.shape)),
        }
        if cart:
            entry["cart_pixels_per_step_mean"] = float(np.mean(cart))
            entry["pole_tip_pixels_per_step_mean"] = float(np.mean(tip))
        results["envs"][env_id] = entry
        print(env_id, entry)
    return save_results(RESULTS / "latent_q_still_frames.json", results)


def _r2_linear_probe(features: np.ndarray, targets: np.ndarray, train: int) -> list[float]:
    """R² on ``features[train:]`` of least squares fitted on ``features[:train]``, per target."""
    design = np.c_[features, np.ones(len(features))]
    weights, *_ = np.linalg.lstsq(design[:train], targets[:train], rcond=None)
    residual = targets[train:] - design[train:] @ weights
    spread = targets[train:] - targets[train:].mean(0)
    return (1 - (residual**2).sum(0) / (spread**2).sum(0)).tolist()


def probe(args) -> dict:
    from latentvi.plots import plot_image_grid

    results: dict = {"machine": machine(), "load_average_before": os.getloadavg()}
    observations, states = _pendulum_frames(args.frames, 0)
    train = int(0.8 * len(observations))
    held_out = observations[train:].float() / 255
    results |= {"frames": len(observations), "updates": args.updates, "runs": {}}
    strips = []
    for center in (True, False):
        torch.manual_seed(0)
        space = make_run_env(run_config("Pendulum-v1", "vae", 0, 1, Path("unused")), True)
        agent = LatentQAgent(
            LatentQConfig(vae_center=center), space.observation_space, space.action_space
        )
        optimizer, generator = agent.optimizers["vae"], np.random.default_rng(0)
        started = time.perf_counter()
        for _ in range(args.updates):
            batch = observations[generator.integers(0, train, agent.config.batch_size)]
            loss, metrics = agent.representation_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - started
        with torch.no_grad():
            chunks = observations.split(500)
            features = torch.cat([agent.representation(c) for c in chunks]).numpy()
            q = agent.representation.vae.encode(agent.representation._centered(chunks[0]))
            reconstruction = torch.cat(
                [agent.reconstruct(c) for c in observations[train:].split(500)]
            )
        error = (reconstruction - held_out).square().sum((1, 2, 3)).mean()
        baseline = (held_out.mean(0) - held_out).square().sum((1, 2, 3)).mean()
        results["runs"]["centred" if center else "uncentred"] = {
            "seconds": seconds,
            "last_batch": {k: float(v) for k, v in metrics.items()},
            "reconstruction_error_over_mean_frame_error": float(error / baseline),
            "encoder_mean_std_across_frames": float(features[train:].std(0).mean()),
            "posterior_std_mean": float(q.stddev.mean()),
            "r2_linear_probe_cos_sin_velocity": _r2_linear_probe(features, states, train),
        }
        print(json.dumps(results["runs"], indent=1), flush=True)
        strips += [held_out[:8, -1:], reconstruction[:8, -1:]]
    plot_image_grid(
        torch.cat(strips).clamp(0, 1),
        RESULTS / "latent_q_vae_probe_reconstructions.png",
        f"newest frames | centred VAE | frames | uncentred VAE ({args.updates} updates)",
        columns=8,
    )
    results["load_average_after"] = os.getloadavg()
    return save_results(RESULTS / "latent_q_vae_probe.json", results)


class PendulumDP:
    """Finite-horizon dynamic programming for Pendulum-v1 (its equations:
    :func:`latentvi.envs.pendulum.pendulum_step`) on a periodic θ grid × a θ̇ grid, ``stages``
    decisions of ``repeat`` steps each; ``cost_to_go[k]`` has ``k`` decisions left."""

    def __init__(self, stages: int, repeat: int, thetas=251, velocities=241, torques=41):
        self.repeat = repeat
        self.thetas = np.linspace(-np.pi, np.pi, thetas, endpoint=False)
        self.velocities = np.linspace(-MAX_SPEED, MAX_SPEED, velocities)
        self.torques = np.linspace(-MAX_TORQUE, MAX_TORQUE, torques)
        theta, velocity, torque = np.meshgrid(
            self.thetas, self.velocities, self.torques, indexing="ij"
        )
        next_theta, next_velocity, cost = pendulum_step(theta, velocity, torque, repeat)
        self.cost_to_go = [np.zeros((thetas, velocities))]
        for _ in range(stages):
            after = self.interpolate(self.cost_to_go[-1], next_theta, next_velocity)
            self.cost_to_go.append((cost + after).min(-1))

    def interpolate(self, table, theta, velocity):
        """Bilinear interpolation of ``table [θ, θ̇]`` at arrays ``theta``, ``velocity``."""
        n, m = table.shape
        step_t = 2 * np.pi / n
        position = ((theta + np.pi) % (2 * np.pi)) / step_t
        i0 = np.floor(position).astype(int) % n
        wt = position - np.floor(position)
        i1 = (i0 + 1) % n
        step_v = 2 * MAX_SPEED / (m - 1)
        position = np.clip((velocity + MAX_SPEED) / step_v, 0, m - 1 - 1e-9)
        j0 = np.floor(position).astype(int)
        wv = position - j0
        return ((1 - wt) * ((1 - wv) * table[i0, j0] + wv * table[i0, j0 + 1])
                + wt * ((1 - wv) * table[i1, j0] + wv * table[i1, j0 + 1]))  # fmt: skip

    def act(self, theta: float, velocity: float, left: int) -> float:
        """The torque minimizing cost + cost-to-go with ``left`` decisions left (this one too),
        over a grid 4× finer than the DP's."""
        torques = np.linspace(-MAX_TORQUE, MAX_TORQUE, 4 * (len(self.torques) - 1) + 1)
        theta_next, velocity_next, cost = pendulum_step(
            np.full_like(torques, theta), np.full_like(torques, velocity), torques, self.repeat
        )
        total = cost + self.interpolate(self.cost_to_go[left - 1], theta_next, velocity_next)
        return float(torques[np.argmin(total)])


def optimum(args) -> dict:
    """The dynamic-programming controller's return on each seed's evaluation episodes, beside
    the final returns of the ``curve`` results found for Pendulum (see the module docstring)."""
    run = run_config("Pendulum-v1", "state", 0, 1, Path("unused"))
    env = make_run_env(run, pixels=False)
    # one DP stage per agent step of an episode (the evaluation episodes run to the time limit)
    stages = env.spec.max_episode_steps // run.action_repeat
    started = time.perf_counter()
    dp = PendulumDP(stages=stages, repeat=run.action_repeat)
    dp_seconds = time.perf_counter() - started
    per_seed = {}
    for seed in range(args.seeds):
        returns = []
        for episode in range(run.eval_episodes):  # the episodes evaluate_policy runs
            env.reset(seed=mixed_seed(seed, EVAL_SEED, episode))
            total, done, left = 0.0, False, stages
            while not done:
                theta, velocity = env.unwrapped.state
                action = np.array([dp.act(theta, velocity, left)], np.float32)
                _, reward, terminated, truncated, _ = env.step(action)
                total, left, done = total + float(reward), left - 1, terminated or truncated
            returns.append(total)
        agents = {}
        for path in sorted(RESULTS.glob(f"latent_q_curve_Pendulum-v1_*_seed{seed}.json")):
            stem = path.stem.removeprefix("latent_q_curve_Pendulum-v1_").rsplit("_seed", 1)[0]
            agents[stem] = json.loads(path.read_text())["final_return_mean"]
        per_seed[str(seed)] = {"dp_return_mean": float(np.mean(returns)), "dp_returns": returns,
                               "agents_final_return": agents}  # fmt: skip
    env.close()
    rows = {}
    for stem in sorted({s for r in per_seed.values() for s in r["agents_final_return"]}):
        gaps = [r["dp_return_mean"] - r["agents_final_return"][stem]
                for r in per_seed.values() if stem in r["agents_final_return"]]  # fmt: skip
        rows[stem] = {"mean_gap_to_dp": float(np.mean(gaps)), "seeds": len(gaps)}
    results = {
        "machine": machine(),
        "grid": {
            "theta": len(dp.thetas),
            "velocity": len(dp.velocities),
            "torques": len(dp.torques),
            "stages": len(dp.cost_to_go) - 1,
        },
        "dp_seconds": dp_seconds,
        "dp_return_mean_over_seeds": float(
            np.mean([r["dp_return_mean"] for r in per_seed.values()])
        ),
        "per_seed": per_seed,
        "gap_to_dp_per_result": rows,
    }
    return save_results(RESULTS / "latent_q_pendulum_optimum.json", results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "mode", choices=("full", "throughput", "curve", "probe", "table", "still", "optimum")
    )
    parser.add_argument("--envs", nargs="+", default=list(ENVS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--env", default="Pendulum-v1", help="curve, table: the environment")
    parser.add_argument("--variant", default="vae", choices=VARIANTS, help="curve: the variant")
    parser.add_argument("--seed", type=int, default=0, help="curve: the seed")
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=2500)
    parser.add_argument("--episodes", type=int, default=100, help="random-policy episodes")
    parser.add_argument("--agent-steps", type=int, default=300, help="throughput: timed steps")
    parser.add_argument("--frames", type=int, default=5000, help="probe: observations")
    parser.add_argument("--updates", type=int, default=1000, help="probe: VAE updates")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default="runs/bench-latent-q")
    parser.add_argument("--resume", action="store_true", help="continue runs found in --runs")
    parser.add_argument(
        "--agent", action="append", default=[], metavar="NAME=VALUE",
        help="full, curve: a LatentQConfig option for every run (repeatable), e.g. critic_norm=none",
    )  # fmt: skip
    parser.add_argument(
        "--rows", nargs="+", default=[], metavar="NAME=RESULTS",
        help="table: rows from other runs, e.g. vae=vae-finetune pixels=pixels-critic-norm "
        "(RESULTS: the variant and tag in the curve results' names; checks use state, pixels, vae)",
    )  # fmt: skip
    parser.add_argument(
        "--tag", default="",
        help="full, curve, table: suffix of the run folders and result names, e.g. --tag=-critic-norm",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modes = {"full": full, "throughput": throughput, "curve": curve, "probe": probe, "table": table,
             "still": still, "optimum": optimum}  # fmt: skip
    modes[args.mode](args)
    print(json.dumps({"done": args.mode}))


if __name__ == "__main__":
    main()
