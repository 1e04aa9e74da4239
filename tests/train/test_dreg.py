"""DReG through the training loop: it trains with its own φ-gradient and validates on the bound."""

from __future__ import annotations

import math

import torch

from latentvi.models.vae import VAE, VAEConfig
from latentvi.train import TrainConfig, evaluate, fit

IMAGES = (torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(0)) < 0.5).float()


def _batches(epoch, generator):
    order = torch.randperm(40, generator=generator).view(4, 10)
    return [IMAGES[rows] for rows in order]


def _valid_batches():
    return [IMAGES[:20]]


def _trained(dreg: bool) -> tuple[VAE, dict]:
    torch.manual_seed(3)
    config = VAEConfig(latent_dim=2, hidden=(8,), objective="iwae", num_samples=5, dreg=dreg)
    model = VAE((1, 4, 4), config)
    model.fused = False  # both runs on the same (unfused) arithmetic
    train = TrainConfig(max_steps=1, seed=3, log_every=1, progress=False, tensorboard=False)
    result = fit(
        model,
        _batches,
        4,
        train,
        make_valid_batches=_valid_batches,
        optimizer_factory=lambda m: torch.optim.SGD(m.parameters(), lr=0.5),
    )
    return model, result.metrics


def test_dreg_trains_and_validates_through_the_loop():
    dreg, dreg_metrics = _trained(True)  # crashed at validation before: autograd.grad in no_grad
    iwae, iwae_metrics = _trained(False)
    assert math.isfinite(dreg_metrics["eval/iwae"]) and math.isfinite(dreg_metrics["train/iwae"])
    # Same draws, same training value: DReG changes the gradient, not the objective.
    assert math.isclose(dreg_metrics["train/iwae"], iwae_metrics["train/iwae"], rel_tol=1e-6)
    # One SGD step from the same weights: the decoder's (θ) gradient is IWAE's, the encoder's
    # (φ) gradient is DReG's own, so only the encoder ends up elsewhere.
    for a, b in zip(dreg.decoder.parameters(), iwae.decoder.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    encoder_gap = max(
        (a - b).abs().max().item()
        for a, b in zip(dreg.encoder.parameters(), iwae.encoder.parameters(), strict=True)
    )
    assert encoder_gap > 1e-3
    # Validation reports the IWAE bound itself: the DReG model evaluated as a plain IWAE model
    # (same weights, same random draws) gives the same numbers.
    plain = VAE((1, 4, 4), VAEConfig(latent_dim=2, hidden=(8,), objective="iwae", num_samples=5))
    plain.load_state_dict(dreg.state_dict())
    plain.fused = False
    torch.manual_seed(11)
    with_dreg = evaluate(dreg, _valid_batches)
    torch.manual_seed(11)
    without = evaluate(plain, _valid_batches)
    assert with_dreg.keys() == without.keys()
    for name, value in with_dreg.items():
        assert math.isclose(value, without[name], rel_tol=1e-6), name
