"""latentvi against Pyro: the same ELBO, and how many optimization steps per second each takes.

One probabilistic PCA model (LinearGaussian: z ~ N(0, I_k), x | z ~ N(W z + b, σ² I_D)), the same
data, the same guides, the same parametrization (softplus scales) and the same learning rate:

* per-datapoint VI — q_i(z) = N(μ_i, diag σ_i²) from per-example tables. Pyro: ``pyro.param``
  tables indexed by a ``pyro.plate(subsample_size=B)``, ``Trace_ELBO`` and ``TraceMeanField_ELBO``
  (analytic KL), ``pyro.optim.Adam``. latentvi: ``VariationalProblem`` + ``LocalGaussians``
  (reparameterization, analytic KL) and ``make_optimizers``' one ``LazyAdam`` (SparseAdam's lazy
  row update on the table, Adam on θ).
* amortized VI — q_φ(z|x) from an MLP D-64-2k (tanh), registered in Pyro with ``pyro.module``;
  latentvi: ``DiagonalGaussianEncoder``; Adam on φ and θ in both.

For each: (a) ELBO agreement — both objectives evaluated at identical parameter values on the full
data, averaged over many independent draws, converted to nats per example (Pyro's loss is the
negative ELBO *summed* over the data); the exact ELBO (closed form for this model) is shown too.
(b) steps per second — median of 5 repeats of 300 timed steps after a warm-up, the libraries
interleaved in the same process, on one thread (``--threads``). At these sizes no kernel is large
enough for PyTorch's intra-op parallelism to help, and on a shared machine a second thread only
adds scheduling stalls: with other jobs running on this project's 2-core machine, two threads made
both libraries 10–70× slower per step, and their ratio a measure of the scheduler.

Run: ``.venv/bin/python benchmarks/bench_vi_pyro.py`` (about a minute). Writes
``benchmarks/results/vi_pyro.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from latentvi.distributions import kl
from latentvi.inference import LocalGaussians, VariationalProblem, fit_vi, make_optimizers
from latentvi.models import LinearGaussian
from latentvi.nn import DiagonalGaussianEncoder

MIN_SCALE = 1e-5  # latentvi.distributions.positive_scale's default floor


def make_data(args: argparse.Namespace) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The data (from a fixed random model) and the common starting θ."""
    generator = torch.Generator().manual_seed(args.seed)
    truth = LinearGaussian(
        torch.randn(args.data_dim, args.latent_dim, generator=generator),
        torch.randn(args.data_dim, generator=generator),
        0.5,
    )
    x = truth.sample(args.num_points, generator)
    init = LinearGaussian(
        0.1 * torch.randn(args.data_dim, args.latent_dim, generator=generator),
        torch.zeros(args.data_dim),
        1.0,
    )
    return x, {k: v.detach().clone() for k, v in init.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Pyro: the same model, and the two guides


def pyro_model(x: torch.Tensor, batch_size: int) -> None:
    weight = pyro.param("weight")
    bias = pyro.param("bias")
    noise_std = F.softplus(pyro.param("raw_noise_std"))  # as LinearGaussian.noise_std
    latent_dim = weight.shape[1]
    with pyro.plate("data", x.shape[0], subsample_size=batch_size) as index:
        zeros = x.new_zeros(len(index), latent_dim)
        z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))
        loc = z @ weight.T + bias
        pyro.sample("x", dist.Normal(loc, noise_std.expand_as(loc)).to_event(1), obs=x[index])


def pyro_local_guide(x: torch.Tensor, batch_size: int) -> None:
    loc_table = pyro.param("q_loc")  # (N, k)
    raw_scale_table = pyro.param("q_raw_scale")  # (N, k)
    with pyro.plate("data", x.shape[0], subsample_size=batch_size) as index:
        scale = F.softplus(raw_scale_table[index]) + MIN_SCALE
        pyro.sample("z", dist.Normal(loc_table[index], scale).to_event(1))


