"""Our SAC and DQN against Stable-Baselines3 at rl-zoo's settings (issue 24).

Both libraries train from scratch on the true state, at the settings of rl-baselines3-zoo
(hyperparams/sac.yml, dqn.yml), which our ``latent-q`` command reaches with ``--preset sb3``:

* ``sac``: Pendulum-v1, ``--steps`` 30,000 environment steps. SB3: ``SAC("MlpPolicy", lr=1e-3)``,
  every other argument SB3's default (buffer 1e6, 100 random steps first, batch 256, τ 0.005,
  γ 0.99, one update per step, α learned from 1 towards −|A|, 256-256 networks). Ours:
  ``latentvi rl latent-q --env Pendulum-v1 --variant state --preset sb3``.
* ``dqn``: CartPole-v1, 50,000 steps (rl-zoo's n_timesteps). SB3: ``DQN`` with rl-zoo's lr 2.3e-3,
  batch 64, buffer 1e5, 1000 random steps, 128 updates every 256 steps, target copied every 10
  steps, ε from 1 to 0.04 over the first 16% of the steps, 256-256. Ours: the same command with
  ``--env CartPole-v1`` (the preset's CartPole entry; our DQN is double DQN).

Evaluation is the same function for both: 100 episodes of the deterministic policy (SB3's
``predict(deterministic=True)``; our ``act(explore=False)``) on a fresh ``gym.make(env)`` with
reset seeds 10,000 + i, the mean undiscounted return. Each (algorithm, library, seed) writes
``benchmarks/results/sb3_ALGO_LIB_seedN.json`` as it finishes (training wall and CPU seconds,
gradient updates and updates per second, the 100 returns); a rerun skips the files that exist,
so an interrupted run goes on where it stopped. Seeds run one after the other, SB3 then ours,
in one process on one thread (``torch.set_num_threads(1)``).

    python benchmarks/bench_sb3.py sac --seeds 0 1 2 3 4
    python benchmarks/bench_sb3.py dqn --seeds 0 1 2 3 4
    python benchmarks/bench_sb3.py table            # -> benchmarks/results/sb3_summary.json

Stable-Baselines3 is a benchmark-only dependency (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from latentvi.jobs.latent_q import RunConfig, run_latent_q
from latentvi.presets import resolve
from latentvi.rl.latent_q import LatentQAgent, LatentQConfig
from latentvi.train.checkpoint import load_checkpoint

RESULTS = Path(__file__).parent / "results"
EVAL_RESET_SEED = 10_000
LIBRARIES = ("sb3", "ours")
SETTINGS = {
    "sac": {"env": "Pendulum-v1", "steps": 30_000},
    "dqn": {"env": "CartPole-v1", "steps": 50_000},
}
# rl-zoo's hyperparams/dqn.yml, CartPole-v1 (the arguments SB3 is given; the rest are its defaults)
SB3_DQN = {
    "learning_rate": 2.3e-3,
    "batch_size": 64,
    "buffer_size": 100_000,
    "learning_starts": 1000,
    "gamma": 0.99,
    "target_update_interval": 10,
    "train_freq": 256,
    "gradient_steps": 128,
    "exploration_fraction": 0.16,
    "exploration_final_eps": 0.04,
    "policy_kwargs": {"net_arch": [256, 256]},
}
SB3_SAC = {"learning_rate": 1e-3}  # rl-zoo's hyperparams/sac.yml, Pendulum-v1


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            platform.processor(),
        )
    except OSError:
        model = platform.processor()
    return {"cpu": model, "torch": torch.__version__, "threads": torch.get_num_threads()}


def evaluate(act, env_id: str, episodes: int) -> list[float]:
    """Returns of ``episodes`` episodes of ``act(obs)`` with reset seeds 10,000 + i."""
    env = gym.make(env_id)
    returns = []
    for index in range(episodes):
        obs, _ = env.reset(seed=EVAL_RESET_SEED + index)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def train_sb3(algo: str, seed: int, steps: int) -> tuple[dict, object]:
    import stable_baselines3 as sb3

    env_id = SETTINGS[algo]["env"]
    env = gym.make(env_id)
    if algo == "sac":
        model = sb3.SAC("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **SB3_SAC)
    else:
        model = sb3.DQN("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **SB3_DQN)
    model.learn(total_timesteps=steps)
    info = {"updates": int(model._n_updates), "version": sb3.__version__}

    def act(obs):
        action, _ = model.predict(obs, deterministic=True)
        return int(action) if algo == "dqn" else action

    return info, act


def train_ours(algo: str, seed: int, steps: int, runs: Path) -> tuple[dict, object]:
    env_id = SETTINGS[algo]["env"]
    out = runs / f"{algo}-ours-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)  # an interrupted run starts again
    overrides = {
        "env": env_id, "variant": "state", "seed": seed, "steps": steps, "out": str(out),
        "eval_every": steps, "eval_episodes": 1, "checkpoint_every": steps, "progress": False,
        "tensorboard": False, "log_every": steps,
    }  # fmt: skip
    run, agent_config = resolve("latent-q", "sb3", (RunConfig, LatentQConfig), overrides)
    run_latent_q(agent_config, run, preset="sb3")
    env = gym.make(env_id)
    agent = LatentQAgent(agent_config, env.observation_space, env.action_space)
    loaded = load_checkpoint(out, agent, restore_rng=False)
    env.close()
    agent.eval()
    info = {"updates": int(loaded["counters"]["updates"]), "run": str(out)}
    return info, lambda obs: agent.act(obs, explore=False)


def one(algo: str, library: str, seed: int, steps: int, episodes: int, runs: Path) -> dict:
    load_before = os.getloadavg()
    started, cpu_started = time.perf_counter(), time.process_time()
    if library == "sb3":
        info, act = train_sb3(algo, seed, steps)
    else:
        info, act = train_ours(algo, seed, steps, runs)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    with torch.no_grad():
        returns = evaluate(act, SETTINGS[algo]["env"], episodes)
    return {
        "algo": algo,
        "library": library,
        "env": SETTINGS[algo]["env"],
        "seed": seed,
        "env_steps": steps,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "returns": returns,
        "eval_reset_seeds": f"{EVAL_RESET_SEED} + i, i < {episodes}",
        "train_wall_seconds": wall,
        "train_cpu_seconds": cpu,
        "updates_per_second": info["updates"] / wall,
        "updates_per_cpu_second": info["updates"] / cpu,
        **info,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
    }


def result_path(algo: str, library: str, seed: int, folder: Path = RESULTS) -> Path:
    return folder / f"sb3_{algo}_{library}_seed{seed}.json"


def run(args) -> None:
    for seed in args.seeds:
        for library in args.libraries:
            path = result_path(args.algo, library, seed, Path(args.results))
            if path.exists():
                print(f"{path.name}: done, skipped")
                continue
            steps = args.steps or SETTINGS[args.algo]["steps"]
            result = one(args.algo, library, seed, steps, args.episodes, Path(args.runs))
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(result, indent=2) + "\n")
            temporary.replace(path)
            print(
                f"{args.algo} {library} seed {seed}: return {result['return_mean']:.1f}, "
                f"{result['train_wall_seconds']:.0f} s, {result['updates_per_second']:.0f} "
                "updates/s",
                flush=True,
            )


def _spread(values: list[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def _cell(value: float | None, form: str) -> str:
    return "–" if value is None else format(value, form)


def table(args) -> None:
    """One markdown table per algorithm (returns, updates per wall and per CPU second, their
    ratios ours / SB3 per seed) and ``sb3_summary.json``."""
    summary = {}
    for algo in SETTINGS:
        rows = {}
        for library in LIBRARIES:
            found = sorted(RESULTS.glob(f"sb3_{algo}_{library}_seed*.json"))
            rows[library] = [json.loads(p.read_text()) for p in found]
        if not any(rows.values()):
            continue
        by_seed = {lib: {r["seed"]: r for r in runs} for lib, runs in rows.items()}
        seeds = sorted({seed for runs in by_seed.values() for seed in runs})
        print(f"\n{algo} ({SETTINGS[algo]['env']})\n")
        print(
            "| seed | SB3 return | ours return | SB3 updates/s | ours updates/s | ratio "
            "| SB3 updates/CPU s | ours updates/CPU s | ratio |"
        )
        print("|---" * 9 + "|")
        ratios = {"updates_per_second": [], "updates_per_cpu_second": []}
        for seed in seeds:
            ours, theirs = by_seed["ours"].get(seed), by_seed["sb3"].get(seed)
            cells = [str(seed), _cell(theirs and theirs["return_mean"], ".1f"),
                     _cell(ours and ours["return_mean"], ".1f")]  # fmt: skip
            for key, values in ratios.items():
                ratio = ours[key] / theirs[key] if ours and theirs else None
                if ratio is not None:
                    values.append(ratio)
                cells += [_cell(theirs and theirs[key], ".0f"), _cell(ours and ours[key], ".0f"),
                          _cell(ratio, ".2f")]  # fmt: skip
            print("| " + " | ".join(cells) + " |")
        entry = {}
        for lib in LIBRARIES:
            returns = [r["return_mean"] for r in rows[lib]]
            entry[lib] = {
                "seeds": [r["seed"] for r in rows[lib]],
                "returns": returns,
                "return": _spread(returns),
                "updates_per_second": _spread([r["updates_per_second"] for r in rows[lib]]),
                "updates_per_cpu_second": _spread([r["updates_per_cpu_second"] for r in rows[lib]]),
                "train_wall_seconds": _spread([r["train_wall_seconds"] for r in rows[lib]]),
                "updates": [r["updates"] for r in rows[lib]],
                "load_average_1min": [r["load_average_before"][0] for r in rows[lib]],
            }
        for key, values in ratios.items():
            entry[f"{key}_ratio_median"] = statistics.median(values) if values else None
        cells = ["mean ± std", entry["sb3"]["return"], entry["ours"]["return"]]
        for key in ratios:
            cells += [entry["sb3"][key], entry["ours"][key],
                      "median " + _cell(entry[f"{key}_ratio_median"], ".2f")]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
        summary[algo] = entry
    (RESULTS / "sb3_summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for algo in SETTINGS:
        p = sub.add_parser(algo, help=f"{SETTINGS[algo]['env']}, both libraries")
        p.set_defaults(algo=algo)
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
        p.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
        p.add_argument("--steps", type=int, default=None, help="default: the algorithm's budget")
        p.add_argument("--episodes", type=int, default=100, help="evaluation episodes")
        p.add_argument("--runs", default="runs/bench-sb3", help="our run folders")
        p.add_argument("--results", default=str(RESULTS), help="folder of the result files")
    sub.add_parser("table", help="gather the result files into a table and sb3_summary.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "table":
        table(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
