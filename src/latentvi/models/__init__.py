"""Latent variable models: exact ones (the ground truth) and learned ones."""

from latentvi.models.exact import GaussianMixture, LinearGaussian
from latentvi.models.kalman import GaussMarkovChain, LinearGaussianSSM
from latentvi.models.rssm import RSSM, RSSMConfig, State
from latentvi.models.ssm import WorldModel

__all__ = [
    "RSSM",
    "GaussMarkovChain",
    "GaussianMixture",
    "LinearGaussian",
    "LinearGaussianSSM",
    "RSSMConfig",
    "State",
    "WorldModel",
]