def make_pyro_amortized_guide(network: torch.nn.Module) -> Callable[[torch.Tensor, int], None]:
    def guide(x: torch.Tensor, batch_size: int) -> None:
        pyro.module("encoder", network)
        with pyro.plate("data", x.shape[0], subsample_size=batch_size) as index:
            loc, raw_scale = network(x[index]).chunk(2, -1)
            scale = F.softplus(raw_scale) + MIN_SCALE
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return guide


def load_pyro_params(problem: VariationalProblem) -> None:
    """Copy θ (and the local tables) from latentvi into a fresh Pyro parameter store."""
    pyro.clear_param_store()
    model = problem.model
    pyro.param("weight", model.weight.detach().clone())
    pyro.param("bias", model.bias.detach().clone())
    pyro.param("raw_noise_std", model.raw_noise_std.detach().clone())
    if problem.local:
        table = problem.posterior.table.weight.detach()
        k = problem.posterior.latent_dim
        pyro.param("q_loc", table[:, :k].clone())
        pyro.param("q_raw_scale", table[:, k : 2 * k].clone())


# --------------------------------------------------------------------------------------------------
# Measurements


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5


@torch.no_grad()
def elbo_agreement(problem: VariationalProblem, guide, x: torch.Tensor, repeats: int) -> dict:
    """ELBO (nats per example) at identical parameters: latentvi, Pyro (both ELBOs), exact."""
    n = x.shape[0]
    index = torch.arange(n)
    ours = [-problem.loss((index, x))[0].item() for _ in range(repeats)]
    load_pyro_params(problem)
    results = {"latentvi": mean_and_stderr(ours)}
    for name, elbo in (
        ("pyro Trace_ELBO", Trace_ELBO()),
        ("pyro TraceMeanField", TraceMeanField_ELBO()),
    ):
        # Pyro's loss is −Σ_n ELBO_n over the plate (scaled by N / subsample size; 1 here).
        values = [-elbo.loss(pyro_model, guide, x, n) / n for _ in range(repeats)]
        results[name] = mean_and_stderr(values)
    model = problem.model
    q = problem.approximate_posterior(index, x)
    exact = (model.expected_log_likelihood(x, q) - kl(q, model.prior)).mean().item()
    report = {"exact": exact, "repeats": repeats, "samples_per_example": repeats}
    for name, (mean, stderr) in results.items():
        report[name] = {"mean": mean, "stderr": stderr}
    for name in ("pyro Trace_ELBO", "pyro TraceMeanField"):
        (a, se_a), (b, se_b) = results["latentvi"], results[name]
        report[f"latentvi - {name}"] = {"difference": a - b, "stderr": (se_a**2 + se_b**2) ** 0.5}
    return report


def latentvi_stepper(problem: VariationalProblem, x: torch.Tensor, batch_size: int, lr: float):
    """The step of :func:`latentvi.inference.fit_vi`: randperm minibatches, loss, backward, step."""
    optimizers = make_optimizers(problem, lr)
    parameters = [
        p for optimizer in optimizers for g in optimizer.param_groups for p in g["params"]
    ]
    n = x.shape[0]
    per_epoch = n // batch_size
    state = {"position": 0, "batches": None}

    def step() -> None:
        if state["position"] % per_epoch == 0:
            state["batches"] = torch.randperm(n)[: per_epoch * batch_size].view(per_epoch, -1)
        index = state["batches"][state["position"] % per_epoch]
        state["position"] += 1
        loss, _ = problem.loss((index, x.index_select(0, index)))
        for parameter in parameters:
            parameter.grad = None
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()

    return step


def pyro_stepper(guide, elbo, x: torch.Tensor, batch_size: int, lr: float):
    svi = SVI(pyro_model, guide, pyro.optim.Adam({"lr": lr}), elbo)
    return lambda: svi.step(x, batch_size)


def steps_per_second(steppers: dict[str, Callable[[], None]], args) -> dict[str, dict]:
    """Median (and all) of ``repeats`` timings of ``timed_steps`` steps, libraries interleaved."""
    for step in steppers.values():
        for _ in range(args.warmup_steps):
            step()
    timings: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(args.repeats):
        for name, step in steppers.items():
            started = time.perf_counter()
            for _ in range(args.timed_steps):
                step()
            timings[name].append(args.timed_steps / (time.perf_counter() - started))
    return {
        name: {"median": statistics.median(v), "us_per_step": 1e6 / statistics.median(v), "all": v}
        for name, v in timings.items()
    }


