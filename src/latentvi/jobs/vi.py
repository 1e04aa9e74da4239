"""The ``latentvi vi`` job: variational inference on probabilistic PCA, against exact values.

A LinearGaussian data set is drawn from a fixed random model. θ (W, b, σ) is then fitted from a
common random start four ways — per-datapoint or amortized q, reparameterization or score-function
gradients — and each fit is compared with what the closed form says: the exact log p(x) under the
fitted θ, the ELBO, an IWAE bound, the gap log p(x) − ELBO (= KL(q ‖ p(z|x)), checked), the gap to
the closed-form maximum likelihood, and, for the amortized fits, the amortization gap. Finally the
gradient estimators are compared at one q by their measured variance. All values: nats per example.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from latentvi.bounds import iwae_bound
from latentvi.config import option, require, to_dict
from latentvi.diagnostics import exact_elbo_linear_gaussian, variance_probe
from latentvi.distributions import diagonal_gaussian, inverse_softplus, kl, positive_scale
from latentvi.gradients import (
    LearnedBaseline,
    LeaveOneOut,
    MovingAverageBaseline,
    reparameterized_elbo,
    score_function_elbo,
)
from latentvi.inference import LocalGaussians, VariationalProblem, amortization_gap, fit_vi
from latentvi.memory import mlp_parameters, require_memory, training_bytes
from latentvi.models import LinearGaussian
from latentvi.nn import MLP, DiagonalGaussianEncoder
from latentvi.optim_step import optimizer_step
from latentvi.train.storage import replace_text

__all__ = ["VIConfig", "format_vi_report", "run_vi"]

ESTIMATORS = ("reparameterization", "score_function")


@dataclasses.dataclass(frozen=True)
class VIConfig:
    """Options of ``latentvi vi``."""

    data_dim: int = option(10, "dimension D of the observed x")
    latent_dim: int = option(3, "dimension k of the latent z")
    num_points: int = option(2000, "number of data points drawn from the true model")
    noise_std: float = option(0.5, "observation noise σ of the true model")
    steps: int = option(3000, "optimization steps per fit")
    batch_size: int = option(100, "minibatch size")
    lr: float = option(0.01, "Adam learning rate (θ, encoder and the per-datapoint tables)")
    num_samples: int = option(1, "samples of z per example and step")
    iwae_samples: int = option(100, "K of the reported IWAE bound")
    probe_draws: int = option(1000, "gradient draws per estimator in the variance probe")
    refine_steps: int = option(300, "refinement steps for the amortization gap")
    eval_every: int = option(100, "steps between evaluations of the training curves")
    seed: int = option(0, "random seed (data, initialization, sampling)")
    out: str = option("runs/vi", "output folder for results.json, report.txt and vi.png")
    progress: bool = option(
        True, "show a progress bar on stderr when it is a terminal (--no-progress: never)"
    )

    def __post_init__(self) -> None:
        positive = ("data_dim", "latent_dim", "num_points", "steps", "batch_size")
        for name in (*positive, "num_samples", "iwae_samples", "probe_draws", "eval_every"):
            value = getattr(self, name)
            require(value >= 1, name, value, "use a positive integer")
        require(self.refine_steps >= 0, "refine_steps", self.refine_steps, "use 0 or more")
        require(
            self.latent_dim < self.data_dim,
            "latent_dim",
            self.latent_dim,
            f"probabilistic PCA needs latent_dim < data_dim = {self.data_dim}",
        )
        require(self.noise_std > 0, "noise_std", self.noise_std, "use a positive noise scale")
        require(self.lr > 0, "lr", self.lr, "use a positive learning rate")
        require(
            self.batch_size <= self.num_points,
            "batch_size",
            self.batch_size,
            f"use at most num_points = {self.num_points}",
        )


def _true_model(config: VIConfig, generator: torch.Generator) -> LinearGaussian:
    weight = torch.randn(config.data_dim, config.latent_dim, generator=generator)
    bias = torch.randn(config.data_dim, generator=generator)
    return LinearGaussian(weight, bias, config.noise_std)


def _initial_model(config: VIConfig, generator: torch.Generator) -> LinearGaussian:
    weight = 0.1 * torch.randn(config.data_dim, config.latent_dim, generator=generator)
    return LinearGaussian(weight, torch.zeros(config.data_dim), 1.0)


def _posterior(problem: VariationalProblem, x: torch.Tensor):
    if isinstance(problem.posterior, LocalGaussians):
        return problem.posterior(torch.arange(x.shape[0]))
    return problem.posterior(x)


@torch.no_grad()
def _summarize(problem: VariationalProblem, x: torch.Tensor, config: VIConfig) -> dict[str, float]:
    model = problem.model
    q = _posterior(problem, x)
    log_px = model.log_marginal(x)
    elbo = exact_elbo_linear_gaussian(model, x, q)
    iwae = iwae_bound(x, q, model.prior, model.likelihood, config.iwae_samples)
    posterior_kl = kl(q, model.posterior(x))
    return {
        "log_marginal": log_px.mean().item(),
        "elbo": elbo.mean().item(),
        f"iwae_{config.iwae_samples}": iwae.mean().item(),
        "gap_log_marginal_minus_elbo": (log_px - elbo).mean().item(),
        "kl_q_to_posterior": posterior_kl.mean().item(),
    }


def _trained_baseline(model: LinearGaussian, x: torch.Tensor, q, steps: int = 400):
    """An input-dependent baseline b_ψ(x) (NVIL) fitted to E_q[log p(x|z)] at the fixed q, frozen.

    ψ is trained through the score-function surrogate's own zero-valued term (ascent on the
    surrogate is descent on ½ (r − b_ψ(x))²), 16 reward draws per example and step; only ψ moves.
    """
    learned = LearnedBaseline(MLP(x.shape[-1], (32,), 1))
    optimizer = torch.optim.Adam(learned.parameters(), lr=0.03)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[250, 330], gamma=0.2)
    for _ in range(steps):
        surrogate = score_function_elbo(
            x, q(), model.prior, model.likelihood, num_samples=16, baseline=learned
        )
        loss = -surrogate.mean()  # only ψ is differentiated
        optimizer_step(optimizer, loss, name="baseline loss", only_optimized=True)
        schedule.step()
    for parameter in learned.parameters():
        parameter.requires_grad_(False)
    return learned


def _probe(model: LinearGaussian, x: torch.Tensor, q_loc, q_raw_scale, config: VIConfig):
    """Variance of each estimator's gradient w.r.t. q's parameters on one minibatch."""

    def q():
        return diagonal_gaussian(q_loc, positive_scale(q_raw_scale))

    moving_average = MovingAverageBaseline(decay=0.9)
    with torch.no_grad():  # warm the moving average up to the current mean reward
        for _ in range(50):
            score_function_elbo(x, q(), model.prior, model.likelihood, baseline=moving_average)
    moving_average.update = False
    learned = _trained_baseline(model, x, q)
    m = 4

    def surrogate(function, **kwargs):
        return lambda: function(x, q(), model.prior, model.likelihood, **kwargs).sum()

    estimators = {
        "reparameterization": surrogate(reparameterized_elbo),
        "score function": surrogate(score_function_elbo),
        "score function + moving average": surrogate(score_function_elbo, baseline=moving_average),
        "score function + learned baseline": surrogate(score_function_elbo, baseline=learned),
        f"reparameterization, M={m}": surrogate(reparameterized_elbo, num_samples=m),
        f"score function, M={m}": surrogate(score_function_elbo, num_samples=m),
        f"score function + leave-one-out, M={m}": surrogate(
            score_function_elbo, num_samples=m, baseline=LeaveOneOut()
        ),
    }
    exact_objective = exact_elbo_linear_gaussian(model, x, q()).sum()
    exact = torch.autograd.grad(exact_objective, [q_loc, q_raw_scale])
    return variance_probe(estimators, [q_loc, q_raw_scale], config.probe_draws, exact)


def _check_memory(config: VIConfig) -> None:
    """Refuse (one line) sizes whose data and per-datapoint tables cannot fit in memory: x and
    its latents, and the tables of q's means and scales with gradients and Adam moments."""
    n, d, k = config.num_points, config.data_dim, config.latent_dim
    tables = 2 * n * k
    encoder = mlp_parameters([d, 64, 2 * k])
    require_memory(
        training_bytes(tables + encoder, n * (d + k)),
        f"{n} points of dimension {d} with a {k}-dimensional latent",
        ("num_points", "data_dim", "latent_dim"),
        "use fewer points or smaller dimensions",
    )


