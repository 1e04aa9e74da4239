"""SOLAR against PlaNet and E2C on pixel 2-D navigation (issue 21): success against env steps.

    python benchmarks/bench_solar.py run [--agents solar,planet,e2c] [--seeds 0,1,2]
        [--steps 5000] [--every 1000] [--episodes 5] [--preset default] [--runs runs/bench-solar]
        [--budgets 500,1000,2000,5000]
    python benchmarks/bench_solar.py table [--agents ...]

The task is ``latentvi/PointNav-v0`` (:mod:`latentvi.envs.navigation`: SOLAR's 2-D navigation,
fixed start, fixed goal, 50-step episodes, cost = squared distance to the goal + 10⁻³‖u‖²). Each
(agent, seed) trains through the command line, ``latentvi world-model train --agent AGENT --env
latentvi/PointNav-v0 --preset PRESET --seed SEED``, and is scored at environment steps ``every``,
``2·every`` ... ``steps``:

* agents of the shared environment loop (planet, dreamer, slac; solar when it is one): one run of
  ``steps`` environment steps with a checkpoint every ``every`` steps, all kept; each checkpoint
  is then loaded (``latentvi.jobs.world_model.load_run``) and plays ``episodes`` episodes without
  exploration on the fixed reset seeds of :func:`latentvi.train.env_loop.evaluation_returns`
  (the loop's own evaluation seeds, under their own random state), recording the return, the
  final distance and success (the point ends the episode in the goal region);
* e2c (learns from random data, then controls): one run per ``--budgets`` entry, its data that
  many environment steps of uniform random episodes from the fixed start
  (:mod:`latentvi.jobs.e2c_nav`, options :data:`E2C_OPTIONS` over the preset); its summary's
  success rate and return over ``episodes`` control episodes;
* an agent whose run folder is neither (e.g. a solar job of its own): its ``curve.csv`` returns,
  and ``success_rate`` where its curve or summary has one.

An agent that ``world-model train`` does not know (solar before its branch is merged) is skipped
with a message. Resumable: a finished (agent, seed) has its result file
``benchmarks/results/solar_nav_AGENT_seedS.json`` and is skipped; an unfinished loop run goes on
with ``--resume``, checkpoints already scored are kept in the run folder's ``bench_scores.json``.
``table`` prints the markdown table (success rate and return, mean ± standard deviation over
seeds, at each step count) and draws ``benchmarks/results/solar_nav.png`` (success against
environment steps, mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from latentvi.envs.navigation import ENV_ID
from latentvi.jobs.world_model import load_run, make_run_env
from latentvi.train.env_loop import evaluation_returns
from latentvi.train.rng import mixed_seed
from results_io import save_results

RESULTS = Path(__file__).parent / "results"
SCORE_SEED = 4_000_000
# E2C on the navigation task, over its default preset: 2,500 updates (not 24,000: 80 s a run on
# one core), a 2-D latent (the task's state), 10-step plans of 8 iLQR iterations (not the
# pendulum's 80-step swing-up plans: the goal is three moves away)
E2C_OPTIONS = ("--steps", "2500", "--latent-dim", "2", "--horizon", "10", "--iterations", "8")


def result_path(agent: str, seed: int) -> Path:
    """Where the result of (agent, seed) is written: under --results (default: RESULTS)."""
    return RESULTS / f"solar_nav_{agent}_seed{seed}.json"


def train(agent: str, seed: int, out: Path, extra: list[str], resume: bool) -> bool:
    """``latentvi world-model train`` in a child process; False when the agent is unknown."""
    command = [
        sys.executable, "-m", "latentvi.cli", "world-model", "train", "--agent", agent,
        "--env", ENV_ID, "--seed", str(seed), "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip
    if resume:
        command.append("--resume")
    print("$", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == 2 and "invalid choice" in done.stderr and "--agent" in done.stderr:
        print(f"skipping {agent}: `world-model train` has no agent {agent!r} on this branch")
        return False
    if done.returncode != 0:
        raise RuntimeError(f"{agent} seed {seed} failed:\n{done.stderr[-3000:]}")
    return True


@torch.no_grad()
def score_checkpoint(run_dir: Path, checkpoint: Path, episodes: int, seed: int) -> dict:
    """Success rate, return and final distance of a checkpoint's agent (module docstring)."""
    _, agent, run, env_steps = load_run(run_dir, checkpoint=checkpoint)
    env = make_run_env(run)
    low, high = env.action_space.low, env.action_space.high
    finals: list[dict] = []

    def play(reset_seed: int) -> float:
        obs, info = env.reset(seed=reset_seed)
        agent.reset()
        total, done = 0.0, False
        while not done:
            action = agent.act(obs, explore=False)
            obs, reward, terminated, truncated, info = env.step(
                low + (action + 1) * (high - low) / 2
            )
            total += float(reward)
            done = terminated or truncated
        finals.append(info)
        return total

    returns = evaluation_returns(play, episodes, run.seed, mixed_seed(run.seed, SCORE_SEED))
    env.close()
    return {
        "env_step": env_steps,
        "success_rate": float(np.mean([f["success"] for f in finals])),
        "return_mean": float(np.mean(returns)),
        "final_distance_mean": float(np.mean([f["distance"] for f in finals])),
    }


