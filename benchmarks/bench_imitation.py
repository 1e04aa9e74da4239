"""Multimodal imitation: every policy on both tasks, 3 seeds × 200 fresh episodes each.

The same demonstrations (400 scripted episodes, action noise 0.1) train every policy of a task;
each policy is trained once per seed with the library defaults (6000 Adam steps, batch 256, ReLU
64-64 networks, 1-D latent, β = 2) except BC, which needs fewer steps (3000) to converge. Every
seed is evaluated on the same 200 fresh episodes (start states unseen in the demonstrations).
Reported: success, collision, timeout and mode shares, mean ± std over seeds, and the training
time per policy (wall clock, one thread). Writes ``results/imitation.json`` and one trajectory
figure per task (a panel per policy, first seed).

    python benchmarks/bench_imitation.py [--seeds 3] [--episodes 200] [--threads 1]
    python benchmarks/bench_imitation.py --name imitation-wide \
        --policies "chunk-cvae k=8 wide (128x128),chunk-cvae k=8 wide + ensembling"
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from latentvi.envs.demos import DemoConfig, WaypointDemonstrator, collect_demonstrations
from latentvi.envs.tasks import make_task, rollout, task_spec
from latentvi.jobs.imitation import describe_demonstrations, run_seeds
from latentvi.plots import plot_trajectories
from latentvi.rl.imitation import PolicyConfig
from results_io import save_results

RESULTS = Path(__file__).parent / "results"
POLICIES = {
    "bc (MSE)": PolicyConfig(policy="bc", steps=3000),
    "cvae (ε held)": PolicyConfig(policy="cvae"),
    "cvae (z re-drawn each step)": PolicyConfig(policy="cvae", resample_every=1),
    "chunk-cvae k=8": PolicyConfig(policy="chunk-cvae"),
    "chunk-cvae k=8 + ensembling": PolicyConfig(
        policy="chunk-cvae", temporal_ensemble=True, ensemble_decay=0.01
    ),
    "lmp W=8": PolicyConfig(policy="lmp"),
    # An ablation, run separately (--name imitation-wide): wider networks for the chunk CVAE.
    "chunk-cvae k=8 wide (128x128)": PolicyConfig(policy="chunk-cvae", hidden=(128, 128)),
    "chunk-cvae k=8 wide + ensembling": PolicyConfig(
        policy="chunk-cvae", hidden=(128, 128), temporal_ensemble=True, ensemble_decay=0.01
    ),
}
DEFAULT_POLICIES = list(POLICIES)[:6]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tasks", default="obstacle,passages")
    parser.add_argument(
        "--policies", default=",".join(DEFAULT_POLICIES), help="comma-separated names"
    )
    parser.add_argument("--name", default="imitation", help="stem of the JSON and figure names")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    demos = DemoConfig()
    results = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{arguments.threads} thread(s)",
        "episodes_per_seed": arguments.episodes,
        "seeds": arguments.seeds,
        "demos": vars(demos),
        "tasks": {},
    }
    started = time.perf_counter()
    for task in arguments.tasks.split(","):
        demonstrations = collect_demonstrations(task, demos)
        names = task_spec(task).mode_names
        env = make_task(task)
        demonstrator = WaypointDemonstrator(task, demos.demo_noise, demos.demo_seed)
        panels = {"demonstrations": [rollout(env, demonstrator, 7_000_000 + i) for i in range(100)]}
        entry = {"demonstrations": describe_demonstrations(demonstrations, names), "policies": {}}
        for name in arguments.policies.split(","):
            policy = POLICIES[name]
            summary, per_seed, runs = run_seeds(
                task, demonstrations, policy, arguments.seeds, arguments.episodes
            )
            entry["policies"][name] = {
                "config": vars(policy),
                "summary": summary,
                "per_seed": per_seed,
            }
            panels[name] = runs[:100]
            s = summary
            print(
                f"{task:9s} {name:30s} success {s['success']['mean']:.3f}±{s['success']['std']:.3f}"
                f" collision {s['collision']['mean']:.3f}±{s['collision']['std']:.3f} modes "
                + " ".join(f"{m} {v['mean']:.2f}±{v['std']:.2f}" for m, v in s["modes"].items())
                + f" train {s['train_seconds']['mean']:.1f}s",
                flush=True,
            )
        figure = plot_trajectories(
            panels,
            task_spec(task),
            RESULTS / f"{arguments.name}-{task}.png",
            title=f"{task}: 100 episodes per panel (seed 0); colour = mode, red = collision, "
            "grey = timeout",
        )
        entry["figure"] = str(figure.relative_to(Path(__file__).parent))
        results["tasks"][task] = entry
    results["total_seconds"] = time.perf_counter() - started
    results["load_average_at_end"] = os.getloadavg()
    save_results(RESULTS / f"{arguments.name}.json", results)


if __name__ == "__main__":
    main()
