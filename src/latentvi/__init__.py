"""latentvi: latent variable models and variational inference on PyTorch.

``import latentvi as lv`` reaches the public API (each name is imported on first use, so
``import latentvi`` itself stays light):

- **exact models**, the ground truth: :class:`LinearGaussian` (probabilistic PCA),
  :class:`GaussianMixture`, :class:`LinearGaussianSSM` (Kalman filter and smoother);
- **deep models**: :class:`VAE` / :class:`VAEConfig`, :class:`CustomVAE` (your own networks),
  :class:`CVAE` / :class:`CVAEConfig`, the RSSM world model :class:`WorldModel` /
  :class:`RSSMConfig`, :class:`E2C` / :class:`E2CConfig`;
- **distributions**: :func:`diagonal_gaussian`, :func:`bernoulli`, :func:`standard_normal`,
  :func:`kl`, :func:`log_mean_exp`;
- **bounds**: :func:`elbo_entropy`, :func:`elbo_kl`, :func:`iwae_bound`,
  :func:`importance_log_likelihood`, :func:`posterior_gap`, :func:`sequence_elbo`;
- **gradient estimators**: :func:`reparameterized_elbo`, :func:`score_function_elbo` with
  :class:`MovingAverageBaseline`, :class:`LearnedBaseline`, :class:`LeaveOneOut`;
  :func:`iwae_dreg`, :func:`gumbel_softmax_elbo`; measured by :func:`variance_probe`;
- **inference**: :func:`fit_vi` with :class:`VariationalProblem`, :class:`LocalGaussians`
  (per-datapoint q), :class:`GaussianEncoder` (amortized q), :func:`refine`,
  :func:`amortization_gap`;
- **training**: :func:`fit`, :class:`TrainConfig`, :func:`read_metrics`, and :func:`load`, which
  opens a run folder;
- **agents**: :class:`LatentQAgent`, :class:`PlanetAgent`, :class:`DreamerAgent`,
  :class:`SlacAgent` (and their configs), and :func:`make_env` for pixel environments.

Modules: :mod:`latentvi.distributions`, :mod:`latentvi.bounds`, :mod:`latentvi.gradients`,
:mod:`latentvi.diagnostics`, :mod:`latentvi.models`, :mod:`latentvi.inference`,
:mod:`latentvi.data`, :mod:`latentvi.envs`, :mod:`latentvi.control`, :mod:`latentvi.rl`,
:mod:`latentvi.train`, :mod:`latentvi.jobs` (what the command line runs), :mod:`latentvi.cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access, PEP 562)
_PUBLIC: dict[str, str] = {
    **dict.fromkeys(
        ("LinearGaussian", "GaussianMixture", "LinearGaussianSSM", "WorldModel", "RSSMConfig"),
        "latentvi.models",
    ),
    **dict.fromkeys(("VAE", "VAEConfig", "CustomVAE", "vae_objective"), "latentvi.models.vae"),
    **dict.fromkeys(("CVAE", "CVAEConfig"), "latentvi.models.cvae"),
    **dict.fromkeys(("E2C", "E2CConfig"), "latentvi.models.e2c"),
    **dict.fromkeys(
        (
            "DiagonalGaussian", "diagonal_gaussian", "bernoulli", "standard_normal", "kl",
            "log_mean_exp",
        ),
        "latentvi.distributions",
    ),
    **dict.fromkeys(
        (
            "elbo_entropy", "elbo_kl", "iwae_bound", "importance_log_likelihood",
            "posterior_gap", "sequence_elbo",
        ),
        "latentvi.bounds",
    ),
    **dict.fromkeys(
        (
            "reparameterized_elbo", "score_function_elbo", "iwae_dreg", "gumbel_softmax_elbo",
            "MovingAverageBaseline", "LearnedBaseline", "LeaveOneOut",
        ),
        "latentvi.gradients",
    ),
    **dict.fromkeys(("variance_probe", "ProbeResult"), "latentvi.diagnostics"),
    **dict.fromkeys(
        (
            "fit_vi", "VariationalProblem", "LocalGaussians", "GaussianEncoder", "refine",
            "amortization_gap",
        ),
        "latentvi.inference",
    ),
    **dict.fromkeys(("fit", "TrainConfig", "read_metrics"), "latentvi.train"),
    **dict.fromkeys(("LatentQAgent", "LatentQConfig"), "latentvi.rl.latent_q"),
    **dict.fromkeys(("PlanetAgent", "PlanetConfig"), "latentvi.rl.planet"),
    **dict.fromkeys(("DreamerAgent", "DreamerConfig"), "latentvi.rl.dreamer"),
    **dict.fromkeys(("SlacAgent", "SlacConfig"), "latentvi.rl.slac"),
    "make_env": "latentvi.envs",
}  # fmt: skip

__all__ = ["__version__", "load", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'latentvi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from latentvi.bounds import (
        elbo_entropy,
        elbo_kl,
        importance_log_likelihood,
        iwae_bound,
        posterior_gap,
        sequence_elbo,
    )
    from latentvi.diagnostics import ProbeResult, variance_probe
    from latentvi.distributions import (
        DiagonalGaussian,
        bernoulli,
        diagonal_gaussian,
        kl,
        log_mean_exp,
        standard_normal,
    )
    from latentvi.envs import make_env
    from latentvi.gradients import (
        LearnedBaseline,
        LeaveOneOut,
        MovingAverageBaseline,
        gumbel_softmax_elbo,
        iwae_dreg,
        reparameterized_elbo,
        score_function_elbo,
    )
    from latentvi.inference import (
        GaussianEncoder,
        LocalGaussians,
        VariationalProblem,
        amortization_gap,
        fit_vi,
        refine,
    )
    from latentvi.models import (
        GaussianMixture,
        LinearGaussian,
        LinearGaussianSSM,
        RSSMConfig,
        WorldModel,
    )
    from latentvi.models.cvae import CVAE, CVAEConfig
    from latentvi.models.e2c import E2C, E2CConfig
    from latentvi.models.vae import VAE, CustomVAE, VAEConfig, vae_objective
    from latentvi.rl.dreamer import DreamerAgent, DreamerConfig
    from latentvi.rl.latent_q import LatentQAgent, LatentQConfig
    from latentvi.rl.planet import PlanetAgent, PlanetConfig
    from latentvi.rl.slac import SlacAgent, SlacConfig
    from latentvi.train import TrainConfig, fit, read_metrics  # fmt: skip


def load(run_dir, map_location="cpu", checkpoint=None, model=None):
    """The trained object of a run folder written by any ``latentvi`` training command, in eval
    mode: a VAE (``encode(x [*B, C, H, W])``, ``decode(z [*S, *B, Z])``, ``prior``,
    ``elbo(x) -> [*B]``, ``log_likelihood(x, K) -> [*B]``, ``sample(n)``), a CVAE or the halves
    task's regressor, an imitation policy's model, a latent-Q agent, a world-model agent (PlaNet,
    Dreamer, SLAC) or an E2C model. ``checkpoint``: a checkpoint folder of the run (default: the
    latest). ``model``: a module of your own (e.g. a :class:`CustomVAE` trained by :func:`fit`)
    to fill with the run's weights and return.

    Only JSON and safetensors are read: loading runs no code from the folder.
    See :mod:`latentvi.jobs.runs` for what each kind gives.
    """
    from latentvi.jobs.runs import load as load_run

    return load_run(run_dir, map_location, checkpoint, model)