def run_loop_agent(agent: str, seed: int, args) -> list[dict] | None:
    out = Path(args.runs) / f"{agent}-seed{seed}"
    extra = ["--preset", args.preset, "--steps", str(args.steps), "--checkpoint-every",
             str(args.every), "--keep-checkpoints", "1000", "--eval-every", str(args.steps),
             "--eval-episodes", "1", "--no-tensorboard"]  # fmt: skip
    if not (out / "summary.json").exists():
        resume = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
        if not train(agent, seed, out, extra, resume):
            return None
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    try:
        load_run(out, checkpoint=checkpoints[-1])
    except ValueError as error:  # not a world-model run: its own curve
        print(f"{agent}: scoring from its own curve ({error})")
        return own_curve(out)
    scores_path = out / "bench_scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.exists() else {}
    for checkpoint in checkpoints:
        if checkpoint.name not in scores:
            scores[checkpoint.name] = score_checkpoint(out, checkpoint, args.episodes, seed)
            print(agent, seed, scores[checkpoint.name], flush=True)
            scores_path.write_text(json.dumps(scores, indent=2) + "\n")
    return sorted(scores.values(), key=lambda row: row["env_step"])


def own_curve(out: Path) -> list[dict]:
    import csv

    with open(out / "curve.csv") as handle:
        rows = list(csv.DictReader(handle))
    return [
        {
            "env_step": int(float(row["env_step"])),
            "return_mean": float(row["return_mean"]),
            "success_rate": float(row["success_rate"]) if row.get("success_rate") else None,
        }
        for row in rows
    ]


def run_e2c(seed: int, args) -> list[dict] | None:
    rows = []
    for budget in (int(b) for b in args.budgets.split(",")):
        out = Path(args.runs) / f"e2c-seed{seed}-n{budget}"
        if not (out / "summary.json").exists():
            extra = ["--preset", args.preset, "--transitions", str(budget), "--trials",
                     str(args.episodes), *E2C_OPTIONS]  # fmt: skip
            resume = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
            if not train("e2c", seed, out, extra, resume):
                return None
        summary = json.loads((out / "summary.json").read_text())
        row = {key: summary.get(key) for key in ("success_rate", "return_mean")}
        row["final_distance_mean"] = summary.get("final_distance_mean")
        rows.append({"env_step": budget, **row, "train_seconds": summary.get("train_seconds")})
        print("e2c", seed, rows[-1], flush=True)
    return rows


