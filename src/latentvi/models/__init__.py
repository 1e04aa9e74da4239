"""Latent variable models: exact ones (the ground truth) and learned ones."""

from latentvi.models.exact import GaussianMixture, LinearGaussian

__all__ = ["GaussianMixture", "LinearGaussian"]
