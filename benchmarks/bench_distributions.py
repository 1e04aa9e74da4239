"""The diagonal-Gaussian fast path against an earlier version of it and against torch's generic
``Independent(Normal)``, side by side in one process.

One "step" is what a VAE step asks of the distributions: ``q.rsample()``, ``p(x|z).log_prob``
(a Gaussian decoder over 784 pixels), ``KL(q ‖ N(0, I))``, and the backward pass, at batch 20 and
100 (Z = 50), through ``latentvi.distributions`` (``diagonal_gaussian``, ``kl``,
``standard_normal``). The variants: the working tree's module, the same module as it was at
``--baseline REF`` (read with ``git show``, with its ``density_kernels``; default: the commit
before the twice-differentiable backward), and torch's generic ``Independent(Normal)``.
Interleaved repeats, medians, one thread.

    python benchmarks/bench_distributions.py --json benchmarks/results/distributions.json
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.distributions import Independent, Normal, kl_divergence

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "6d4a76d"  # the kernels split out of distributions.py, still once-differentiable


def _distributions_at(ref: str):
    """``latentvi.distributions`` (with its ``density_kernels``) as it was at git ``ref``."""
    folder = Path(tempfile.mkdtemp())
    for name in ("density_kernels", "distributions"):
        source = subprocess.run(
            ["git", "show", f"{ref}:src/latentvi/{name}.py"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        source = source.replace("latentvi.density_kernels", f"baseline_{ref}_density_kernels")
        (folder / f"baseline_{ref}_{name}.py").write_text(source)
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"baseline_{ref}_distributions")


def _step(dist, loc, scale, decoder, x, noise):
    q = dist.diagonal_gaussian(loc, scale, validate_args=False)
    z = torch.addcmul(q.loc, noise, q.scale)  # q.rsample() with fixed noise
    likelihood = dist.diagonal_gaussian(z @ decoder, torch.tensor(0.3), validate_args=False)
    kl = dist.kl(q, dist.standard_normal(loc.shape[-1]))
    (kl - likelihood.log_prob(x)).mean().backward()


def _generic_step(loc, scale, decoder, x, noise):
    q = Independent(Normal(loc, scale, validate_args=False), 1)
    z = torch.addcmul(loc, noise, scale)
    likelihood = Independent(Normal(z @ decoder, torch.tensor(0.3), validate_args=False), 1)
    prior = Independent(Normal(torch.zeros_like(loc), torch.ones_like(scale)), 1)
    (kl_divergence(q, prior) - likelihood.log_prob(x)).mean().backward()


def _time(step, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats * 1e6  # µs


def _matmul_gflops() -> float:
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(50):
        a @ b
    return 2 * 512**3 * 50 / (time.perf_counter() - started) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="git ref of the earlier kernels")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "src"))
    import latentvi.distributions as current

    variants = {"current": current, "baseline": _distributions_at(args.baseline)}
    results = {}
    for batch in (20, 100):
        generator = torch.Generator().manual_seed(0)
        loc = torch.randn(batch, 50, generator=generator).requires_grad_()
        scale = (torch.rand(batch, 50, generator=generator) + 0.5).requires_grad_()
        decoder = (torch.randn(50, 784, generator=generator) * 0.1).requires_grad_()
        x = torch.randn(batch, 784, generator=generator)
        noise = torch.randn(batch, 50, generator=generator)
        inputs = (loc, scale, decoder, x, noise)
        steps = {
            name: functools.partial(_step, module, *inputs) for name, module in variants.items()
        }
        steps["torch generic"] = functools.partial(_generic_step, *inputs)
        times: dict[str, list[float]] = {name: [] for name in steps}
        for step in steps.values():
            _time(step, 50)  # warm-up
        for _ in range(args.rounds):
            for name, step in steps.items():
                times[name].append(_time(step, args.repeats))
        medians = {name: statistics.median(values) for name, values in times.items()}
        results[f"batch {batch}"] = {
            "median_us": medians,
            "current_over_baseline": medians["current"] / medians["baseline"],
            "generic_over_current": medians["torch generic"] / medians["current"],
        }
    report = {
        "results": results,
        "baseline": args.baseline,
        "matmul_gflops_512": _matmul_gflops(),
        "loadavg": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
