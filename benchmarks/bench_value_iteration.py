"""Value iteration on a grid (`latentvi.control.value_iteration`): the cost of one Bellman sweep as a
sparse (CSR) matrix-vector product against gathering each successor's 2^D nodes, and a whole
solve on the pendulum's features (the E2C value controller's default 60³ grid, 9 actions, γ 0.99).

    python benchmarks/bench_value_iteration.py [--threads 1] [--cells 60] [--repeats 7]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from pathlib import Path

import torch

from latentvi.control.value_iteration import Grid, value_iteration
from latentvi.envs.pendulum import step_normalized
from results_io import median_seconds, save_results

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cells", type=int, default=60)
    parser.add_argument("--actions", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=7)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)

    pendulum = functools.partial(step_normalized, repeat=2)

    goal = torch.tensor([1.0, 0.0, 0.0])

    def cost(x, u):
        return 0.05 * (x - goal).square().sum(-1) + 0.05 * u.square().sum(-1)

    grid = Grid(torch.tensor([-1.2, -1.2, -9.6]), torch.tensor([1.2, 1.2, 9.6]), arguments.cells)
    actions = torch.linspace(-1, 1, arguments.actions).unsqueeze(-1)
    points = grid.points()
    following = torch.stack([pendulum(points, a.expand(len(points), -1)) for a in actions])
    stage = torch.stack([cost(points, a.expand(len(points), -1)) for a in actions])
    indices, weights = grid.weights(following)
    matrix = grid.matrix(following)
    values = torch.rand(grid.size, generator=torch.Generator().manual_seed(0))

    def gathered():
        return (stage + 0.99 * (values[indices] * weights).sum(-1)).min(0).values

    def sparse():
        return (stage + 0.99 * (matrix @ values).reshape(stage.shape)).min(0).values

    assert torch.allclose(gathered(), sparse(), atol=1e-5)
    load_before = os.getloadavg()
    gather_s = median_seconds(gathered, arguments.repeats)
    sparse_s = median_seconds(sparse, arguments.repeats)
    started = time.perf_counter()
    value = value_iteration(pendulum, cost, grid, actions, discount=0.99)
    solve_s = time.perf_counter() - started
    save_results(
        RESULTS / "value_iteration.json",
        {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {arguments.threads} thread(s)",
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "grid": f"{arguments.cells}^3 = {grid.size} nodes, {arguments.actions} actions",
            "sweep_seconds_gather_median": gather_s,
            "sweep_seconds_sparse_median": sparse_s,
            "sparse_speedup": gather_s / sparse_s,
            "repeats": arguments.repeats,
            "solve_seconds": solve_s,
            "solve_sweeps": value.sweeps,
            "solve_residual": value.residual,
        },
    )


if __name__ == "__main__":
    main()
