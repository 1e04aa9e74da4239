"""How the approximate posterior q is held and fitted.

* :class:`LocalGaussians` — per-datapoint q_i(z), one row of a sparse table per training example
  (stochastic VI, Hoffman et al. 2013).
* :data:`GaussianEncoder` / :class:`Encoder` — amortized q_φ(z|x) (Kingma & Welling 2014).
* :class:`VariationalProblem`, :func:`fit_vi`, :func:`make_optimizers` — the ELBO as a
  ``loss(batch) -> (loss, metrics)`` and a lean fitting loop for small, exact models.
* :class:`LazyAdam` — one optimizer for both: Adam on dense parameters, lazy row updates on tables.
* :func:`fit_em`, :func:`em_step` — EM and hard EM for the exact models (Dempster, Laird & Rubin
  1977; Tipping & Bishop 1999), full-batch or in minibatches (incremental: Neal & Hinton 1998).
* :func:`refine`, :func:`amortization_gap` — per-example refinement of an encoder's q and the
  amortization / approximation gaps (Cremer, Li & Duvenaud 2018).
"""

from latentvi.inference.amortized import Encoder, GaussianEncoder
from latentvi.inference.em import em_step, fit_em
from latentvi.inference.fit import Estimator, VariationalProblem, fit_vi, make_optimizers
from latentvi.inference.local import LocalGaussians
from latentvi.inference.optim import LazyAdam
from latentvi.inference.refine import amortization_gap, refine

__all__ = [
    "Encoder",
    "Estimator",
    "GaussianEncoder",
    "LazyAdam",
    "LocalGaussians",
    "VariationalProblem",
    "amortization_gap",
    "em_step",
    "fit_em",
    "fit_vi",
    "make_optimizers",
    "refine",
]
