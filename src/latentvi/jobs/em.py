"""The ``latentvi em`` job: the expected log-likelihood — EM, hard EM and VI side by side.

The lecture's comparison. One probabilistic PCA data set (as in ``latentvi vi``) and one common
start θ₀, fitted five ways, each for the same number of passes over the data:

* **EM** — the expectation under the exact p(z|x) (Dempster, Laird & Rubin 1977; Tipping & Bishop
  1999), :func:`latentvi.inference.fit_em`;
* **hard EM** — the posterior mode instead of the posterior (the "most likely z" intuition);
* **per-datapoint VI** — a diagonal Gaussian q_i per example (:class:`LocalGaussians`), ELBO
  ascent with reparameterized gradients;
* **amortized VI** — an MLP encoder q_φ(z|x), same estimator;
* **gradient ascent** on the exact log p(x) — Adam on θ, no latent variables at all.

Every method is scored by the exact log p(x) of its θ after each pass (evaluated in float64 from a
copy, so the score never flatters a method), against passes and against wall time (the fitting
steps alone, evaluation excluded), and by the passes and seconds it needs to come within
``tolerance`` nats per example of the closed-form maximum likelihood. Optionally a Gaussian mixture
is fitted too, by the three methods that apply to a discrete z without sampling it (EM, hard EM,
gradient ascent); its reference is EM's fixed point (a local maximum), as a mixture has no closed
form. All values are nats per example.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentvi.config import option, require, to_dict
from latentvi.inference import LocalGaussians, VariationalProblem, make_optimizers
from latentvi.inference.em import MODES, fit_em
from latentvi.models import GaussianMixture, LinearGaussian
from latentvi.nn import DiagonalGaussianEncoder
from latentvi.progress import progress_bar
from latentvi.train.storage import replace_text

__all__ = ["EMConfig", "format_em_report", "run_em"]

PPCA_METHODS = ("EM", "hard EM", "per-datapoint VI", "amortized VI", "gradient ascent")
MIXTURE_METHODS = ("EM", "hard EM", "gradient ascent")


@dataclasses.dataclass(frozen=True)
class EMConfig:
    """Options of ``latentvi em``."""

    data_dim: int = option(10, "dimension D of the observed x (probabilistic PCA)")
    latent_dim: int = option(3, "dimension k of the latent z (probabilistic PCA)")
    num_points: int = option(2000, "number of data points drawn from each true model")
    noise_std: float = option(0.5, "observation noise σ of the true PPCA model")
    passes: int = option(100, "passes over the data for every method (EM: one iteration each)")
    batch_size: int = option(
        100, "minibatch size of VI and gradient ascent (and of EM's incremental and stepwise modes)"
    )
    em_mode: str = option(
        "batch",
        "EM over minibatches: batch = one exact M-step per pass "
        "(identical to full-batch EM), incremental (Neal & Hinton 1998), "
        "stepwise (online EM)",
        choices=MODES,
    )
    lr: float = option(0.01, "Adam learning rate of VI (θ, q) and gradient ascent")
    tolerance: float = option(0.01, "nats per example from the MLE that count as converged")
    mixture_components: int = option(
        3, "components K of the Gaussian-mixture comparison (0 = PPCA only)"
    )
    mixture_dim: int = option(2, "dimension of the Gaussian-mixture data")
    reference_iterations: int = option(
        1000, "EM iterations (float64) behind the mixture's reference log p(x)"
    )
    seed: int = option(0, "random seed (data, starts, minibatches, z samples)")
    out: str = option("runs/em", "output folder for results.json, report.txt and em.png")
    progress: bool = option(
        True, "show a progress bar on stderr when it is a terminal (--no-progress: never)"
    )

    def __post_init__(self) -> None:
        for name in (
            "data_dim",
            "latent_dim",
            "num_points",
            "passes",
            "batch_size",
            "mixture_dim",
            "reference_iterations",
        ):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, name, value, "use a positive integer")
        require(
            self.mixture_components >= 0,
            "mixture_components",
            self.mixture_components,
            "use 0 (no mixture) or a number of components",
        )
        require(
            self.latent_dim < self.data_dim,
            "latent_dim",
            self.latent_dim,
            f"probabilistic PCA needs latent_dim < data_dim = {self.data_dim}",
        )
        require(
            self.batch_size <= self.num_points,
            "batch_size",
            self.batch_size,
            f"use at most num_points = {self.num_points}",
        )
        require(self.noise_std > 0, "noise_std", self.noise_std, "use a positive noise scale")
        require(self.lr > 0, "lr", self.lr, "use a positive learning rate")
        require(self.tolerance > 0, "tolerance", self.tolerance, "use a positive number of nats")
        require(self.em_mode in MODES, "em_mode", self.em_mode, f"use one of {MODES}")


# ---------------------------------------------------------------------------------------------
# Data and starts


def _ppca_problem(config: EMConfig, generator: torch.Generator):
    """(data [N, D], the true model, the common start θ₀) — as ``latentvi vi`` draws them."""
    d, k = config.data_dim, config.latent_dim
    truth = LinearGaussian(
        torch.randn(d, k, generator=generator),
        torch.randn(d, generator=generator),
        config.noise_std,
    )
    x = truth.sample(config.num_points, generator)
    start = LinearGaussian(0.1 * torch.randn(d, k, generator=generator), torch.zeros(d), 1.0)
    return x, truth, start


def _mixture_problem(config: EMConfig, generator: torch.Generator):
    """Overlapping components: means 1.5·N(0, I), unit scales; start: means 0.5·N(0, I)."""
    k, d = config.mixture_components, config.mixture_dim
    truth = GaussianMixture(
        torch.zeros(k), 1.5 * torch.randn(k, d, generator=generator), torch.ones(k, d)
    )
    x = truth.sample(config.num_points, generator)
    start = GaussianMixture(
        torch.zeros(k), 0.5 * torch.randn(k, d, generator=generator), torch.ones(k, d)
    )
    return x, truth, start


# ---------------------------------------------------------------------------------------------
# Gradient methods: one loop over ``loss(batch)`` for VI and for ascent on the exact log p(x)


class ExactLikelihood(nn.Module):
    """Gradient ascent on the exact log p(x): ``loss((index, x)) -> (−mean log p(x), metrics)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        log_marginal = self.model.log_marginal(batch[1]).mean()
        return -log_marginal, {"log_marginal": log_marginal.detach()}