def run_vi(config: VIConfig) -> dict[str, Any]:
    """Run the job; write ``results.json``, ``report.txt`` and ``vi.png`` under ``config.out``.

    Returns the results as a JSON-ready dict (the same object ``--json`` prints).
    """
    from latentvi.plots import plot_vi_report

    _check_memory(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    replace_text(out / "config.json", json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    truth = _true_model(config, generator)
    x = truth.sample(config.num_points, generator)
    with torch.no_grad():
        mle = LinearGaussian.fit_mle(x, config.latent_dim)
        mle_log_lik = mle.log_marginal(x).mean().item()
        true_log_lik = truth.log_marginal(x).mean().item()
    initial = _initial_model(config, generator)

    fits, histories = {}, {}
    for inference in ("per-datapoint", "amortized"):
        for estimator in ESTIMATORS:
            name = f"{inference}, {estimator.replace('_', ' ')}"
            torch.manual_seed(config.seed + 1)
            model = copy.deepcopy(initial)
            if inference == "per-datapoint":
                posterior = LocalGaussians(config.num_points, config.latent_dim)
            else:
                posterior = DiagonalGaussianEncoder(config.data_dim, config.latent_dim, (64,))
            problem = VariationalProblem(model, posterior, estimator, config.num_samples)
            started = time.perf_counter()
            histories[name] = fit_vi(
                problem,
                x,
                steps=config.steps,
                batch_size=config.batch_size,
                lr=config.lr,
                seed=config.seed,
                eval_every=config.eval_every,
                progress=config.progress,
            )
            seconds = time.perf_counter() - started
            summary = _summarize(problem, x, config)
            summary["gap_to_mle"] = mle_log_lik - summary["log_marginal"]
            summary["seconds"] = seconds
            summary["steps_per_second"] = config.steps / seconds
            if inference == "amortized":
                gaps = amortization_gap(model, posterior, x[:500], refine_steps=config.refine_steps)
                summary.update({f"amortization/{k}": float(v) for k, v in gaps.items()})
            fits[name] = summary
            if inference == "per-datapoint" and estimator == "reparameterization":
                probe_model = model
                probe_q = posterior

    # Probe the estimators at the fitted per-datapoint q on one minibatch of 32 examples.
    index = torch.arange(32)
    q = probe_q(index)
    loc = q.base_dist.loc.detach().clone().requires_grad_(True)
    raw_scale = inverse_softplus(q.base_dist.scale.detach()).clone().requires_grad_(True)
    for parameter in probe_model.parameters():
        parameter.requires_grad_(False)
    probe = _probe(probe_model, x[index], loc, raw_scale, config)
    variances = {row.name: float(row.variance) for row in probe}
    z_scores = {row.name: float(row.max_abs_z) for row in probe}

    results = {
        "config": to_dict(config),
        "units": "nats per example",
        "true_model_log_likelihood": true_log_lik,
        "mle_log_likelihood": mle_log_lik,
        "fits": fits,
        "gradient_variance": variances,
        "gradient_max_abs_z_vs_exact": z_scores,
        "probe_draws": config.probe_draws,
        "figure": str(out / "vi.png"),
    }
    plot_vi_report(histories, mle_log_lik, variances, out / "vi.png")
    replace_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    replace_text(out / "report.txt", format_vi_report(results) + "\n")
    return results


def format_vi_report(results: dict[str, Any]) -> str:
    """A plain-text report of :func:`run_vi`'s results."""
    k = results["config"]["iwae_samples"]
    lines = [
        "Probabilistic PCA fitted by variational inference (nats per example)",
        f"  closed-form maximum likelihood: log p(x) = {results['mle_log_likelihood']:.4f}"
        f"   (true model: {results['true_model_log_likelihood']:.4f})",
        "",
        f"{'fit':<38}{'log p(x)':>10}{'ELBO':>10}{f'IWAE-{k}':>10}{'gap':>9}"
        f"{'KL(q‖post)':>11}{'to MLE':>9}{'steps/s':>9}",
    ]
    for name, fit in results["fits"].items():
        lines.append(
            f"{name:<38}{fit['log_marginal']:>10.4f}{fit['elbo']:>10.4f}{fit[f'iwae_{k}']:>10.4f}"
            f"{fit['gap_log_marginal_minus_elbo']:>9.4f}{fit['kl_q_to_posterior']:>11.4f}"
            f"{fit['gap_to_mle']:>9.4f}{fit['steps_per_second']:>9.0f}"
        )
    amortized = {n: f for n, f in results["fits"].items() if "amortization/elbo_refined" in f}
    if amortized:
        lines += ["", "Amortization gap (Cremer et al. 2018) on 500 examples:"]
        for name, fit in amortized.items():
            lines.append(
                f"  {name}: ELBO amortized {fit['amortization/elbo_amortized']:.4f}, refined "
                f"{fit['amortization/elbo_refined']:.4f}, log p(x) "
                f"{fit['amortization/log_marginal']:.4f}; amortization gap "
                f"{fit['amortization/amortization_gap']:.4f}, approximation gap "
                f"{fit['amortization/approximation_gap']:.4f}"
            )
    variances = results["gradient_variance"]
    reference = variances.get("reparameterization")
    lines += [
        "",
        f"Gradient of the ELBO w.r.t. q's parameters, 32 examples, {results['probe_draws']} draws:",
        f"  {'estimator':<42}{'total variance':>16}{'× reparam':>12}{'max |z| vs exact':>18}",
    ]
    for name, variance in variances.items():
        ratio = variance / reference if reference else float("nan")
        z = results["gradient_max_abs_z_vs_exact"][name]
        lines.append(f"  {name:<42}{variance:>16.4g}{ratio:>12.1f}{z:>18.2f}")
    lines += ["", f"figure: {results['figure']}"]
    return "\n".join(lines)
