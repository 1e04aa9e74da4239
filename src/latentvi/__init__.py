"""latentvi: latent variable models and variational inference on PyTorch.

Start with :mod:`latentvi.bounds` (ELBO, IWAE, importance-sampled log p(x)),
:mod:`latentvi.gradients` (reparameterization and score-function estimators),
:mod:`latentvi.models` (exact models and VAEs) and :func:`load` (a trained run).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def load(run_dir, map_location="cpu"):
    """The trained model of a run folder written by ``latentvi train`` (eval mode).

    It has ``encode(x)`` (q(z|x)), ``decode(z)`` (p(x|z)), ``prior`` (p(z)) — all torch
    Distributions — and ``elbo(x)``, ``log_likelihood(x, importance_samples=K)``, ``sample(n)``.
    Only JSON and safetensors are read: loading runs no code from the folder.
    """
    from latentvi.jobs.vae import load as load_run

    return load_run(run_dir, map_location)