def _fit_by_gradient(problem: nn.Module, x: Tensor, config: EMConfig, score: Callable):
    """Adam (``make_optimizers``: lazy rows for local tables) on ``problem.loss`` for
    ``config.passes`` epochs of ``randperm`` minibatches, as :func:`latentvi.inference.fit_vi`
    walks them; ``score()`` after each pass, outside the clock (``fit_vi``'s own ``seconds``
    include its evaluations, which would blur the wall-time comparison)."""
    optimizers = make_optimizers(problem, config.lr)
    parameters = [p for o in optimizers for group in o.param_groups for p in group["params"]]
    batches_per_pass = config.num_points // config.batch_size
    history = [{"iteration": 0, "steps": 0, "log_marginal": score(), "seconds": 0.0}]
    generator = torch.Generator().manual_seed(config.seed)
    seconds = 0.0
    for iteration in range(1, config.passes + 1):
        started = time.perf_counter()
        permutation = torch.randperm(config.num_points, generator=generator)
        for index in permutation[: batches_per_pass * config.batch_size].view(batches_per_pass, -1):
            loss, _ = problem.loss((index, x.index_select(0, index)))
            for parameter in parameters:
                parameter.grad = None
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
        seconds += time.perf_counter() - started
        history.append(
            {
                "iteration": iteration,
                "steps": iteration * batches_per_pass,
                "log_marginal": score(),
                "seconds": seconds,
            }
        )
    return history


def _scorer(model: nn.Module, x64: Tensor) -> Callable[[], float]:
    """Exact mean log p(x) of ``model``'s current θ, from a float64 copy (nats per example)."""

    def score() -> float:
        with torch.no_grad():
            return copy.deepcopy(model).double().log_marginal(x64).mean().item()

    return score


def _fit(method: str, start: nn.Module, x: Tensor, config: EMConfig) -> tuple[nn.Module, list]:
    model = copy.deepcopy(start)
    x64 = x.double()
    score = _scorer(model, x64)
    torch.manual_seed(config.seed + 1)  # q's initialization and z samples: the same per method
    if method in ("EM", "hard EM"):
        em_batch = None if config.em_mode == "batch" else config.batch_size
        history = fit_em(
            model,
            x,
            iterations=config.passes,
            hard=method == "hard EM",
            batch_size=em_batch,
            mode=config.em_mode,
            seed=config.seed,
            evaluate=score,
        )
        return model, history
    if method == "gradient ascent":
        return model, _fit_by_gradient(ExactLikelihood(model), x, config, score)
    if method == "per-datapoint VI":
        posterior = LocalGaussians(config.num_points, model.latent_dim)
    else:
        posterior = DiagonalGaussianEncoder(model.data_dim, model.latent_dim, (64,))
    problem = VariationalProblem(model, posterior, "reparameterization")
    return model, _fit_by_gradient(problem, x, config, score)


# ---------------------------------------------------------------------------------------------
# Summaries


def _summary(history: list[dict], reference: float, tolerance: float) -> dict[str, Any]:
    # The first record from which the gap stays within the tolerance to the end of the run.
    reached = None
    for record in reversed(history):
        if reference - record["log_marginal"] > tolerance:
            break
        reached = record
    final = history[-1]
    return {
        "log_marginal": final["log_marginal"],
        "gap_to_reference": reference - final["log_marginal"],
        "passes_to_tolerance": None if reached is None else reached["iteration"],
        "steps_to_tolerance": None if reached is None else reached["steps"],
        "seconds_to_tolerance": None if reached is None else reached["seconds"],
        "seconds": final["seconds"],
        "history": history,
    }