def command_run(args) -> None:
    global RESULTS
    RESULTS = Path(args.results)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    for agent in args.agents.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            path = result_path(agent, seed)
            if path.exists():
                print(f"{path.name} exists: skipping {agent} seed {seed}")
                continue
            rows = run_e2c(seed, args) if agent == "e2c" else run_loop_agent(agent, seed, args)
            if rows is None:
                break  # unknown agent: no other seed will know it either
            settings = {k: getattr(args, k) for k in ("steps", "every", "episodes", "preset")}
            save_results(path, {"agent": agent, "seed": seed, "env": ENV_ID, **settings,
                                "curve": rows})  # fmt: skip


def collect(agents: list[str]) -> dict[str, dict[int, dict[int, dict]]]:
    """agent -> env step -> seed -> row, from the result files."""
    table: dict[str, dict[int, dict[int, dict]]] = {}
    for agent in agents:
        for path in sorted(RESULTS.glob(f"solar_nav_{agent}_seed*.json")):
            result = json.loads(path.read_text())
            for row in result["curve"]:
                table.setdefault(agent, {}).setdefault(row["env_step"], {})[result["seed"]] = row
    return table


def _cell(rows: dict[int, dict], key: str, digits: int) -> str:
    values = [row[key] for row in rows.values() if row.get(key) is not None]
    if not values:
        return "–"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def command_table(args) -> None:
    global RESULTS
    RESULTS = Path(args.results)
    table = collect(args.agents.split(","))
    print("| agent | env steps | seeds | success rate | return | final distance |")
    print("|---|---:|---:|---:|---:|---:|")
    for agent, steps in table.items():
        for step, rows in sorted(steps.items()):
            print(f"| {agent} | {step} | {len(rows)} | {_cell(rows, 'success_rate', 2)} | "
                  f"{_cell(rows, 'return_mean', 0)} | {_cell(rows, 'final_distance_mean', 2)} |")  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for agent, steps in table.items():
        x = sorted(steps)
        for axis, key in zip(axes, ("success_rate", "return_mean"), strict=True):
            values = [[r[key] for r in steps[s].values() if r.get(key) is not None] for s in x]
            kept = [(s, v) for s, v in zip(x, values, strict=True) if v]
            if not kept:
                continue
            xs = np.array([s for s, _ in kept])
            mean = np.array([np.mean(v) for _, v in kept])
            spread = np.array([np.std(v) for _, v in kept])
            axis.plot(xs, mean, marker="o", label=f"{agent} ({len(kept[0][1])} seeds)")
            axis.fill_between(xs, mean - spread, mean + spread, alpha=0.2)
    for axis, label in zip(axes, ("success rate", "return"), strict=True):
        axis.set_xlabel("environment steps")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylim(-0.05, 1.05)
    axes[0].legend()
    figure.suptitle(f"{ENV_ID} from 32×32 pixels: mean ± std over seeds")
    figure.tight_layout()
    figure.savefig(RESULTS / "solar_nav.png", dpi=120)
    print(f"figure: {RESULTS / 'solar_nav.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and score every (agent, seed)")
    run.add_argument("--agents", default="solar,planet,e2c")
    run.add_argument("--seeds", default="0,1,2")
    run.add_argument("--steps", type=int, default=5000, help="environment steps per run")
    run.add_argument("--every", type=int, default=1000, help="environment steps between scores")
    run.add_argument("--episodes", type=int, default=5, help="episodes per score")
    run.add_argument("--preset", default="default")
    run.add_argument(
        "--budgets", default="500,1000,2000,5000", help="e2c: environment steps of data per run"
    )
    run.add_argument("--runs", default="runs/bench-solar")
    run.add_argument("--threads", type=int, default=1)
    table = commands.add_parser("table", help="markdown table and figure of the result files")
    table.add_argument("--agents", default="solar,planet,e2c")
    for command in (run, table):
        command.add_argument("--results", default=str(RESULTS), help="folder of the result files")
    args = parser.parse_args()
    command_run(args) if args.command == "run" else command_table(args)


if __name__ == "__main__":
    main()
