"""Variational inference on your own data, checked against the exact log-likelihood.

Your data is a numpy array ``[N, D]``. Here it is made up: three hidden factors seen through eight
noisy sensors. We fit probabilistic PCA to it in closed form (a ``LinearGaussian``, whose log p(x)
is exact), then fit an approximate posterior q(z|x) two ways, with the model held fixed:

* per-datapoint VI: one Gaussian q_i(z) per row of the array (``LocalGaussians``);
* amortized VI: one encoder network x -> q(z|x) shared by every row (``GaussianEncoder``).

Each ELBO is a lower bound on the exact log p(x); the difference is KL(q ‖ p(z|x)), how far q is
from the true posterior. All numbers are nats per example.

    python examples/vi_on_your_own_data.py            # about 15 s on one core
    python examples/vi_on_your_own_data.py --json     # the numbers as JSON
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from latentvi.bounds import importance_log_likelihood
from latentvi.inference import GaussianEncoder, LocalGaussians, VariationalProblem, fit_vi
from latentvi.models import LinearGaussian


def make_data(n: int, seed: int) -> np.ndarray:
    """A stand-in for your own array: 3 factors, 8 sensors, noise 0.3. Shape ``[n, 8]``."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n, 3))
    mixing = rng.normal(size=(3, 8))
    return factors @ mixing + 1.0 + 0.3 * rng.normal(size=(n, 8))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="rows of the data array")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per fit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the fits")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    data = make_data(args.n, args.seed)
    x = torch.as_tensor(data, dtype=torch.float32)  # [N, D]
    latent_dim = 3
    # Maximum likelihood in closed form (Tipping & Bishop 1999); log p(x) is exact for this model.
    model = LinearGaussian.fit_mle(x, latent_dim)
    log_px = model.log_marginal(x).mean().item()

    fit = {"steps": args.steps, "batch_size": 100, "seed": args.seed, "progress": False}
    # fit_model=False: only q is fitted, so each ELBO is a bound on the same, fixed log p(x).
    per_datapoint = VariationalProblem(model, LocalGaussians(args.n, latent_dim))
    fit_vi(per_datapoint, x, lr=0.1, fit_model=False, anneal_lr=True, **fit)
    amortized = VariationalProblem(model, GaussianEncoder(x.shape[1], latent_dim, hidden=(64,)))
    fit_vi(amortized, x, lr=3e-3, fit_model=False, anneal_lr=True, **fit)

    with torch.no_grad():
        elbo_local = per_datapoint.elbo(x, num_samples=100).mean().item()
        elbo_amortized = amortized.elbo(x, num_samples=100).mean().item()
        # The encoder's q as an importance sampler: an estimate of log p(x) with its error.
        q = amortized.posterior(x)
        estimate, stderr = importance_log_likelihood(x, q, model.prior, model.likelihood, 500)
    results = {
        "log_px_exact": log_px,
        "log_px_importance": estimate.mean().item(),
        "log_px_importance_stderr": (stderr.pow(2).sum().sqrt() / stderr.numel()).item(),
        "elbo_per_datapoint": elbo_local,
        "elbo_amortized": elbo_amortized,
        "gap_per_datapoint": log_px - elbo_local,
        "gap_amortized": log_px - elbo_amortized,
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"data: {args.n} rows × {x.shape[1]} columns, latent dimension {latent_dim}")
        print(f"exact log p(x)                  {log_px:9.4f}")
        print(
            f"importance-sampled log p(x)     {results['log_px_importance']:9.4f}"
            f" ± {results['log_px_importance_stderr']:.4f}"
        )
        print(f"ELBO, per-datapoint q_i(z)      {elbo_local:9.4f}   gap {log_px - elbo_local:.4f}")
        print(
            f"ELBO, amortized q(z|x)          {elbo_amortized:9.4f}   "
            f"gap {log_px - elbo_amortized:.4f}"
        )
    return results


if __name__ == "__main__":
    main()