def run_setting(name: str, args, x: torch.Tensor, init: dict) -> dict:
    torch.manual_seed(args.seed)
    model = LinearGaussian(init["weight"], init["bias"], 1.0)
    model.load_state_dict(init)
    if name == "per-datapoint":
        posterior = LocalGaussians(args.num_points, args.latent_dim)
        guide = pyro_local_guide
    else:
        posterior = DiagonalGaussianEncoder(args.data_dim, args.latent_dim, (args.hidden,))
        network = copy.deepcopy(posterior.body)  # the same nn.Sequential(Linear, Tanh, Linear)
        guide = make_pyro_amortized_guide(network)
    problem = VariationalProblem(model, posterior, "reparameterization")
    # Move away from the initialization so the agreement check is at a non-trivial point.
    fit_vi(
        problem,
        x,
        steps=args.pretrain_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=False,
    )
    if name != "per-datapoint":
        network.load_state_dict(posterior.body.state_dict())
    agreement = elbo_agreement(problem, guide, x, args.elbo_repeats)

    # Timing: Pyro's parameters start at the same values; each library updates its own copy.
    load_pyro_params(problem)
    steppers = {
        "latentvi": latentvi_stepper(problem, x, args.batch_size, args.lr),
        "pyro Trace_ELBO": pyro_stepper(guide, Trace_ELBO(), x, args.batch_size, args.lr),
        "pyro TraceMeanField": pyro_stepper(
            guide, TraceMeanField_ELBO(), x, args.batch_size, args.lr
        ),
    }
    speed = steps_per_second(steppers, args)
    ours = speed["latentvi"]["median"]
    ratios = {f"latentvi / {k}": ours / v["median"] for k, v in speed.items() if k != "latentvi"}
    return {"elbo_agreement": agreement, "steps_per_second": speed, "speed_ratio": ratios}


def cpu_model() -> str:
    """The CPU's model name (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """1-, 5- and 15-minute load averages: other work on the machine skews timings."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def markdown(results: dict) -> str:
    lines = [
        "| setting | library | ELBO (nats/example) ± s.e. | Δ vs latentvi ± s.e. | steps/s "
        "(median of 5) | µs/step | latentvi speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting, r in results["settings"].items():
        agreement, speed = r["elbo_agreement"], r["steps_per_second"]
        for library in ("latentvi", "pyro Trace_ELBO", "pyro TraceMeanField"):
            elbo = agreement[library]
            row = f"| {setting} | {library} | {elbo['mean']:.4f} ± {elbo['stderr']:.4f} | "
            if library == "latentvi":
                row += f"(exact ELBO {agreement['exact']:.4f}) | "
                ratio = "—"
            else:
                diff = agreement[f"latentvi - {library}"]
                row += f"{diff['difference']:+.4f} ± {diff['stderr']:.4f} | "
                ratio = f"{r['speed_ratio'][f'latentvi / {library}']:.2f}×"
            row += (
                f"{speed[library]['median']:.0f} | {speed[library]['us_per_step']:.0f} | {ratio} |"
            )
            lines.append(row)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dim", type=int, default=20)
    parser.add_argument("--latent-dim", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--num-points", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--elbo-repeats", type=int, default=200)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--timed-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "vi_pyro.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = load_average()
    started = time.perf_counter()
    x, init = make_data(args)
    settings = {name: run_setting(name, args, x, init) for name in ("per-datapoint", "amortized")}
    results = {
        "benchmark": "latentvi vs Pyro: ELBO agreement and optimization steps per second",
        "units": "ELBO in nats per example (Pyro's summed loss divided by N)",
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "threads": torch.get_num_threads(),
            "torch_validate_args": torch.distributions.Distribution._validate_args,
        },
        "config": vars(args),
        "settings": settings,
        "seconds": time.perf_counter() - started,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    table = markdown(results)
    results["table"] = table
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    print(f"\n{results['seconds']:.0f} s; written to {out}")


if __name__ == "__main__":
    main()