def _compare(methods, start, x, config: EMConfig, reference: float) -> dict[str, dict]:
    fits = {}
    for method in progress_bar(methods, show=config.progress, desc="em", unit="method"):
        model, history = _fit(method, start, x, config)
        fits[method] = _summary(history, reference, config.tolerance)
        if isinstance(model, LinearGaussian):
            fits[method]["noise_variance"] = model.noise_std.item() ** 2
    return fits


def run_em(config: EMConfig) -> dict[str, Any]:
    """Run the job; write ``config.json``, ``results.json``, ``report.txt`` and ``em.png`` under
    ``config.out``. Returns the results as a JSON-ready dict (what ``--json`` prints)."""
    from latentvi.plots import plot_em_comparison

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    replace_text(out / "config.json", json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    x, truth, start = _ppca_problem(config, generator)
    with torch.no_grad():
        x64 = x.double()
        mle = LinearGaussian.fit_mle(x64, config.latent_dim)
        mle_value = mle.log_marginal(x64).mean().item()
        ppca = {
            "reference": "closed-form maximum likelihood (Tipping & Bishop 1999)",
            "reference_log_likelihood": mle_value,
            "true_model_log_likelihood": truth.double().log_marginal(x64).mean().item(),
            "mle_noise_variance": mle.noise_std.item() ** 2,
        }
    ppca["fits"] = _compare(PPCA_METHODS, start, x, config, mle_value)
    results = {"config": to_dict(config), "units": "nats per example", "ppca": ppca}
    if config.mixture_components:
        x, truth, start = _mixture_problem(config, generator)
        reference_model = copy.deepcopy(start).double()
        fit_em(reference_model, x.double(), iterations=config.reference_iterations)
        with torch.no_grad():
            reference = reference_model.log_marginal(x.double()).mean().item()
            true_value = truth.double().log_marginal(x.double()).mean().item()
        results["mixture"] = {
            "reference": f"EM's fixed point after {config.reference_iterations} iterations "
            "(float64, same start): a local maximum",
            "reference_log_likelihood": reference,
            "true_model_log_likelihood": true_value,
            "fits": _compare(MIXTURE_METHODS, start, x, config, reference),
        }
    results["figure"] = str(out / "em.png")
    plot_em_comparison(
        {name: results[name] for name in ("ppca", "mixture") if name in results},
        config.tolerance,
        out / "em.png",
    )
    replace_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    replace_text(out / "report.txt", format_em_report(results) + "\n")
    return results


def _cell(value, digits: int = 2) -> str:
    return (
        "never"
        if value is None
        else f"{value:.{digits}f}"
        if isinstance(value, float)
        else str(value)
    )


def format_em_report(results: dict[str, Any]) -> str:
    """A plain-text report of :func:`run_em`'s results."""
    config = results["config"]
    tolerance = config["tolerance"]
    lines = [
        "The expected log-likelihood: EM, hard EM, VI and gradient ascent from one start "
        "(nats per example)",
        f"  {config['passes']} passes over {config['num_points']} points; VI and gradient ascent: "
        f"Adam, lr {config['lr']}, minibatches of {config['batch_size']}; EM mode: "
        f"{config['em_mode']}",
    ]
    titles = {
        "ppca": f"Probabilistic PCA, D = {config['data_dim']}, k = {config['latent_dim']}",
        "mixture": f"Gaussian mixture, K = {config['mixture_components']}, "
        f"D = {config['mixture_dim']}",
    }
    for name in ("ppca", "mixture"):
        if name not in results:
            continue
        part = results[name]
        lines += [
            "",
            titles[name],
            f"  reference: {part['reference']}: log p(x) = {part['reference_log_likelihood']:.4f}"
            f"   (true model: {part['true_model_log_likelihood']:.4f})",
            f"  {'method':<20}{'log p(x)':>11}{'to ref':>10}{f'passes to {tolerance}':>17}"
            f"{'steps':>8}{'seconds to':>12}{'seconds':>9}"
            + ("      σ²" if name == "ppca" else ""),
        ]
        for method, fit in part["fits"].items():
            row = (
                f"  {method:<20}{fit['log_marginal']:>11.4f}{fit['gap_to_reference']:>10.4f}"
                f"{_cell(fit['passes_to_tolerance']):>17}{_cell(fit['steps_to_tolerance']):>8}"
                f"{_cell(fit['seconds_to_tolerance'], 3):>12}{fit['seconds']:>9.3f}"
            )
            if "noise_variance" in fit:
                row += f"{fit['noise_variance']:>8.4f}"
            lines.append(row)
        if name == "ppca":
            lines.append(f"  (MLE σ² = {part['mle_noise_variance']:.4f}; hard EM's is biased low)")
    lines += [
        "",
        "seconds: the fitting steps alone, evaluation excluded",
        f"figure: {results['figure']}",
    ]
    return "\n".join(lines)
