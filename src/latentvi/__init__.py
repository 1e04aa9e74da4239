"""latentvi: latent variable models and variational inference on PyTorch.

Start with :mod:`latentvi.bounds` (ELBO, IWAE, importance-sampled log p(x)),
:mod:`latentvi.gradients` (reparameterization and score-function estimators),
:mod:`latentvi.models` (exact models and VAEs) and :func:`load` (a trained run).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def load(run_dir, map_location="cpu", checkpoint=None):
    """The trained object of a run folder written by any ``latentvi`` training command, in eval
    mode: a VAE (``encode(x)``, ``decode(z)``, ``prior``, ``elbo(x)``, ``log_likelihood(x, K)``,
    ``sample(n)``), a CVAE or the halves task's regressor, an imitation policy's model, a latent-Q
    agent, a world-model agent (PlaNet, Dreamer, SLAC) or an E2C model. ``checkpoint``: a
    checkpoint folder of the run (default: the latest).

    Only JSON and safetensors are read: loading runs no code from the folder.
    See :mod:`latentvi.jobs.runs` for what each kind gives.
    """
    from latentvi.jobs.runs import load as load_run

    return load_run(run_dir, map_location, checkpoint)
