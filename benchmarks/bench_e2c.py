"""E2C swing-up and balance on pixel Pendulum-v1 from the bottom: success rate and training time.

Trains E2C (:mod:`latentvi.jobs.e2c`, preset ``--preset`` of :mod:`latentvi.presets`, any field
of ``E2CRunConfig`` / ``E2CConfig`` overridable as ``--set name=value``) on random transitions,
then runs ``trials``
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
import dataclasses
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from latentvi.jobs.e2c import evaluate_run, load_model, preset, run_e2c, start_states, successes
from latentvi.rl.e2c import (
    goal_stability,
    latent_controller,
    swing_up_controller,
    value_controller,
)
from results_io import save_results

RESULTS = Path(__file__).parent / "results"


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def oracle(run, state_cost: float, gravity: float | None = None) -> dict:
    """The run's controller (MPC or value) on the true state (cos θ, sin θ, θ̇) of the pendulum;
    starts drawn as the model's trials are (:func:`start_states`), from seed 0. With ``gravity``,
    the planner's model has that g where the pendulum it controls has Pendulum-v1's 10: a known
    model error (10 → 6 moves the upright eigenvalue per agent step from 1.47 to 1.35)."""
    from latentvi.envs.pendulum import GRAVITY, MAX_SPEED, angle_of, step_normalized

    model_gravity = GRAVITY if gravity is None else gravity

    def pendulum(x, u, g=GRAVITY):  # u = torque / MAX_TORQUE, as the model's actions are
        return step_normalized(x, u, repeat=run.action_repeat, gravity=g)

    def model(x, u):
        return pendulum(x, u, model_gravity)

    theta, velocity = (torch.tensor(v) for v in start_states(run, 0))
    x = torch.stack([theta.cos(), theta.sin(), velocity], -1).float()
    goal = torch.tensor([1.0, 0.0, 0.0])
    if run.controller == "value":  # the grid spans the reachable features (cos, sin, ±8)
        corners = torch.tensor([[-1.0, -1.0, -MAX_SPEED], [1.0, 1.0, MAX_SPEED]])
        costs = dataclasses.replace(run, state_cost=state_cost)
        controller = value_controller(costs, model, goal, corners)
    else:
        controller = swing_up_controller(run, model, goal, state_cost)
    angles = []
    for _ in range(run.episode_steps):
        x = pendulum(x, controller(x))
        angles.append(angle_of(x).abs())
    angles = torch.stack(angles, 1)
    return {
        "controller": run.controller,
        "state_cost": state_cost,
        "model_gravity": model_gravity,
        "success_rate": float(successes(angles.numpy(), run).mean()),
        "reached_upright_rate": float((angles < run.success_angle).any(1).float().mean()),
        "final_abs_angle_mean": angles[:, -1].mean().item(),
    }


def estimator_controller(spec: str):
    """``make_controller`` for :func:`evaluate_run`: the run's controller fed a filtered latent.

    ``blend:α`` — ``ẑ_t = α μ(x_t) + (1 − α) f(ẑ_{t−1}, u_{t−1})``, the encoding fused with the
    model's prediction (a fixed-gain observer); ``offset:β`` — offset-free MPC (Muske & Badgwell
    2002): the model's one-step residual ``d = μ(x_t) − f(μ(x_{t−1}), u_{t−1})`` is tracked by an
    exponential average of rate β and added to the dynamics the MPC plans with.
    """
    kind, _, value = spec.partition(":")
    rate = float(value)
    if kind not in ("blend", "offset") or not 0 < rate <= 1:
        raise SystemExit(f"--estimator {spec!r}: use blend:α or offset:β with a rate in (0, 1]")

    def make(model, run):
        run = dataclasses.replace(run, controller="mpc")  # the estimators feed iLQR's MPC
        memory = {"z": None, "u": None, "d": torch.zeros(())}
        if kind == "blend":
            plan = latent_controller(model, run)
        else:  # d is held constant over each plan (0 when the goal regulator is built)
            plan = latent_controller(model, run, lambda z, u: model.step(z, u) + memory["d"])

        def controller(encoding):
            z = encoding
            if memory["z"] is not None:
                predicted = model.step(memory["z"], memory["u"])
                if kind == "blend":
                    z = rate * encoding + (1 - rate) * predicted
                else:
                    memory["d"] = (1 - rate) * memory["d"] + rate * (encoding - predicted)
            u = plan(z).clamp(-1, 1)
            memory["z"], memory["u"] = z, u
            return u

        return controller

    return make


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
        "--estimator",
        default=None,
        metavar="KIND:RATE",
        help="with --evaluate: feed the controller a filtered latent, blend:α or offset:β "
        "(see estimator_controller)",
    )
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="no model: the same MPC on the true pendulum state, stage cost Q = I and = the "
        "run's state_cost · I (→ results/e2c_oracle.json)",
    )
    parser.add_argument(
        "--oracle-gravity",
        nargs="+",
        type=float,
        metavar="G",
        help="no model: the oracle MPC planned with gravity G (the pendulum keeps g = 10), "
        "stage cost = the run's state_cost (→ results/e2c_oracle_gravity[_TAG].json)",
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
    suffix = f"_{arguments.tag}" if arguments.tag else ""
    if arguments.oracle_gravity:
        rows = [oracle(run, run.state_cost, g) for g in arguments.oracle_gravity]
        save_results(
            RESULTS / f"e2c_oracle_gravity{suffix}.json",
            {"trials": run.trials, "overrides": overrides, "runs": rows},
        )
        return
    load_before = os.getloadavg()
    folder = arguments.keep or tempfile.mkdtemp(prefix="bench-e2c-")
    if arguments.evaluate:
        make = estimator_controller(arguments.estimator) if arguments.estimator else None
        summary = evaluate_run(arguments.evaluate, run, model, folder, make)
    else:
        summary = run_e2c(run, folder, model)
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
