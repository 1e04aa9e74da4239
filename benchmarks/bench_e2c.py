"""E2C swing-up and balance on pixel Pendulum-v1 from the bottom: success rate and training time.

Trains E2C (:mod:`latentvi.experiments.e2c`, preset ``--preset``, any field of ``E2CRunConfig`` /
``E2CConfig`` overridable as ``--set name=value``) on random transitions, then runs ``trials``
latent-iLQR MPC episodes from the hanging-down state. Success: |θ| < success_angle rad at each of
the last success_steps agent steps (see the summary's ``success_definition``). Writes
``benchmarks/results/e2c_pendulum[_TAG].json`` and copies the three figures next to it.

    python benchmarks/bench_e2c.py [--preset default] [--threads 2] [--set steps=3000 ...]
    python benchmarks/bench_e2c.py --evaluate RUN [--set horizon=60 ...]   # control only
    python benchmarks/bench_e2c.py --oracle     # the same MPC on the true state, no model
    python benchmarks/bench_e2c.py --probe RUN [RUN ...]   # each model's view of the upright goal
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from latentvi.experiments.e2c import evaluate_run, goal_stability, load_model, preset, run_e2c
from results_io import save_results

RESULTS = Path(__file__).parent / "results"


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def oracle(run, state_cost: float) -> dict:
    """The same MPC on the true state (cos θ, sin θ, θ̇) of the pendulum; starts drawn as the
    model's trials are (:func:`start_states`), from seed 0."""
    from latentvi.experiments.e2c import start_states, successes, swing_up_controller
    from latentvi.rl.pendulum import MAX_TORQUE, angle_of, step_features

    def pendulum(x, u):  # u = torque / MAX_TORQUE, as the model's actions are
        return step_features(x, MAX_TORQUE * u, repeat=run.action_repeat)

    theta, velocity = (torch.tensor(v) for v in start_states(run, 0))
    x = torch.stack([theta.cos(), theta.sin(), velocity], -1).float()
    controller = swing_up_controller(run, pendulum, torch.tensor([1.0, 0.0, 0.0]), state_cost)
    angles = []
    for _ in range(run.episode_steps):
        x = pendulum(x, controller(x))
        angles.append(angle_of(x).abs())
    angles = torch.stack(angles, 1)
    return {
        "state_cost": state_cost,
        "success_rate": float(successes(angles.numpy(), run).mean()),
        "final_abs_angle_mean": angles[:, -1].mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--tag", default="")
    parser.add_argument("--keep", default=None, help="run folder to keep (default: a temp folder)")
    parser.add_argument(
        "--evaluate",
        default=None,
        metavar="RUN",
        help="no training: control again with the model of RUN (a --keep folder), e.g. with "
        "other control options in --set; model options must match the run's",
    )
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="no model: the same MPC on the true pendulum state, stage cost Q = I and = the "
        "run's state_cost · I (→ results/e2c_oracle.json)",
    )
    parser.add_argument(
        "--probe",
        nargs="+",
        metavar="RUN",
        help="no control: each RUN's drift and Jacobian eigenvalues at the upright goal's latent "
        "(→ results/e2c_goal_probe.json); model options must match the runs'",
    )
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    overrides = {}
    for item in arguments.set:
        name, _, value = item.partition("=")
        overrides[name] = parse_value(value)
    run, model = preset(arguments.preset, **overrides)
    if arguments.probe:
        rows = [
            {"run": Path(folder).name, **goal_stability(load_model(folder, run, model), run)}
            for folder in arguments.probe
        ]
        save_results(RESULTS / "e2c_goal_probe.json", {"overrides": overrides, "runs": rows})
        return
    if arguments.oracle:
        rows = [oracle(run, 1.0), oracle(run, run.state_cost)]
        save_results(RESULTS / "e2c_oracle.json", {"trials": run.trials, "runs": rows})
        return
    load_before = os.getloadavg()
    folder = arguments.keep or tempfile.mkdtemp(prefix="bench-e2c-")
    if arguments.evaluate:
        summary = evaluate_run(arguments.evaluate, run, model, folder)
    else:
        summary = run_e2c(run, folder, model)
    suffix = f"_{arguments.tag}" if arguments.tag else ""
    figures = []
    for path in summary.pop("figures"):
        target = RESULTS / f"e2c-pendulum{suffix.replace('_', '-')}-{Path(path).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        figures.append(str(target.relative_to(RESULTS.parent.parent)))
    if arguments.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {arguments.threads} thread(s)",
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "preset": arguments.preset,
        "overrides": overrides,
        **summary,
        "figures": figures,
    }
    save_results(RESULTS / f"e2c_pendulum{suffix}.json", results)


if __name__ == "__main__":
    main()
